import Foundation
import GRDB
import MessageSchema

/// A unit's past, for its page in the console: when it was online and offline, how its
/// heartbeats came, which configurations it was given and which firmware it ran.
public struct MachineHistory: Sendable {
    /// A change of presence: the unit became `state` at `at` (with why, when offline).
    public struct PresenceChange: Sendable, Hashable {
        public var state: String
        public var reason: String?
        public var at: Int
    }

    /// Heartbeats received in one hour (UTC), the longest gap before one of them, the deepest
    /// outbox they reported.
    public struct HeartbeatHour: Sendable, Hashable {
        public var hour: Int
        public var count: Int
        public var maxGapMs: Int
        public var maxOutbox: Int
        public var trains: Int
        /// The worst relay edge error and journal commit the unit reported in the hour, µs.
        public var maxEdgeErrorUs: Int?
        public var maxCommitUs: Int?
    }

    /// A configuration the fleet published for the unit.
    public struct ConfigVersion: Sendable, Hashable {
        public var version: Int
        public var publishedAt: Int
        /// The configuration as signed (JSON).
        public var json: String
    }

    /// What the unit said about a firmware update.
    public struct FirmwareStep: Sendable, Hashable {
        public var version: String
        public var state: String
        public var reason: String?
        public var at: Int
    }

    public var presence: [PresenceChange]
    public var heartbeats: [HeartbeatHour]
    public var configs: [ConfigVersion]
    public var firmware: [FirmwareStep]
}

extension Registry {
    /// How long history is kept: presence, heartbeat hours, firmware steps. Configurations are
    /// kept (they are few, and a diff needs the one before).
    public static let historyDays = 14

