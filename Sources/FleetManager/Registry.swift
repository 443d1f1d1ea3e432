import Foundation
import GRDB
import Locking
import MessageSchema

/// A unit in the registry.
public struct MachineRecord: Sendable, Hashable {
    public enum State: String, Sendable, Hashable { case provisioned, revoked }
    public var id: MachineID
    public var state: State
    public var createdAt: Int
    public var revokedAt: Int?
    /// The configuration the manager wants the unit to run (last one published).
    public var desiredConfig: MachineConfig?
    /// Last `config.reported` from the unit.
    public var reportedVersion: Int?
    public var reportedStatus: String?
    public var reportedReason: String?
}

/// A signing key of the fleet.
public struct SigningKeyRecord: Sendable, Hashable {
    public enum State: String, Sendable, Hashable {
        /// Signs new messages (the newest active key of its purpose).
        case active
        /// Still trusted by units, no longer used to sign; removed by `keys retire`.
        case retiring
    }
    public var kid: KeyID
    public var purpose: KeyPurpose
    public var publicKey: String
    public var state: State
    public var createdAt: Int
    /// Configuration version per unit that first carried this key (rotation bookkeeping).
    public var pushedAt: Int?
}

/// The fleet's registry in SQLite: units, keys, and (from `serve`) what the fleet reports.
public final class Registry: Sendable {
    let database: DatabaseQueue
    let changes = Locked<UInt64>(0)

    /// Goes up each time this process changed what units show (what they said, presence,
    /// desired configuration): a live page re-reads only when it moved.
    public var changeCount: UInt64 { changes.withLock { $0 } }

    func changed() { changes.withLock { $0 &+= 1 } }

