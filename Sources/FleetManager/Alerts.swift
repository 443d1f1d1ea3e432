import Foundation
import GRDB
import MessageSchema

/// An alert as the registry keeps it: opened by a change (a unit went offline), resolved by
/// the change that undoes it (it came back), acknowledged by an operator meanwhile.
public struct AlertRecord: Sendable, Codable, Hashable {
    public var id: Int
    public var machineId: String
    public var kind: FleetAlert.Kind
    /// What in the machine it is about: the payment ID of an `uncertain` alert, else empty.
    public var subject: String
    public var detail: String
    public var openedAt: Int
    public var resolvedAt: Int?
    /// What resolved it ("back online", "settled by operator:ana", "unit revoked").
    public var resolution: String?
    /// Why nobody was told (`firmware update`: the restart of a planned update).
    public var suppressed: String?
    public var acknowledgedAt: Int?
    public var acknowledgedBy: String?

    init(_ row: Row) {
        id = row["id"]
        machineId = row["machineId"]
        kind = FleetAlert.Kind(rawValue: row["kind"]) ?? .offline
        subject = row["subject"]
        detail = row["detail"]
        openedAt = row["openedAt"]
        resolvedAt = row["resolvedAt"]
        resolution = row["resolution"]
        suppressed = row["suppressed"]
        acknowledgedAt = row["acknowledgedAt"]
        acknowledgedBy = row["acknowledgedBy"]
    }
}

/// One alert event (opened or resolved) for one target: the outbox `serve` delivers from.
public struct AlertDelivery: Sendable, Codable, Hashable {
    public enum Event: String, Sendable, Codable { case opened, resolved }
    public enum State: String, Sendable, Codable, CaseIterable { case pending, delivered, dead }
    public var id: Int
    public var alert: AlertRecord
    public var event: Event
    /// When the event happened.
    public var at: Int
    public var target: String
    public var state: State
    public var attempts: Int
    public var nextAttemptAt: Int
    public var lastError: String?
}

