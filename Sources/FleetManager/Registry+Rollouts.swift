import Foundation
import GRDB
import MessageSchema

/// A firmware rollout as the registry keeps it: who started it, from where, its plan (each
/// unit's wave) and how each unit and the whole ended. The CLI's `firmware rollout` and the
/// console's both write it, so either shows the other's.
public struct RolloutRecord: Sendable, Hashable {
    public enum State: String, Sendable, Hashable {
        /// Waves are being published and waited for.
        case running
        /// Every wave ran (some units may have failed).
        case completed
        /// Stopped: failures reached the limit, or an operator aborted it.
        case aborted
        /// The process running it ended before it did (serve restarted, the CLI was killed).
        case interrupted
    }

    public struct Unit: Sendable, Hashable {
        public enum State: String, Sendable, Hashable {
            /// In a wave not published yet.
            case planned
            /// Its wave was published; no outcome yet.
            case sent
            case installed, failed
            /// Never published: the rollout stopped first.
            case untouched
            /// Published, but the rollout stopped before the unit reported.
            case abandoned
        }
        public var machineId: String
        public var wave: Int
        public var state: State
        public var reason: String?
        public var updatedAt: Int
    }

    public var id: Int
    public var version: String
    public var waveSize: Int
    public var maxFailures: Int
    public var timeoutS: Int
    public var startedBy: String
    public var via: String
    public var startedAt: Int
    public var state: State
    public var endedAt: Int?
    public var detail: String?
    public var units: [Unit]

    public func count(_ state: Unit.State) -> Int { units.filter { $0.state == state }.count }
}

