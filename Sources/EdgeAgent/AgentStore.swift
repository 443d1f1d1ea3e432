import Foundation
import GRDB
import Locking
import MessageSchema

/// A result waiting in the outbox for the broker's PUBACK.
public struct OutboxEntry: Sendable, Hashable {
    public var id: Int64
    /// The result; `bootId` and `seq` are stamped when it is published.
    public var result: PaymentResult
}

/// A payment the agent has decided (or started a train for).
public struct StoredDecision: Sendable, Hashable {
    public var paymentId: PaymentID
    /// Nil while a train is running (or was interrupted).
    public var status: PaymentStatus?
    public var reason: RejectionReason?
    public var amount: Int
    public var decidedAt: Int

    public init(paymentId: PaymentID, status: PaymentStatus?, reason: RejectionReason?, amount: Int, decidedAt: Int) {
        self.paymentId = paymentId
        self.status = status
        self.reason = reason
        self.amount = amount
        self.decidedAt = decidedAt
    }
}

/// The unit's durable state in SQLite (WAL, `synchronous=FULL`): decisions, the outbox,
/// counters, the applied configuration and the trusted keys. Every decision and its outbox
/// entry are written in one transaction; a train's "started" record is committed (and
/// synced) before its first pulse.
public final class AgentStore: Sendable {
    private let database: DatabasePool
    public let path: String
    /// Outbox rows the broker has acknowledged, not yet deleted from the file: they go in the
    /// next decision's transaction (or `flushAcknowledged()`), never in a commit of their own on
    /// a payment's way. Already gone for `outbox()` and `outboxDepth()`.
    private let acknowledged = Locked<Set<Int64>>([])
    /// A connection of its own for checkpoints: a passive checkpoint there runs beside the
    /// writer instead of queueing in front of the next payment's start record.
    private let checkpointer: DatabaseQueue
    /// A hash of every payment ID in the decision table (loaded at open, added to before each
    /// write of a decision). A payment ID whose hash is not here has no decision: the look-up
    /// on a new payment's way costs a set probe instead of a read transaction (~190 µs). A
    /// hash that is here (a decided ID, a purged one, or a collision) is looked up in the file.
    /// Sound as long as this process is the file's only writer (`StateDirectoryLock`).
    private let decidedIds: Locked<Set<Int>>