    public init(path: String) throws {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            _ = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        configuration.busyMode = .timeout(10)
        database = try DatabaseQueue(path: path, configuration: configuration)
        try Self.migrator.migrate(database)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE machine (
                        id TEXT PRIMARY KEY,
                        state TEXT NOT NULL,
                        createdAt INTEGER NOT NULL,
                        revokedAt INTEGER,
                        desiredConfig TEXT,
                        desiredVersion INTEGER NOT NULL DEFAULT 0,
                        desiredAt INTEGER,
                        reportedVersion INTEGER,
                        reportedStatus TEXT,
                        reportedReason TEXT,
                        reportedAt INTEGER
                    );
                    CREATE TABLE signingKey (
                        kid TEXT PRIMARY KEY,
                        purpose TEXT NOT NULL,
                        publicKey TEXT NOT NULL,
                        state TEXT NOT NULL,
                        createdAt INTEGER NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v2-operations") { db in
            try db.execute(
                sql: """
                    -- What units say about themselves, kept by `serve`.
                    CREATE TABLE unitState (
                        id TEXT PRIMARY KEY,
                        state TEXT NOT NULL DEFAULT 'unknown',   -- online | offline | unknown
                        offlineReason TEXT,                      -- will | stopped | heartbeat timeout
                        bootId TEXT,
                        session INTEGER,
                        stateSince INTEGER,
                        lastSeen INTEGER,
                        lastHeartbeatAt INTEGER,
                        heartbeatS INTEGER NOT NULL DEFAULT 30,
                        firmware TEXT,
                        configVersion INTEGER,
                        clockSkewMs INTEGER,
                        inhibited INTEGER,
                        relay TEXT,
                        outboxDepth INTEGER,
                        counters TEXT
                    );
                    -- Every payment the fleet saw: who paid, what the unit decided.
                    CREATE TABLE paymentRecord (
                        paymentId TEXT PRIMARY KEY,
                        machineId TEXT NOT NULL,
                        userId TEXT,
                        requestedAmount INTEGER,
                        currency TEXT,
                        issuedAt INTEGER,
                        expiresAt INTEGER,
                        status TEXT,             -- credited | rejected | uncertain (first decision)
                        reason TEXT,
                        creditedAmount INTEGER NOT NULL DEFAULT 0,
                        pulsesFired INTEGER,
                        decidedAt INTEGER,
                        duplicates INTEGER NOT NULL DEFAULT 0,
                        updatedAt INTEGER NOT NULL
                    );
                    CREATE INDEX paymentRecord_machine ON paymentRecord(machineId, issuedAt);
                    CREATE INDEX paymentRecord_user ON paymentRecord(userId);
                    CREATE TABLE alertLog (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        machineId TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        detail TEXT NOT NULL,
                        at INTEGER NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v3-firmware") { db in
            try db.execute(
                sql: """
                    CREATE TABLE firmwareRelease (
                        version TEXT PRIMARY KEY,
                        sha256 TEXT NOT NULL,
                        size INTEGER NOT NULL,
                        url TEXT NOT NULL,
                        publishedAt INTEGER NOT NULL
                    );
                    -- The last firmware.reported of each unit.
                    CREATE TABLE firmwareState (
                        id TEXT PRIMARY KEY,
                        version TEXT NOT NULL,
                        state TEXT NOT NULL,
                        reason TEXT,
                        at INTEGER NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v4-attribution") { db in
            // Payments are a machine's: keyed by (machine, payment), the machine being the one
            // the topic named (PROTOCOL.md, "Who said it"). `payloadSha256` is the hash of the
            // verified completion (a refusal before a signature holds counts only for it);
            // `settlement` is what the payment server should do: capture | void | hold, NULL
            // while unknown.
            try db.execute(
                sql: """
                    CREATE TABLE paymentRecordNew (
                        paymentId TEXT NOT NULL,
                        machineId TEXT NOT NULL,
                        userId TEXT,
                        requestedAmount INTEGER,
                        currency TEXT,
                        issuedAt INTEGER,
                        expiresAt INTEGER,
                        status TEXT,
                        reason TEXT,
                        creditedAmount INTEGER NOT NULL DEFAULT 0,
                        pulsesFired INTEGER,
                        decidedAt INTEGER,
                        duplicates INTEGER NOT NULL DEFAULT 0,
                        updatedAt INTEGER NOT NULL,
                        payloadSha256 TEXT,
                        settlement TEXT,
                        settledBy TEXT,
                        PRIMARY KEY (machineId, paymentId)
                    );
                    INSERT INTO paymentRecordNew (paymentId, machineId, userId, requestedAmount, currency, issuedAt, expiresAt, status,
                        reason, creditedAmount, pulsesFired, decidedAt, duplicates, updatedAt)
                        SELECT paymentId, machineId, userId, requestedAmount, currency, issuedAt, expiresAt, status, reason,
                            creditedAmount, pulsesFired, decidedAt, duplicates, updatedAt FROM paymentRecord;
                    DROP TABLE paymentRecord;
                    ALTER TABLE paymentRecordNew RENAME TO paymentRecord;
                    CREATE INDEX paymentRecord_machine ON paymentRecord(machineId, issuedAt);
                    CREATE INDEX paymentRecord_user ON paymentRecord(userId);
                    CREATE INDEX paymentRecord_unsettled ON paymentRecord(machineId, expiresAt) WHERE settlement IS NULL;
                    UPDATE paymentRecord SET settlement = CASE status WHEN 'credited' THEN 'capture' WHEN 'rejected' THEN 'void'
                        WHEN 'uncertain' THEN 'hold' END, settledBy = 'result' WHERE status IS NOT NULL;
                    CREATE TABLE ignoredMessage (
                        machineId TEXT NOT NULL,
                        kind TEXT NOT NULL,
                        count INTEGER NOT NULL,
                        lastAt INTEGER NOT NULL,
                        PRIMARY KEY (machineId, kind)
                    );
                    """)
        }
        registerAlertMigration(&migrator)
        registerAuditMigration(&migrator)
        registerOperatorMigration(&migrator)
        registerLedgerMigration(&migrator)
        registerHistoryMigration(&migrator)
        registerRolloutMigration(&migrator)
        return migrator
    }

    /// Unix milliseconds: the one clock the fleet records with.
    public static func now() -> Int { Int(Date().timeIntervalSince1970 * 1000) }

    // MARK: Machines

    public func machine(_ id: MachineID) throws -> MachineRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM machine WHERE id = ?", arguments: [id.rawValue]).map(Self.machine)
        }
    }