extension Registry {
    /// The migration that gives alerts a life: open, resolved, acknowledged, delivered.
    static func registerAlertMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v5-alerts") { db in
            try db.execute(
                sql: """
                    CREATE TABLE alert (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        machineId TEXT NOT NULL,
                        kind TEXT NOT NULL,                 -- offline | clock_skew | uncertain | config_not_applied
                        subject TEXT NOT NULL DEFAULT '',   -- the payment ID of an uncertain alert
                        detail TEXT NOT NULL,
                        openedAt INTEGER NOT NULL,
                        resolvedAt INTEGER,
                        resolution TEXT,
                        suppressed TEXT,                    -- why no target is told
                        acknowledgedAt INTEGER,
                        acknowledgedBy TEXT
                    );
                    -- One open alert per (machine, kind, subject).
                    CREATE UNIQUE INDEX alert_open ON alert(machineId, kind, subject) WHERE resolvedAt IS NULL;
                    CREATE INDEX alert_machine ON alert(machineId, openedAt);
                    INSERT INTO alert (machineId, kind, detail, openedAt, resolvedAt, resolution)
                        SELECT machineId, kind, detail, at, at, 'logged before alerts were resolved' FROM alertLog;
                    DROP TABLE alertLog;
                    -- Where alerts go: serve's --alert-webhook and --alert-exec, by name.
                    CREATE TABLE alertTarget (
                        name TEXT PRIMARY KEY,
                        active INTEGER NOT NULL,
                        addedAt INTEGER NOT NULL
                    );
                    CREATE TABLE alertDelivery (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        alertId INTEGER NOT NULL REFERENCES alert(id),
                        event TEXT NOT NULL,                     -- opened | resolved
                        at INTEGER NOT NULL,
                        target TEXT NOT NULL REFERENCES alertTarget(name),
                        state TEXT NOT NULL DEFAULT 'pending',   -- pending | delivered | dead
                        attempts INTEGER NOT NULL DEFAULT 0,
                        nextAttemptAt INTEGER NOT NULL,
                        lastError TEXT,
                        doneAt INTEGER
                    );
                    CREATE INDEX alertDelivery_due ON alertDelivery(nextAttemptAt) WHERE state = 'pending';
                    """)
        }
    }

    /// How long after a unit said it is installing firmware its going offline is the planned
    /// restart, not an incident.
    static let firmwareRestartWindowMs = 10 * 60 * 1000

    /// Opens `alert` unless the same one is open (or its unit is revoked); queues its
    /// delivery to every active target unless it is suppressed. Whether it opened.
    static func open(_ alert: FleetAlert, now: Int, _ db: Database) throws -> Bool {
        let machine = alert.machine.rawValue
        if try String.fetchOne(db, sql: "SELECT state FROM machine WHERE id = ?", arguments: [machine]) == "revoked" { return false }
        var suppressed: String?
        // Planned: a running rollout published this unit's update and waits for it, and the
        // unit said lately that it is applying that version. Either alone is no plan (a unit's
        // own word cannot silence its alerts).
        if alert.kind == .offline,
            try Bool.fetchOne(
                db,
                sql: """
                    SELECT EXISTS (SELECT 1 FROM rolloutUnit ru JOIN rollout r ON r.id = ru.rolloutId
                        JOIN firmwareState f ON f.id = ru.machineId AND f.version = r.version
                        WHERE ru.machineId = ? AND ru.state = 'sent' AND r.state = 'running'
                            AND f.state IN ('downloading', 'verifying', 'installing', 'installed') AND f.at > ?)
                    """, arguments: [machine, now - firmwareRestartWindowMs]) == true
        {
            suppressed = "firmware update"
        }
        try db.execute(
            sql: "INSERT OR IGNORE INTO alert (machineId, kind, subject, detail, openedAt, suppressed) VALUES (?, ?, ?, ?, ?, ?)",
            arguments: [machine, alert.kind.rawValue, alert.subject, alert.detail, now, suppressed])
        guard db.changesCount > 0 else { return false }
        if suppressed == nil { try queueDeliveries(alertId: db.lastInsertedRowID, event: .opened, now: now, db) }
        return true
    }

    /// Resolves the open alerts of `machine` of `kind` (and `subject`, when given); queues
    /// the `resolved` event where the opening was delivered. The alerts resolved.
    static func resolve(
        _ machine: MachineID, _ kind: FleetAlert.Kind?, subject: String? = nil, resolution: String, now: Int, _ db: Database
    ) throws -> [FleetAlert] {
        var sql = "SELECT * FROM alert WHERE machineId = ? AND resolvedAt IS NULL"
        var arguments: StatementArguments = [machine.rawValue]
        if let kind {
            sql += " AND kind = ?"
            arguments += [kind.rawValue]
        }
        if let subject {
            sql += " AND subject = ?"
            arguments += [subject]
        }
        var resolved: [FleetAlert] = []
        for record in try Row.fetchAll(db, sql: sql, arguments: arguments).map(AlertRecord.init) {
            try db.execute(sql: "UPDATE alert SET resolvedAt = ?, resolution = ? WHERE id = ?", arguments: [now, resolution, record.id])
            if record.suppressed == nil { try queueDeliveries(alertId: Int64(record.id), event: .resolved, now: now, db) }
            resolved.append(FleetAlert(machine: machine, kind: record.kind, detail: resolution, change: .resolve, subject: record.subject))
        }
        return resolved
    }

    /// Opens or resolves each alert; the ones that changed something (for the log).
    static func record(_ alerts: [FleetAlert], now: Int, _ db: Database) throws -> [FleetAlert] {
        var changed: [FleetAlert] = []
        for alert in alerts {
            switch alert.change {
            case .open:
                if try open(alert, now: now, db) { changed.append(alert) }
            case .resolve:
                changed += try resolve(alert.machine, alert.kind, subject: alert.subject, resolution: alert.detail, now: now, db)
            }
        }
        return changed
    }

    private static func queueDeliveries(alertId: Int64, event: AlertDelivery.Event, now: Int, _ db: Database) throws {
        try db.execute(
            sql: """
                INSERT INTO alertDelivery (alertId, event, at, target, nextAttemptAt)
                SELECT ?, ?, ?, name, ? FROM alertTarget WHERE active = 1
                """,
            arguments: [alertId, event.rawValue, now, now])
    }

    // MARK: What operators and serve call

    /// Open alerts (or all, newest first), of one machine or all.
    public func alerts(openOnly: Bool = true, machine: MachineID? = nil, limit: Int = 1000) throws -> [AlertRecord] {
        try database.read { db in
            var sql = "SELECT * FROM alert WHERE 1"
            var arguments: StatementArguments = []
            if openOnly { sql += " AND resolvedAt IS NULL" }
            if let machine {
                sql += " AND machineId = ?"
                arguments += [machine.rawValue]
            }
            sql += " ORDER BY id DESC LIMIT ?"
            arguments += [limit]
            return try Row.fetchAll(db, sql: sql, arguments: arguments).map(AlertRecord.init)
        }
    }

    /// An operator has seen alert `id` (it stays open until what raised it is undone).
    @discardableResult
    public func acknowledgeAlert(_ id: Int, by operatorName: String, now: Int = Registry.now()) throws -> AlertRecord {
        try database.write { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM alert WHERE id = ?", arguments: [id]) else {
                throw FleetError("no alert \(id)", hint: "fleet-manager alerts lists them with their IDs")
            }
            guard row["acknowledgedAt"] as Int? == nil else { return AlertRecord(row) }
            try db.execute(
                sql: "UPDATE alert SET acknowledgedAt = ?, acknowledgedBy = ? WHERE id = ?", arguments: [now, operatorName, id])
            return AlertRecord(try Row.fetchOne(db, sql: "SELECT * FROM alert WHERE id = ?", arguments: [id])!)
        }
    }

    /// Opens `configNotApplied` for the units in `pending` and resolves it for the others.
    public func syncConfigAlerts(pending: Set<MachineID>, detail: String, now: Int = Registry.now()) throws -> [FleetAlert] {
        try database.write { db in
            let open = Set(
                try String.fetchAll(
                    db, sql: "SELECT machineId FROM alert WHERE kind = ? AND resolvedAt IS NULL", arguments: [FleetAlert.Kind.configNotApplied.rawValue]
                ).map { MachineID(unchecked: $0) })
            var changed: [FleetAlert] = []
            for machine in pending.subtracting(open).sorted(by: { $0.rawValue < $1.rawValue }) {
                let alert = FleetAlert(machine: machine, kind: .configNotApplied, detail: detail)
                if try Self.open(alert, now: now, db) { changed.append(alert) }
            }
            for machine in open.subtracting(pending).sorted(by: { $0.rawValue < $1.rawValue }) {
                changed += try Self.resolve(machine, .configNotApplied, resolution: "configuration applied", now: now, db)
            }
            return changed
        }
    }

    /// The targets `serve` delivers to now; deliveries queued for a target no longer given
    /// are dead ("target removed").
    public func setAlertTargets(_ names: [String], now: Int = Registry.now()) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE alertTarget SET active = 0")
            for name in names {
                try db.execute(
                    sql: "INSERT INTO alertTarget (name, active, addedAt) VALUES (?, 1, ?) ON CONFLICT(name) DO UPDATE SET active = 1",
                    arguments: [name, now])
            }
            try db.execute(
                sql: """
                    UPDATE alertDelivery SET state = 'dead', lastError = 'target removed from serve', doneAt = ?
                    WHERE state = 'pending' AND target IN (SELECT name FROM alertTarget WHERE active = 0)
                    """, arguments: [now])
        }
    }

    /// Deliveries due now, oldest first.
    public func dueAlertDeliveries(now: Int = Registry.now(), limit: Int = 32) throws -> [AlertDelivery] {
        try deliveries(where: "d.state = 'pending' AND d.nextAttemptAt <= ?", [now], limit: limit, newestFirst: false)
    }

    /// Deliveries in `state` (all when nil), newest first.
    public func alertDeliveries(state: AlertDelivery.State? = nil, limit: Int = 200) throws -> [AlertDelivery] {
        if let state { return try deliveries(where: "d.state = ?", [state.rawValue], limit: limit, newestFirst: true) }
        return try deliveries(where: "1", [], limit: limit, newestFirst: true)
    }

    private func deliveries(where condition: String, _ arguments: StatementArguments, limit: Int, newestFirst: Bool) throws -> [AlertDelivery] {
        try database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT d.id AS deliveryId, d.event, d.at, d.target, d.state AS deliveryState, d.attempts, d.nextAttemptAt, d.lastError, a.*
                    FROM alertDelivery d JOIN alert a ON a.id = d.alertId
                    WHERE \(condition) ORDER BY d.id \(newestFirst ? "DESC" : "ASC") LIMIT ?
                    """, arguments: arguments + [limit]
            ).map { row in
                AlertDelivery(
                    id: row["deliveryId"], alert: AlertRecord(row), event: AlertDelivery.Event(rawValue: row["event"]) ?? .opened,
                    at: row["at"], target: row["target"], state: AlertDelivery.State(rawValue: row["deliveryState"]) ?? .pending,
                    attempts: row["attempts"], nextAttemptAt: row["nextAttemptAt"], lastError: row["lastError"])
            }
        }
    }

    /// What one attempt came to: delivered, or failed with a retry at `retryAt` (nil: the
    /// attempts are used up and the delivery is dead).
    public enum DeliveryOutcome: Sendable {
        case delivered
        case failed(String, retryAt: Int?)
    }

    public func recordAttempt(_ id: Int, _ outcome: DeliveryOutcome, now: Int = Registry.now()) throws {
        try database.write { db in
            switch outcome {
            case .delivered:
                try db.execute(
                    sql: "UPDATE alertDelivery SET state = 'delivered', attempts = attempts + 1, lastError = NULL, doneAt = ? WHERE id = ?",
                    arguments: [now, id])
            case .failed(let error, let retryAt?):
                try db.execute(
                    sql: "UPDATE alertDelivery SET attempts = attempts + 1, lastError = ?, nextAttemptAt = ? WHERE id = ?",
                    arguments: [error, retryAt, id])
            case .failed(let error, nil):
                try db.execute(
                    sql: "UPDATE alertDelivery SET state = 'dead', attempts = attempts + 1, lastError = ?, doneAt = ? WHERE id = ?",
                    arguments: [error, now, id])
            }
        }
    }
}