    /// Opens (creating if needed) the store at `path`.
    public init(path: String) throws {
        self.path = path
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            // WAL: a crash never tears the database; FULL: a commit survives power loss.
            _ = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // No automatic checkpoint: it would land on whichever commit crosses the threshold,
            // possibly the "train started" one just before a first pulse. The agent checkpoints
            // every 64 payments on a queue of its own instead (`checkpoint()`).
            _ = try Int.fetchOne(db, sql: "PRAGMA wal_autocheckpoint = 0")
        }
        configuration.busyMode = .timeout(5)
        database = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(database)
        checkpointer = try DatabaseQueue(path: path, configuration: configuration)
        let ids = try database.read { db in try String.fetchAll(db, sql: "SELECT paymentId FROM decision") }
        decidedIds = Locked(Set(ids.map(Self.idHash)))
    }

    private static func idHash(_ id: String) -> Int {
        var hasher = Hasher()
        hasher.combine(id)
        return hasher.finalize()
    }

    private static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE decision (
                        paymentId TEXT PRIMARY KEY,
                        status TEXT,              -- NULL while the train runs
                        reason TEXT,
                        amount INTEGER NOT NULL,  -- credited amount
                        requestedAmount INTEGER NOT NULL,
                        userId TEXT,
                        plan TEXT NOT NULL,       -- JSON [{"channel","count"}]
                        pulsesFired INTEGER NOT NULL DEFAULT 0,
                        startedAt INTEGER,
                        decidedAt INTEGER NOT NULL
                    );
                    CREATE INDEX decision_decidedAt ON decision(decidedAt);
                    CREATE TABLE outbox (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        paymentId TEXT,
                        result TEXT NOT NULL
                    );
                    CREATE TABLE counter (
                        name TEXT PRIMARY KEY,
                        value INTEGER NOT NULL
                    );
                    CREATE TABLE appliedConfig (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        version INTEGER NOT NULL,
                        envelope TEXT NOT NULL,
                        appliedAt INTEGER NOT NULL
                    );
                    CREATE TABLE trustedKey (
                        kid TEXT PRIMARY KEY,
                        purpose TEXT NOT NULL,
                        publicKey TEXT NOT NULL
                    );
                    CREATE TABLE meta (
                        key TEXT PRIMARY KEY,
                        value TEXT NOT NULL
                    );
                    """)
        }
        migrator.registerMigration("v2-received") { db in
            // Completions as they arrive, before the next message is read (PROTOCOL.md: a
            // completion is durable on the unit from the moment it arrives). Each row goes in
            // the same transaction as the payment's decision or answer.
            try db.execute(
                sql: """
                    CREATE TABLE received (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        payload BLOB NOT NULL,
                        receivedAt INTEGER NOT NULL
                    );
                    """)
        }
        return migrator
    }

    /// When this journal was created (ms, the agent's clock then); nil for a journal older
    /// than this record, which has its history. Payments issued before it may have been
    /// decided by a journal that was lost, so they are never credited (docs/protocol.md).
    public func createdAt() throws -> Int? {
        try meta("journal.createdAt").flatMap(Int.init)
    }

    /// Notes the journal's creation time, once: `now` for an empty journal, 0 for one that
    /// already holds decisions (made before this record existed).
    public func noteCreation(now: Int) throws {
        try database.write { db in
            guard try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = 'journal.createdAt'") == nil else { return }
            let empty = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM decision") == 0
            try db.execute(
                sql: "INSERT INTO meta (key, value) VALUES ('journal.createdAt', ?)", arguments: [empty ? String(now) : "0"])
        }
    }

    /// The latest time recorded in the journal (a decision or a received completion): a floor
    /// for a clock that has been reset.
    public func latestRecordedTime() throws -> Int {
        try database.read { db in
            let decided = try Int.fetchOne(db, sql: "SELECT MAX(decidedAt) FROM decision") ?? 0
            let received = try Int.fetchOne(db, sql: "SELECT MAX(receivedAt) FROM received") ?? 0
            return max(decided, received)
        }
    }

    // MARK: Working room

    /// A file of preallocated space beside the journal, given back when a write finds the disk
    /// full, so the decision of a train that has fired can still be committed.
    public var reservePath: String { path + ".reserve" }
    /// The reserve's size: room for many decisions (each a few hundred bytes of WAL).
    public static let reserveBytes = 4 << 20
    /// Below this much free space (besides the reserve) no new train starts.
    public static let workingFloorBytes: Int = 8 << 20

    /// Makes the reserve if it is missing; false if the disk has no room for it.
    @discardableResult
    public func ensureReserve() -> Bool {
        if access(reservePath, F_OK) == 0 { return true }
        let fd = open(reservePath + ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return false }
        let made = posix_fallocate(fd, 0, off_t(Self.reserveBytes)) == 0 && fsync(fd) == 0
        close(fd)
        guard made, rename(reservePath + ".tmp", reservePath) == 0 else {
            unlink(reservePath + ".tmp")
            return false
        }
        return true
    }

    /// Free bytes on the journal's file system (for unprivileged writers).
    public func freeBytes() -> Int {
        var stats = statvfs()
        let directory = (path as NSString).deletingLastPathComponent
        guard statvfs(directory.isEmpty ? "." : directory, &stats) == 0 else { return 0 }
        return Int(stats.f_bavail) * Int(stats.f_frsize)
    }

    /// Whether a new train may start: the reserve is in place and free space is above the
    /// floor. Checked before a train's start record, so that its decision has room.
    public func hasWorkingRoom() -> Bool {
        (access(reservePath, F_OK) == 0 || ensureReserve()) && freeBytes() >= Self.workingFloorBytes
    }

    /// Runs a write; if the disk is full, gives back the reserve and tries once more. For the
    /// writes that must not be lost: a decision after pulses have fired.
    public func withReserve<T>(onRelease: () -> Void = {}, _ write: () throws -> T) throws -> T {
        do {
            return try write()
        } catch let error as DatabaseError where error.resultCode == .SQLITE_FULL || error.resultCode == .SQLITE_IOERR {
            guard unlink(reservePath) == 0 else { throw error }
            onRelease()
            return try write()
        }
    }

    // MARK: Received completions

    /// Records a completion as received, synced, and returns its row. Called on the network
    /// thread before the next message is read.
    public func recordReceived(_ payload: Data, at now: Int) throws -> Int64 {
        try database.write { db in
            let statement = try db.cachedStatement(sql: "INSERT INTO received (payload, receivedAt) VALUES (?, ?)")
            try statement.execute(arguments: [payload, now])
            return db.lastInsertedRowID
        }
    }

    /// Completions received but not yet decided or answered, oldest first.
    public func pendingReceived() throws -> [(id: Int64, payload: Data)] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT id, payload FROM received ORDER BY id").map { ($0["id"], $0["payload"]) }
        }
    }

    private func forgetReceived(_ id: Int64?, _ db: Database) throws {
        guard let id else { return }
        try db.cachedStatement(sql: "DELETE FROM received WHERE id = ?").execute(arguments: [id])
    }

    // MARK: Decisions

    public func decision(_ paymentId: PaymentID) throws -> StoredDecision? {
        guard decidedIds.withLock({ $0.contains(Self.idHash(paymentId.rawValue)) }) else { return nil }
        return try database.read { db in
            // On the payment path: a cached, prepared statement.
            let statement = try db.cachedStatement(sql: "SELECT status, reason, amount, decidedAt FROM decision WHERE paymentId = ?")
            guard let row = try Row.fetchOne(statement, arguments: [paymentId.rawValue]) else {
                return nil
            }
            return StoredDecision(
                paymentId: paymentId,
                status: (row["status"] as String?).flatMap(PaymentStatus.init(rawValue:)),
                reason: (row["reason"] as String?).flatMap(RejectionReason.init(rawValue:)),
                amount: row["amount"], decidedAt: row["decidedAt"])
        }
    }

    /// Records a decided payment (no train, or a finished one) with its result in the outbox
    /// and the counters, in one transaction.
    public func recordDecision(_ result: PaymentResult, payment: PaymentCompleted, received: Int64? = nil, enqueue: Bool = true) throws {
        noteDecided(payment.paymentId)
        try database.write { db in
            try forgetReceived(received, db)
            try db.execute(
                sql: """
                    INSERT INTO decision (paymentId, status, reason, amount, requestedAmount, userId, plan, pulsesFired, decidedAt)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    ON CONFLICT(paymentId) DO UPDATE SET
                        status = excluded.status, reason = excluded.reason, amount = excluded.amount,
                        pulsesFired = excluded.pulsesFired, decidedAt = excluded.decidedAt
                    """,
                arguments: [
                    payment.paymentId.rawValue, result.status.rawValue, result.reason?.rawValue, result.amount, payment.amount,
                    payment.userId.rawValue, Self.json(result.pulses), result.pulsesFired, result.decidedAt,
                ])
            if enqueue { try self.enqueue(result, db) }
            try deleteAcknowledged(db)
        }
    }

    /// Commits, synced, that a train is starting. Called on the pulse thread just before the
    /// first pulse; if it throws, nothing fires.
    /// The received record goes in the same transaction: from here on the started train is
    /// the payment's durable state (a restart reports it `uncertain`, never decides it anew).
    public func recordTrainStarted(_ payment: PaymentCompleted, plan: [PulseCount], at now: Int, received: Int64? = nil) throws {
        noteDecided(payment.paymentId)
        try database.write { db in
            try forgetReceived(received, db)
            let statement = try db.cachedStatement(
                sql: """
                    INSERT INTO decision (paymentId, status, amount, requestedAmount, userId, plan, startedAt, decidedAt)
                    VALUES (?, NULL, 0, ?, ?, ?, ?, ?)
                    """)
            try statement.execute(arguments: [payment.paymentId.rawValue, payment.amount, payment.userId.rawValue, Self.json(plan), now, now])
        }
    }

    /// Before a decision is written (a write that then fails leaves a hash that only costs a
    /// look-up).
    private func noteDecided(_ paymentId: PaymentID) {
        _ = decidedIds.withLock { $0.insert(Self.idHash(paymentId.rawValue)) }
    }

    /// Records a result that is not a decision of its own (refusals before a valid signature,
    /// duplicates): outbox and counters only.
    public func recordResultOnly(_ result: PaymentResult, received: Int64? = nil) throws {
        try database.write { db in
            try forgetReceived(received, db)
            try enqueue(result, db)
            try deleteAcknowledged(db)
        }
    }

    private func enqueue(_ result: PaymentResult, _ db: Database) throws {
        try db.execute(
            sql: "INSERT INTO outbox (paymentId, result) VALUES (?, ?)",
            arguments: [result.paymentId?.rawValue, String(decoding: WireCoding.encode(result), as: UTF8.self)])
        try bump(result.status.rawValue, by: 1, db)
        if result.status == .credited {
            try bump("creditedAmount", by: result.amount, db)
        }
        try bump("pulses", by: result.status == .duplicate ? 0 : result.pulsesFired, db)
    }

    private func bump(_ name: String, by value: Int, _ db: Database) throws {
        guard value != 0 else { return }
        try db.execute(
            sql: "INSERT INTO counter (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            arguments: [name, value])
    }

    /// Trains found started but not finished (the agent died mid-train).
    public func interruptedTrains() throws -> [(paymentId: PaymentID, plan: [PulseCount], requestedAmount: Int, userId: String?)] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT paymentId, plan, requestedAmount, userId FROM decision WHERE status IS NULL").compactMap { row in
                guard let id = PaymentID(rawValue: row["paymentId"]) else { return nil }
                let plan = (try? JSONDecoder().decode([PulseCount].self, from: Data((row["plan"] as String).utf8))) ?? []
                return (id, plan, row["requestedAmount"], row["userId"])
            }
        }
    }

    /// Marks an interrupted train `uncertain`/`interrupted` and queues its result.
    public func recordInterrupted(_ result: PaymentResult) throws {
        try database.write { db in
            try db.execute(
                sql: "UPDATE decision SET status = ?, reason = ?, amount = 0, pulsesFired = ?, decidedAt = ? WHERE paymentId = ?",
                arguments: [result.status.rawValue, result.reason?.rawValue, result.pulsesFired, result.decidedAt, result.paymentId?.rawValue])
            try enqueue(result, db)
        }
    }

    /// Forgets decisions older than `cutoff` (ms); the protocol asks for at least 30 days.
    @discardableResult
    public func purgeDecisions(decidedBefore cutoff: Int) throws -> Int {
        try database.write { db in
            try db.execute(sql: "DELETE FROM decision WHERE decidedAt < ? AND status IS NOT NULL", arguments: [cutoff])
            return db.changesCount
        }
    }

    // MARK: Outbox

    /// Results not yet acknowledged by the broker, oldest first.
    public func outbox(limit: Int = 100) throws -> [OutboxEntry] {
        let skip = acknowledged.withLock { $0 }
        return try database.read { db in
            try Row.fetchAll(db, sql: "SELECT id, result FROM outbox ORDER BY id LIMIT ?", arguments: [limit + skip.count]).compactMap { row in
                let id: Int64 = row["id"]
                guard !skip.contains(id),
                    let result = try? WireCoding.decode(PaymentResult.self, from: Data((row["result"] as String).utf8))
                else {
                    return nil
                }
                return OutboxEntry(id: id, result: result)
            }.prefix(limit).map { $0 }
        }
    }

    /// Forgets a result the broker has acknowledged. Its row is deleted with the next decision
    /// (or `flushAcknowledged()`), not in a commit of its own: a sync here would hold the
    /// journal as the next payment arrives, and even an unsynced commit leaves WAL pages that
    /// the next start record's sync must write too. Lost to a crash, the deletion only publishes
    /// the result again, which consumers de-duplicate by (`machineId`, `paymentId`).
    public func acknowledge(_ id: Int64) {
        _ = acknowledged.withLock { $0.insert(id) }
    }

    /// Deletes the acknowledged rows now (between payments: the heartbeat's turn in the
    /// pipeline, and before a stop).
    public func flushAcknowledged() throws {
        guard acknowledged.withLock({ !$0.isEmpty }) else { return }
        try database.write { db in try deleteAcknowledged(db) }
    }

    /// Whether acknowledged rows wait to be deleted.
    public var hasAcknowledged: Bool { acknowledged.withLock { !$0.isEmpty } }

    private func deleteAcknowledged(_ db: Database) throws {
        let ids = acknowledged.withLock { $0 }
        guard !ids.isEmpty else { return }
        let statement = try db.cachedStatement(sql: "DELETE FROM outbox WHERE id = ?")
        for id in ids { try statement.execute(arguments: [id]) }
        // Forgotten only once this transaction commits.
        db.afterNextTransaction { _ in self.acknowledged.withLock { $0.subtract(ids) } }
    }

    /// Results not yet acknowledged by the broker: the rows, less the acknowledged ones still
    /// in the file (a handful at most: they go with the next decision).
    public func outboxDepth() throws -> Int {
        let skip = acknowledged.withLock { $0 }
        return try database.read { db in
            let rows = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM outbox") ?? 0
            guard !skip.isEmpty else { return rows }
            let present = try db.cachedStatement(sql: "SELECT 1 FROM outbox WHERE id = ?")
            let gone = try skip.count { try Int.fetchOne(present, arguments: [$0]) != nil }
            return rows - gone
        }
    }

    // MARK: Counters

    public func counters() throws -> PaymentCounters {
        try database.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT name, value FROM counter")
            var values: [String: Int] = [:]
            for row in rows { values[row["name"]] = row["value"] }
            return PaymentCounters(
                credited: values["credited"] ?? 0, rejected: values["rejected"] ?? 0, duplicate: values["duplicate"] ?? 0,
                uncertain: values["uncertain"] ?? 0, pulses: values["pulses"] ?? 0, creditedAmount: values["creditedAmount"] ?? 0)
        }
    }

    // MARK: Configuration and trust

    /// The applied configuration's envelope (JSON text), if any.
    public func appliedConfigEnvelope() throws -> String? {
        try database.read { db in try String.fetchOne(db, sql: "SELECT envelope FROM appliedConfig WHERE id = 1") }
    }

    /// Stores an applied configuration, and its trust list when it carries one.
    public func saveAppliedConfig(_ config: MachineConfig, envelope: String, at now: Int) throws {
        try database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO appliedConfig (id, version, envelope, appliedAt) VALUES (1, ?, ?, ?)
                    ON CONFLICT(id) DO UPDATE SET version = excluded.version, envelope = excluded.envelope, appliedAt = excluded.appliedAt
                    """,
                arguments: [config.version, envelope, now])
            if let trust = config.trust { try replaceTrust(trust, db) }
        }
    }

    /// The trusted keys, or nil before any were stored.
    public func trust() throws -> [TrustEntry]? {
        try database.read { db in
            let rows = try Row.fetchAll(db, sql: "SELECT kid, purpose, publicKey FROM trustedKey ORDER BY kid")
            guard !rows.isEmpty else { return nil }
            return rows.compactMap { row in
                guard let kid = KeyID(rawValue: row["kid"]), let purpose = KeyPurpose(rawValue: row["purpose"]) else { return nil }
                return TrustEntry(kid: kid, purpose: purpose, publicKey: row["publicKey"])
            }
        }
    }

    public func saveTrust(_ entries: [TrustEntry]) throws {
        try database.write { db in try replaceTrust(entries, db) }
    }

    private func replaceTrust(_ entries: [TrustEntry], _ db: Database) throws {
        try db.execute(sql: "DELETE FROM trustedKey")
        for entry in entries {
            try db.execute(
                sql: "INSERT INTO trustedKey (kid, purpose, publicKey) VALUES (?, ?, ?)",
                arguments: [entry.kid.rawValue, entry.purpose.rawValue, entry.publicKey])
        }
    }

    /// Copies the write-ahead log into the database (passive: never waits for readers or the
    /// writer), on a connection of its own. The agent calls it from its checkpoint queue, beside
    /// the pipeline: a start record committed meanwhile does not wait for it.
    public func checkpoint() throws {
        try checkpointer.writeWithoutTransaction { db in _ = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(PASSIVE)") }
    }

    // MARK: Meta

    public func meta(_ key: String) throws -> String? {
        try database.read { db in try String.fetchOne(db, sql: "SELECT value FROM meta WHERE key = ?", arguments: [key]) }
    }

    public func setMeta(_ key: String, _ value: String) throws {
        try database.write { db in
            try db.execute(
                sql: "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                arguments: [key, value])
        }
    }

    static func json(_ value: some Encodable) -> String {
        String(decoding: WireCoding.encode(value), as: UTF8.self)
    }
}