    static func registerHistoryMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v9-history") { db in
            try db.execute(
                sql: """
                    CREATE TABLE presenceChange (
                        machineId TEXT NOT NULL,
                        at INTEGER NOT NULL,
                        state TEXT NOT NULL,
                        reason TEXT
                    );
                    CREATE INDEX presenceChange_machine ON presenceChange(machineId, at);
                    CREATE TABLE heartbeatHour (
                        machineId TEXT NOT NULL,
                        hour INTEGER NOT NULL,       -- Unix ms of the hour's start (UTC)
                        count INTEGER NOT NULL,
                        maxGapMs INTEGER NOT NULL,
                        maxOutbox INTEGER NOT NULL,
                        trains INTEGER NOT NULL DEFAULT 0,
                        maxEdgeErrorUs INTEGER,
                        maxCommitUs INTEGER,
                        PRIMARY KEY (machineId, hour)
                    ) WITHOUT ROWID;
                    -- The agent's own measurements (heartbeat extension `metrics`): the last
                    -- window with trains, and trains counted since serve first saw the unit.
                    ALTER TABLE unitState ADD COLUMN trains INTEGER NOT NULL DEFAULT 0;
                    ALTER TABLE unitState ADD COLUMN edgeErrorMaxUs INTEGER;
                    ALTER TABLE unitState ADD COLUMN edgeErrorP99Us INTEGER;
                    ALTER TABLE unitState ADD COLUMN journalCommitMaxUs INTEGER;
                    ALTER TABLE unitState ADD COLUMN measuredAt INTEGER;
                    CREATE TABLE configVersion (
                        machineId TEXT NOT NULL,
                        version INTEGER NOT NULL,
                        publishedAt INTEGER NOT NULL,
                        config TEXT NOT NULL,
                        PRIMARY KEY (machineId, version)
                    );
                    CREATE TABLE firmwareStep (
                        machineId TEXT NOT NULL,
                        at INTEGER NOT NULL,
                        version TEXT NOT NULL,
                        state TEXT NOT NULL,
                        reason TEXT
                    );
                    CREATE INDEX firmwareStep_machine ON firmwareStep(machineId, at);
                    -- What the registry already knows becomes the first entry of each history.
                    INSERT INTO configVersion (machineId, version, publishedAt, config)
                        SELECT id, desiredVersion, COALESCE(desiredAt, 0), desiredConfig FROM machine WHERE desiredConfig IS NOT NULL;
                    INSERT INTO presenceChange (machineId, at, state, reason)
                        SELECT id, stateSince, state, offlineReason FROM unitState WHERE stateSince IS NOT NULL AND state IN ('online', 'offline');
                    INSERT INTO firmwareStep (machineId, at, version, state, reason) SELECT id, at, version, state, reason FROM firmwareState;
                    """)
        }
    }

    /// Notes a change of presence (nothing when the state stays).
    static func recordPresence(_ machine: MachineID, before: Presence, after: Presence, now: Int, _ db: Database) throws {
        guard after.state != before.state, after.state == .online || after.state == .offline else { return }
        try db.cachedStatement(sql: "INSERT INTO presenceChange (machineId, at, state, reason) VALUES (?, ?, ?, ?)")
            .execute(arguments: [machine.rawValue, now, after.state.rawValue, after.offlineReason?.rawValue])
    }

    /// Counts a heartbeat in its hour, with what the agent measured. `previousAt`: when the one
    /// before it came.
    static func recordHeartbeat(_ machine: MachineID, previousAt: Int?, outbox: Int, metrics: AgentMetrics?, now: Int, _ db: Database) throws {
        let gap = previousAt.map { max(0, now - $0) } ?? 0
        try db.cachedStatement(
            sql: """
                INSERT INTO heartbeatHour (machineId, hour, count, maxGapMs, maxOutbox, trains, maxEdgeErrorUs, maxCommitUs) VALUES (?, ?, 1, ?, ?, ?, ?, ?)
                ON CONFLICT(machineId, hour) DO UPDATE SET count = count + 1, maxGapMs = MAX(maxGapMs, excluded.maxGapMs),
                    maxOutbox = MAX(maxOutbox, excluded.maxOutbox), trains = trains + excluded.trains,
                    maxEdgeErrorUs = MAX(COALESCE(maxEdgeErrorUs, excluded.maxEdgeErrorUs), COALESCE(excluded.maxEdgeErrorUs, maxEdgeErrorUs)),
                    maxCommitUs = MAX(COALESCE(maxCommitUs, excluded.maxCommitUs), COALESCE(excluded.maxCommitUs, maxCommitUs))
                """
        ).execute(arguments: [
            machine.rawValue, now / 3_600_000 * 3_600_000, gap, outbox, metrics?.trains ?? 0, metrics?.edgeErrorMaxUs, metrics?.journalCommitMaxUs,
        ])
        guard let metrics, metrics.trains > 0 else { return }
        try db.cachedStatement(
            sql: """
                UPDATE unitState SET trains = trains + ?, edgeErrorMaxUs = ?, edgeErrorP99Us = ?, journalCommitMaxUs = ?, measuredAt = ?
                WHERE id = ?
                """
        ).execute(arguments: [metrics.trains, metrics.edgeErrorMaxUs, metrics.edgeErrorP99Us, metrics.journalCommitMaxUs, now, machine.rawValue])
    }

    static func recordConfigVersion(_ config: MachineConfig, json: String, now: Int, _ db: Database) throws {
        try db.execute(
            sql: "INSERT OR REPLACE INTO configVersion (machineId, version, publishedAt, config) VALUES (?, ?, ?, ?)",
            arguments: [config.machineId.rawValue, config.version, now, json])
    }

    static func recordFirmwareStep(_ report: FirmwareReported, _ db: Database) throws {
        try db.execute(
            sql: "INSERT INTO firmwareStep (machineId, at, version, state, reason) VALUES (?, ?, ?, ?, ?)",
            arguments: [report.machineId.rawValue, report.at, report.version, report.state.rawValue, report.reason])
    }

    /// Forgets presence, heartbeat hours and firmware steps older than `historyDays`.
    public func pruneHistory(now: Int) throws {
        let before = now - Self.historyDays * 86_400_000
        try database.write { db in
            try db.execute(sql: "DELETE FROM presenceChange WHERE at < ?", arguments: [before])
            try db.execute(sql: "DELETE FROM heartbeatHour WHERE hour < ?", arguments: [before])
            try db.execute(sql: "DELETE FROM firmwareStep WHERE at < ?", arguments: [before])
        }
    }

    /// A unit's history since `since` (Unix ms); the configurations all of them, newest first.
    public func history(of machine: MachineID, since: Int) throws -> MachineHistory {
        try database.read { db in
            let id = machine.rawValue
            // The change in force at `since` too, so a timeline knows how the period began.
            let presence = try Row.fetchAll(
                db,
                sql: """
                    SELECT * FROM (SELECT at, state, reason FROM presenceChange WHERE machineId = ? AND at < ? ORDER BY at DESC LIMIT 1)
                    UNION ALL SELECT at, state, reason FROM presenceChange WHERE machineId = ? AND at >= ? ORDER BY at
                    """, arguments: [id, since, id, since]
            ).map { MachineHistory.PresenceChange(state: $0["state"], reason: $0["reason"], at: $0["at"]) }
            let heartbeats = try Row.fetchAll(
                db, sql: "SELECT * FROM heartbeatHour WHERE machineId = ? AND hour >= ? ORDER BY hour", arguments: [id, since / 3_600_000 * 3_600_000]
            ).map {
                MachineHistory.HeartbeatHour(
                    hour: $0["hour"], count: $0["count"], maxGapMs: $0["maxGapMs"], maxOutbox: $0["maxOutbox"], trains: $0["trains"],
                    maxEdgeErrorUs: $0["maxEdgeErrorUs"], maxCommitUs: $0["maxCommitUs"])
            }
            let configs = try Row.fetchAll(
                db, sql: "SELECT version, publishedAt, config FROM configVersion WHERE machineId = ? ORDER BY version DESC", arguments: [id]
            ).map { MachineHistory.ConfigVersion(version: $0["version"], publishedAt: $0["publishedAt"], json: $0["config"]) }
            let firmware = try Row.fetchAll(
                db, sql: "SELECT * FROM firmwareStep WHERE machineId = ? AND at >= ? ORDER BY at DESC LIMIT 100", arguments: [id, since]
            ).map { MachineHistory.FirmwareStep(version: $0["version"], state: $0["state"], reason: $0["reason"], at: $0["at"]) }
            return MachineHistory(presence: presence, heartbeats: heartbeats, configs: configs, firmware: firmware)
        }
    }
}