extension Registry {
    static func registerRolloutMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v10-rollouts") { db in
            try db.execute(
                sql: """
                    CREATE TABLE rollout (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        version TEXT NOT NULL REFERENCES firmwareRelease(version),
                        waveSize INTEGER NOT NULL,
                        maxFailures INTEGER NOT NULL,
                        timeoutS INTEGER NOT NULL,
                        startedBy TEXT NOT NULL,
                        via TEXT NOT NULL,
                        startedAt INTEGER NOT NULL,
                        state TEXT NOT NULL,
                        endedAt INTEGER,
                        detail TEXT
                    );
                    CREATE TABLE rolloutUnit (
                        rolloutId INTEGER NOT NULL REFERENCES rollout(id) ON DELETE CASCADE,
                        machineId TEXT NOT NULL REFERENCES machine(id),
                        wave INTEGER NOT NULL,
                        state TEXT NOT NULL,
                        reason TEXT,
                        updatedAt INTEGER NOT NULL,
                        PRIMARY KEY (rolloutId, machineId)
                    );
                    CREATE INDEX rolloutUnit_machine ON rolloutUnit(machineId, state);
                    """)
        }
    }

    /// Records a new rollout and its plan (`waves`, in order); its ID.
    public func beginRollout(
        version: String, waves: [[MachineID]], waveSize: Int, maxFailures: Int, timeoutS: Int, by: String, via: AuditRecord.Via, now: Int = Registry.now()
    ) throws -> Int {
        try database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO rollout (version, waveSize, maxFailures, timeoutS, startedBy, via, startedAt, state)
                    VALUES (?, ?, ?, ?, ?, ?, ?, 'running')
                    """, arguments: [version, waveSize, maxFailures, timeoutS, by, via.rawValue, now])
            let id = Int(db.lastInsertedRowID)
            for (index, wave) in waves.enumerated() {
                for machine in wave {
                    try db.execute(
                        sql: "INSERT INTO rolloutUnit (rolloutId, machineId, wave, state, updatedAt) VALUES (?, ?, ?, 'planned', ?)",
                        arguments: [id, machine.rawValue, index + 1, now])
                }
            }
            return id
        }
    }

    /// Sets units' state in a rollout (only units in `from`, when given).
    public func setRolloutUnits(
        _ id: Int, _ machines: [MachineID], _ state: RolloutRecord.Unit.State, reason: String? = nil, from: [RolloutRecord.Unit.State]? = nil,
        now: Int = Registry.now()
    ) throws {
        try database.write { db in
            for machine in machines {
                try db.execute(
                    sql: """
                        UPDATE rolloutUnit SET state = ?, reason = ?, updatedAt = ? WHERE rolloutId = ? AND machineId = ?
                        \(from.map { "AND state IN (\($0.map { "'\($0.rawValue)'" }.joined(separator: ",")))" } ?? "")
                        """, arguments: [state.rawValue, reason, now, id, machine.rawValue])
            }
        }
    }

    public func endRollout(_ id: Int, _ state: RolloutRecord.State, detail: String?, now: Int = Registry.now()) throws {
        try database.write { db in
            try db.execute(
                sql: "UPDATE rollout SET state = ?, endedAt = ?, detail = ? WHERE id = ? AND state = 'running'",
                arguments: [state.rawValue, now, detail, id])
        }
    }

    /// Rollouts still `running` that were started `via` (by a process that has gone: serve at
    /// its start says so for the console's) become `interrupted`; their published units without
    /// an outcome become abandoned, the rest untouched.
    public func interruptRollouts(via: AuditRecord.Via, now: Int = Registry.now()) throws {
        try database.write { db in
            let ids = try Int.fetchAll(db, sql: "SELECT id FROM rollout WHERE state = 'running' AND via = ?", arguments: [via.rawValue])
            for id in ids {
                try db.execute(sql: "UPDATE rolloutUnit SET state = 'abandoned', updatedAt = ? WHERE rolloutId = ? AND state = 'sent'", arguments: [now, id])
                try db.execute(sql: "UPDATE rolloutUnit SET state = 'untouched', updatedAt = ? WHERE rolloutId = ? AND state = 'planned'", arguments: [now, id])
                try db.execute(
                    sql: "UPDATE rollout SET state = 'interrupted', endedAt = ?, detail = 'serve stopped while it ran' WHERE id = ?", arguments: [now, id])
            }
        }
    }

    /// One rollout whose run failed (a broker error): interrupted, as above.
    public func interruptRollout(_ id: Int, detail: String, now: Int = Registry.now()) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE rolloutUnit SET state = 'abandoned', updatedAt = ? WHERE rolloutId = ? AND state = 'sent'", arguments: [now, id])
            try db.execute(sql: "UPDATE rolloutUnit SET state = 'untouched', updatedAt = ? WHERE rolloutId = ? AND state = 'planned'", arguments: [now, id])
            try db.execute(
                sql: "UPDATE rollout SET state = 'interrupted', endedAt = ?, detail = ? WHERE id = ? AND state = 'running'", arguments: [now, detail, id])
        }
    }

    public func rollout(_ id: Int) throws -> RolloutRecord? {
        try database.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM rollout WHERE id = ?", arguments: [id]) else { return nil }
            let units = try Row.fetchAll(db, sql: "SELECT * FROM rolloutUnit WHERE rolloutId = ? ORDER BY wave, machineId", arguments: [id]).map {
                RolloutRecord.Unit(
                    machineId: $0["machineId"], wave: $0["wave"], state: RolloutRecord.Unit.State(rawValue: $0["state"]) ?? .planned, reason: $0["reason"],
                    updatedAt: $0["updatedAt"])
            }
            return Self.rolloutRecord(row, units: units)
        }
    }

    /// The latest rollouts, newest first, without their units.
    public func rollouts(limit: Int = 20) throws -> [RolloutRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM rollout ORDER BY id DESC LIMIT ?", arguments: [limit]).map { Self.rolloutRecord($0, units: []) }
        }
    }

    static func rolloutRecord(_ row: Row, units: [RolloutRecord.Unit]) -> RolloutRecord {
        RolloutRecord(
            id: row["id"], version: row["version"], waveSize: row["waveSize"], maxFailures: row["maxFailures"], timeoutS: row["timeoutS"],
            startedBy: row["startedBy"], via: row["via"], startedAt: row["startedAt"], state: RolloutRecord.State(rawValue: row["state"]) ?? .interrupted,
            endedAt: row["endedAt"], detail: row["detail"], units: units)
    }

    /// Every published release, newest first.
    public func releases() throws -> [FirmwareRelease] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM firmwareRelease ORDER BY publishedAt DESC, version DESC").map {
                FirmwareRelease(version: $0["version"], sha256: $0["sha256"], size: $0["size"], url: $0["url"])
            }
        }
    }
}