    public func machines(includingRevoked: Bool = false) throws -> [MachineRecord] {
        try database.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM machine \(includingRevoked ? "" : "WHERE state = 'provisioned'") ORDER BY id"
            ).map(Self.machine)
        }
    }

    static func machine(_ row: Row) -> MachineRecord {
        MachineRecord(
            id: MachineID(unchecked: row["id"]), state: MachineRecord.State(rawValue: row["state"]) ?? .provisioned,
            createdAt: row["createdAt"], revokedAt: row["revokedAt"],
            desiredConfig: (row["desiredConfig"] as String?).flatMap { try? WireCoding.decode(MachineConfig.self, from: Data($0.utf8)) },
            reportedVersion: row["reportedVersion"], reportedStatus: row["reportedStatus"], reportedReason: row["reportedReason"])
    }

    /// Adds a unit, or (re)marks it provisioned.
    public func upsertMachine(_ id: MachineID) throws {
        try database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO machine (id, state, createdAt) VALUES (?, 'provisioned', ?)
                    ON CONFLICT(id) DO UPDATE SET state = 'provisioned', revokedAt = NULL
                    """,
                arguments: [id.rawValue, Self.now()])
        }
    }

    /// The unit is revoked: its open alerts are resolved, and it raises no more.
    public func markRevoked(_ id: MachineID) throws {
        try database.write { db in
            let now = Self.now()
            try db.execute(sql: "UPDATE machine SET state = 'revoked', revokedAt = ? WHERE id = ?", arguments: [now, id.rawValue])
            _ = try Self.resolve(id, nil, resolution: "unit revoked", now: now, db)
        }
    }

    /// The next configuration version for a unit (strictly above anything published).
    public func nextConfigVersion(_ id: MachineID) throws -> Int {
        try database.read { db in
            (try Int.fetchOne(db, sql: "SELECT desiredVersion FROM machine WHERE id = ?", arguments: [id.rawValue]) ?? 0) + 1
        }
    }

    public func setDesiredConfig(_ config: MachineConfig) throws {
        let json = String(decoding: WireCoding.encode(config), as: UTF8.self)
        let now = Self.now()
        defer { changed() }
        try database.write { db in
            try db.execute(
                sql: "UPDATE machine SET desiredConfig = ?, desiredVersion = ?, desiredAt = ? WHERE id = ?",
                arguments: [json, config.version, now, config.machineId.rawValue])
            try Self.recordConfigVersion(config, json: json, now: now, db)
            // `serve` times heartbeats out by the interval the unit is told to use.
            try db.execute(
                sql: "INSERT INTO unitState (id, heartbeatS) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET heartbeatS = excluded.heartbeatS",
                arguments: [config.machineId.rawValue, config.heartbeatS])
        }
    }

    public func recordConfigReport(_ report: ConfigReported) throws {
        try database.write { db in try Self.recordConfigReport(report, db) }
    }

    static func recordConfigReport(_ report: ConfigReported, _ db: Database) throws {
        try db.execute(
            sql: "UPDATE machine SET reportedVersion = ?, reportedStatus = ?, reportedReason = ?, reportedAt = ? WHERE id = ?",
            arguments: [report.version, report.status.rawValue, report.reason?.rawValue, report.at, report.machineId.rawValue])
    }

    // MARK: Keys

    public func keys() throws -> [SigningKeyRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM signingKey ORDER BY purpose, createdAt").compactMap { row in
                guard let kid = KeyID(rawValue: row["kid"]), let purpose = KeyPurpose(rawValue: row["purpose"]),
                    let state = SigningKeyRecord.State(rawValue: row["state"])
                else { return nil }
                return SigningKeyRecord(kid: kid, purpose: purpose, publicKey: row["publicKey"], state: state, createdAt: row["createdAt"])
            }
        }
    }

    public func addKey(_ kid: KeyID, purpose: KeyPurpose, publicKey: String) throws {
        try database.write { db in
            try db.execute(
                sql: "INSERT INTO signingKey (kid, purpose, publicKey, state, createdAt) VALUES (?, ?, ?, 'active', ?)",
                arguments: [kid.rawValue, purpose.rawValue, publicKey, Self.now()])
        }
    }

    public func setKeyState(_ kid: KeyID, _ state: SigningKeyRecord.State) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE signingKey SET state = ? WHERE kid = ?", arguments: [state.rawValue, kid.rawValue])
        }
    }

    public func removeKey(_ kid: KeyID) throws {
        try database.write { db in try db.execute(sql: "DELETE FROM signingKey WHERE kid = ?", arguments: [kid.rawValue]) }
    }
}