/// What changed between two configurations, key by key (`outputs[0].pulseMs`); the version
/// and issue time, which change every time, left out.
public enum ConfigDiff {
    public struct Change: Sendable, Hashable {
        public var key: String
        public var old: String?
        public var new: String?

        public init(key: String, old: String?, new: String?) {
            self.key = key
            self.old = old
            self.new = new
        }
    }

    /// A JSON value as decoded strictly (a boolean is not a number).
    indirect enum Value: Decodable {
        case bool(Bool), int(Int), double(Double), string(String), array([Value]), object([String: Value]), null

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() { self = .null }
            else if let value = try? container.decode(Bool.self) { self = .bool(value) }
            else if let value = try? container.decode(Int.self) { self = .int(value) }
            else if let value = try? container.decode(Double.self) { self = .double(value) }
            else if let value = try? container.decode(String.self) { self = .string(value) }
            else if let value = try? container.decode([Value].self) { self = .array(value) }
            else { self = .object(try container.decode([String: Value].self)) }
        }
    }

    /// Every leaf of a JSON document under its path.
    public static func flatten(_ json: String) -> [String: String] {
        guard let value = try? JSONDecoder().decode(Value.self, from: Data(json.utf8)) else { return [:] }
        var out: [String: String] = [:]
        func walk(_ value: Value, _ path: String) {
            switch value {
            case .object(let object):
                if object.isEmpty { out[path] = "{}" }
                for (key, child) in object { walk(child, path.isEmpty ? key : path + "." + key) }
            case .array(let array):
                if array.isEmpty { out[path] = "[]" }
                for (index, child) in array.enumerated() { walk(child, path + "[\(index)]") }
            case .null: out[path] = "null"
            case .string(let string): out[path] = string
            case .bool(let bool): out[path] = bool ? "true" : "false"
            case .int(let int): out[path] = String(int)
            case .double(let double): out[path] = String(double)
            }
        }
        walk(value, "")
        return out
    }

    public static func changes(from old: String?, to new: String) -> [Change] {
        let before = old.map(flatten) ?? [:]
        let after = flatten(new)
        return Set(before.keys).union(after.keys).subtracting(["version", "issuedAt"]).sorted().compactMap { key in
            before[key] == after[key] ? nil : Change(key: key, old: before[key], new: after[key])
        }
    }
}
