import Foundation
import GRDB
import MessageSchema

/// Which units: the console's fleet page and its live stream ask for a page of them.
public struct UnitQuery: Sendable, Hashable {
    /// Only these machine IDs.
    public var ids: [String]?
    /// Machine IDs containing this (empty: any).
    public var search: String
    /// `online`, `offline`, `unknown` or `revoked`.
    public var state: String?
    public var limit: Int?
    public var offset: Int

    public init(ids: [String]? = nil, search: String = "", state: String? = nil, limit: Int? = nil, offset: Int = 0) {
        self.ids = ids
        self.search = search
        self.state = state
        self.limit = limit
        self.offset = offset
    }
}

/// Something a unit (or a payment server) said, as `serve` ingests it.
public enum FleetEvent: Sendable {
    case status(StatusMessage)
    case heartbeat(Heartbeat)
    case result(PaymentResult)
    /// A completion whose signature verified with a fleet payment key, and the SHA-256 of its
    /// bytes.
    case completion(PaymentCompleted, payloadSha256: String)
    /// A message that could not be attributed (its body names another machine than its
    /// topic): counted per (topic machine, kind).
    case ignored(machine: MachineID, kind: String)
    case configReported(ConfigReported)
    case firmwareReported(FirmwareReported)
}

/// A noteworthy change: an alert opened or resolved (docs/operations.md, "Alerts"). `serve`
/// logs it; the registry keeps the alert and delivers it to the alert targets.
public struct FleetAlert: Sendable, Hashable, CustomStringConvertible {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case offline, clockSkew = "clock_skew", uncertain, configNotApplied = "config_not_applied"
    }
    public enum Change: String, Sendable, Hashable, Codable {
        case open, resolve
    }
    public var machine: MachineID
    public var kind: Kind
    public var detail: String
    public var change: Change = .open
    /// What in the machine it is about: the payment ID of an `uncertain` alert, else empty.
    public var subject: String = ""

    public init(machine: MachineID, kind: Kind, detail: String, change: Change = .open, subject: String = "") {
        self.machine = machine
        self.kind = kind
        self.detail = detail
        self.change = change
        self.subject = subject
    }

    public var description: String { "\(machine): \(kind.rawValue)\(change == .resolve ? " resolved" : ""): \(detail)" }
}

/// One unit at a glance.
public struct UnitOverview: Sendable, Codable, Hashable {
    public var machineId: String
    public var provisioning: String
    public var state: String
    public var offlineReason: String?
    public var lastSeen: Int?
    public var firmware: String?
    public var desiredConfigVersion: Int?
    public var appliedConfigVersion: Int?
    public var configReport: String?
    public var clockSkewMs: Int?
    public var relay: String?
    public var inhibited: Bool?
    public var outboxDepth: Int?
    public var counters: PaymentCounters?
    public var alerts: [String]
    /// What the unit measured of itself (heartbeat extension `metrics`): trains since serve
    /// first saw it, and from the last heartbeat window with trains the worst and 99th
    /// percentile relay edge error and the longest journal commit, µs.
    public var trains: Int = 0
    public var edgeErrorMaxUs: Int?
    public var edgeErrorP99Us: Int?
    public var journalCommitMaxUs: Int?
}

extension Registry {
    /// Applies a batch of events in one transaction; returns the alerts they opened or resolved.
    public func apply(_ events: [FleetEvent], now: Int, skewLimitMs: Int = 5_000) throws -> [FleetAlert] {
        defer { changed() }
        return try database.write { db in
            var alerts: [FleetAlert] = []
            for event in events {
                switch event {
                case .status(let status):
                    try applyStatus(status, now: now, db, &alerts)
                case .heartbeat(let heartbeat):
                    try applyHeartbeat(heartbeat, now: now, skewLimitMs: skewLimitMs, db, &alerts)
                case .result(let result):
                    try applyResult(result, now: now, db, &alerts)
                case .completion(let payment, let sha):
                    try db.execute(
                        sql: """
                            INSERT INTO paymentRecord (paymentId, machineId, userId, requestedAmount, currency, issuedAt, expiresAt, updatedAt, payloadSha256)
                            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                            ON CONFLICT(machineId, paymentId) DO UPDATE SET userId = excluded.userId, requestedAmount = excluded.requestedAmount,
                                currency = excluded.currency, issuedAt = excluded.issuedAt, expiresAt = excluded.expiresAt, updatedAt = excluded.updatedAt,
                                payloadSha256 = COALESCE(payloadSha256, excluded.payloadSha256)
                            """,
                        arguments: [
                            payment.paymentId.rawValue, payment.machineId.rawValue, payment.userId.rawValue, payment.amount,
                            payment.currency.rawValue, payment.issuedAt, payment.expiresAt, now, sha,
                        ])
                case .ignored(let machine, let kind):
                    try db.execute(
                        sql: """
                            INSERT INTO ignoredMessage (machineId, kind, count, lastAt) VALUES (?, ?, 1, ?)
                            ON CONFLICT(machineId, kind) DO UPDATE SET count = count + 1, lastAt = excluded.lastAt
                            """, arguments: [machine.rawValue, kind, now])
                case .configReported(let report):
                    try Self.recordConfigReport(report, db)
                case .firmwareReported(let report):
                    try db.execute(
                        sql: """
                            INSERT INTO firmwareState (id, version, state, reason, at) VALUES (?, ?, ?, ?, ?)
                            ON CONFLICT(id) DO UPDATE SET version = excluded.version, state = excluded.state, reason = excluded.reason, at = excluded.at
                            """,
                        arguments: [report.machineId.rawValue, report.version, report.state.rawValue, report.reason, report.at])
                    try Self.recordFirmwareStep(report, db)
                }
            }
            return try Self.record(alerts, now: now, db)
        }
    }

    private func unitRow(_ id: MachineID, _ db: Database) throws -> Row? {
        try Row.fetchOne(db.cachedStatement(sql: "SELECT * FROM unitState WHERE id = ?"), arguments: [id.rawValue])
    }

    /// Makes the unit's state row on first sight, with the heartbeat interval of its desired
    /// configuration (kept current by `setDesiredConfig`). Cheap when the row exists: this
    /// runs for every heartbeat.
    private func ensureUnit(_ id: MachineID, _ db: Database) throws {
        try db.cachedStatement(sql: "INSERT OR IGNORE INTO unitState (id) VALUES (?)").execute(arguments: [id.rawValue])
        guard db.changesCount > 0 else { return }
        if let heartbeatS = try String.fetchOne(db, sql: "SELECT desiredConfig FROM machine WHERE id = ?", arguments: [id.rawValue])
            .flatMap({ try? WireCoding.decode(MachineConfig.self, from: Data($0.utf8)).heartbeatS })
        {
            try db.execute(sql: "UPDATE unitState SET heartbeatS = ? WHERE id = ?", arguments: [heartbeatS, id.rawValue])
        }
    }

    /// The unit's presence as its row keeps it.
    private func presence(_ row: Row?) -> Presence {
        let state = (row?["state"] as String?).flatMap(Presence.State.init(rawValue:)) ?? .unknown
        return Presence(
            state: state,
            offlineReason: state == .offline ? (row?["offlineReason"] as String?).flatMap(Presence.OfflineReason.init(rawValue:)) ?? .status : nil,
            bootId: row?["bootId"], session: row?["session"], since: row?["stateSince"], lastHeartbeatAt: row?["lastHeartbeatAt"],
            heartbeatS: row?["heartbeatS"] ?? 30)
    }

    /// `presenceColumns` of an UPDATE, and their values.
    private static let presenceColumns = "state = ?, offlineReason = ?, bootId = ?, session = ?, stateSince = ?, lastHeartbeatAt = ?"

    private static func presenceValues(_ p: Presence) -> StatementArguments {
        [p.state.rawValue, p.offlineReason?.rawValue, p.bootId, p.session, p.since, p.lastHeartbeatAt]
    }

    private static func alerts(_ raised: [Presence.Alert], _ machine: MachineID) -> [FleetAlert] {
        raised.map { FleetAlert(machine: machine, kind: $0.kind, detail: $0.detail, change: $0.change) }
    }

    private func applyStatus(_ status: StatusMessage, now: Int, _ db: Database, _ alerts: inout [FleetAlert]) throws {
        try ensureUnit(status.machineId, db)
        if status.state == .online { try settleUnanswered(status.machineId, sessionBegan: status.sessionBegan, now: now, db) }
        let before = presence(try unitRow(status.machineId, db))
        let (after, raised) = before.applying(
            .status(online: status.state == .online, bootId: status.bootId, session: status.session), now: now)
        alerts += Self.alerts(raised, status.machineId)
        try Self.recordPresence(status.machineId, before: before, after: after, now: now, db)
        switch status.state {
        case .online:
            try db.execute(
                sql: "UPDATE unitState SET \(Self.presenceColumns), lastSeen = ?, firmware = ?, configVersion = ? WHERE id = ?",
                arguments: Self.presenceValues(after) + [now, status.firmware, status.configVersion, status.machineId.rawValue])
        case .offline:
            guard after != before else { return }
            try db.execute(
                sql: "UPDATE unitState SET \(Self.presenceColumns) WHERE id = ?",
                arguments: Self.presenceValues(after) + [status.machineId.rawValue])
        }
    }

    private func applyHeartbeat(_ heartbeat: Heartbeat, now: Int, skewLimitMs: Int, _ db: Database, _ alerts: inout [FleetAlert]) throws {
        try ensureUnit(heartbeat.machineId, db)
        let row = try unitRow(heartbeat.machineId, db)
        let skew = heartbeat.at - now
        let previousSkew: Int? = row?["clockSkewMs"]
        if abs(skew) > skewLimitMs && (previousSkew.map { abs($0) <= skewLimitMs } ?? true) {
            alerts.append(FleetAlert(machine: heartbeat.machineId, kind: .clockSkew, detail: "clock is \(skew) ms off the manager's"))
        } else if abs(skew) <= skewLimitMs, let previousSkew, abs(previousSkew) > skewLimitMs {
            alerts.append(FleetAlert(machine: heartbeat.machineId, kind: .clockSkew, detail: "clock within \(skewLimitMs) ms again", change: .resolve))
        }
        let before = presence(row)
        let (after, raised) = before.applying(.heartbeat(bootId: heartbeat.bootId), now: now)
        alerts += Self.alerts(raised, heartbeat.machineId)
        try Self.recordPresence(heartbeat.machineId, before: before, after: after, now: now, db)
        try Self.recordHeartbeat(
            heartbeat.machineId, previousAt: row?["lastHeartbeatAt"], outbox: heartbeat.outboxDepth, metrics: heartbeat.metrics, now: now, db)
        let counters = String(decoding: WireCoding.encode(heartbeat.counters), as: UTF8.self)
        try db.cachedStatement(
            sql: """
                UPDATE unitState SET \(Self.presenceColumns), lastSeen = ?, clockSkewMs = ?, firmware = ?, configVersion = ?,
                    inhibited = ?, relay = ?, outboxDepth = ?, counters = ?
                WHERE id = ?
                """
        ).execute(
            arguments: Self.presenceValues(after)
                + [
                    now, skew, heartbeat.firmware, heartbeat.configVersion, heartbeat.inhibited, heartbeat.relay.rawValue,
                    heartbeat.outboxDepth, counters, heartbeat.machineId.rawValue,
                ])
    }

    private func applyResult(_ result: PaymentResult, now: Int, _ db: Database, _ alerts: inout [FleetAlert]) throws {
        guard let paymentId = result.paymentId else { return }  // a malformed message: nothing to attach it to
        if result.isRefusalBeforeSignature {
            // Its payment ID was never verified: it settles the payment only if the unit
            // refused the very bytes of the completion we recorded (PROTOCOL.md).
            try db.execute(
                sql: """
                    UPDATE paymentRecord SET status = 'rejected', reason = ?, creditedAmount = 0, pulsesFired = 0, decidedAt = ?,
                        updatedAt = ?, settlement = 'void', settledBy = 'result'
                    WHERE machineId = ? AND paymentId = ? AND status IS NULL AND payloadSha256 IS NOT NULL AND payloadSha256 = ?
                    """,
                arguments: [result.reason?.rawValue, result.decidedAt, now, result.machineId.rawValue, paymentId.rawValue, result.payloadSha256])
            return
        }
        if result.status == .duplicate {
            let original = result.original
            try db.execute(
                sql: """
                    INSERT INTO paymentRecord (paymentId, machineId, status, reason, creditedAmount, duplicates, updatedAt, settlement, settledBy)
                    VALUES (?, ?, ?, ?, ?, 1, ?, ?, 'result')
                    ON CONFLICT(machineId, paymentId) DO UPDATE SET duplicates = duplicates + 1, updatedAt = excluded.updatedAt,
                        status = COALESCE(status, excluded.status), reason = COALESCE(reason, excluded.reason),
                        settlement = COALESCE(settlement, excluded.settlement), settledBy = COALESCE(settledBy, excluded.settledBy)
                    """,
                arguments: [
                    paymentId.rawValue, result.machineId.rawValue, original?.status.rawValue, original?.reason?.rawValue,
                    original?.status == .credited ? original?.amount ?? 0 : 0, now,
                    original.map { Self.settlement(for: $0.status) },
                ])
            return
        }
        // The first decision stands; a result published again after a restart changes nothing.
        try db.execute(
            sql: """
                INSERT INTO paymentRecord (paymentId, machineId, status, reason, creditedAmount, pulsesFired, decidedAt, updatedAt, settlement, settledBy)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'result')
                ON CONFLICT(machineId, paymentId) DO UPDATE SET status = excluded.status, reason = excluded.reason,
                    creditedAmount = excluded.creditedAmount, pulsesFired = excluded.pulsesFired, decidedAt = excluded.decidedAt,
                    updatedAt = excluded.updatedAt, settlement = excluded.settlement, settledBy = 'result'
                WHERE paymentRecord.status IS NULL
                """,
            arguments: [
                paymentId.rawValue, result.machineId.rawValue, result.status.rawValue, result.reason?.rawValue, result.amount,
                result.pulsesFired, result.decidedAt, now, Self.settlement(for: result.status),
            ])
        if result.status == .uncertain {
            alerts.append(
                FleetAlert(
                    machine: result.machineId, kind: .uncertain,
                    detail: "payment \(paymentId) uncertain (\(result.reason?.rawValue ?? "?")): hold it for review", subject: paymentId.rawValue))
        }
    }

    /// PROTOCOL.md's settlement rule for a decided payment.
    static func settlement(for status: PaymentStatus) -> String {
        switch status {
        case .credited: "capture"
        case .rejected: "void"
        case .uncertain, .duplicate: "hold"
        }
    }

    /// `online` for a session that began at `sessionBegan`: every payment of that machine that
    /// expired before it and still has no result cannot have been credited (the outbox is
    /// published before `online`, nothing is credited after `expiresAt`): void.
    private func settleUnanswered(_ machine: MachineID, sessionBegan: Int, now: Int, _ db: Database) throws {
        try db.execute(
            sql: """
                UPDATE paymentRecord SET settlement = 'void', settledBy = 'online_after_expiry', updatedAt = ?
                WHERE machineId = ? AND settlement IS NULL AND status IS NULL AND expiresAt IS NOT NULL AND expiresAt < ?
                """, arguments: [now, machine.rawValue, sessionBegan])
    }

    /// Units that sent nothing for `Presence.missedHeartbeats` × their interval are offline.
    /// The query finds the candidates (so a sweep of 10,000 units reads few rows);
    /// `Presence.applying(.tick)` decides.
    public func markSilentUnitsOffline(now: Int) throws -> [FleetAlert] {
        let alerts = try database.write { db -> [FleetAlert] in
            let candidates = try Row.fetchAll(
                db,
                sql: "SELECT * FROM unitState WHERE state = 'online' AND lastHeartbeatAt < ? - ? * heartbeatS * 1000",
                arguments: [now, Presence.missedHeartbeats])
            var alerts: [FleetAlert] = []
            for row in candidates {
                let id = MachineID(unchecked: row["id"])
                let before = presence(row)
                let (after, raised) = before.applying(.tick, now: now)
                guard !raised.isEmpty else { continue }
                try Self.recordPresence(id, before: before, after: after, now: now, db)
                try db.execute(sql: "UPDATE unitState SET \(Self.presenceColumns) WHERE id = ?", arguments: Self.presenceValues(after) + [id.rawValue])
                alerts += try Self.record(Self.alerts(raised, id), now: now, db)
            }
            return alerts
        }
        if !alerts.isEmpty { changed() }
        return alerts
    }

    /// Units whose desired configuration has waited longer than `limitMs` to be applied.
    public func configsNotApplied(now: Int, olderThanMs limitMs: Int) throws -> [MachineID] {
        try database.read { db in
            try String.fetchAll(
                db,
                sql: """
                    SELECT id FROM machine WHERE state = 'provisioned' AND desiredAt IS NOT NULL AND desiredAt < ?
                        AND (reportedVersion IS NULL OR reportedVersion < desiredVersion OR reportedStatus != 'applied')
                    """, arguments: [now - limitMs]
            ).map { MachineID(unchecked: $0) }
        }
    }

    // MARK: Reading

    /// Every unit's overview, or only `machine`'s.
    public func overviews(now: Int, only machine: MachineID? = nil, configPendingMs: Int = 10 * 60_000, skewLimitMs: Int = 5_000) throws -> [UnitOverview] {
        try overviews(now: now, matching: UnitQuery(ids: machine.map { [$0.rawValue] }), configPendingMs: configPendingMs, skewLimitMs: skewLimitMs)
    }

    /// The SQL for a unit's state as the fleet shows it.
    static let unitStateSQL = "CASE WHEN m.state = 'revoked' THEN 'revoked' ELSE COALESCE(u.state, 'unknown') END"

    static func clause(_ query: UnitQuery) -> (String, StatementArguments) {
        var clauses: [String] = []
        var arguments = StatementArguments()
        if let ids = query.ids {
            clauses.append(ids.isEmpty ? "0" : "m.id IN (\(ids.map { _ in "?" }.joined(separator: ",")))")
            _ = arguments.append(contentsOf: StatementArguments(ids))
        }
        if !query.search.isEmpty {
            clauses.append("instr(m.id, ?) > 0")
            _ = arguments.append(contentsOf: [query.search])
        }
        if let state = query.state {
            clauses.append("\(unitStateSQL) = ?")
            _ = arguments.append(contentsOf: [state])
        }
        return (clauses.isEmpty ? "1" : clauses.joined(separator: " AND "), arguments)
    }

    /// How many units `query` selects (its limit and offset aside).
    public func unitCount(matching query: UnitQuery) throws -> Int {
        let (clause, arguments) = Self.clause(query)
        return try database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM machine m LEFT JOIN unitState u ON u.id = m.id WHERE \(clause)", arguments: arguments) ?? 0
        }
    }

    /// Units per state (`online`, `offline`, `unknown`, `revoked`).
    public func unitStateCounts() throws -> [String: Int] {
        try database.read { db in
            var counts: [String: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT \(Self.unitStateSQL) AS state, COUNT(*) AS n FROM machine m LEFT JOIN unitState u ON u.id = m.id GROUP BY 1") {
                counts[row["state"]] = row["n"]
            }
            return counts
        }
    }

    /// The overviews of the units `query` selects, by machine ID, paged in SQL: a page of the
    /// console reads its rows, not the fleet's.
    public func overviews(now: Int, matching query: UnitQuery, configPendingMs: Int = 10 * 60_000, skewLimitMs: Int = 5_000) throws -> [UnitOverview] {
        let pending = Set(try configsNotApplied(now: now, olderThanMs: configPendingMs))
        let (clause, arguments) = Self.clause(query)
        var all = arguments
        _ = all.append(contentsOf: [query.limit ?? -1, query.offset])
        return try database.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT m.id, m.state AS provisioning, m.desiredVersion, m.reportedVersion, m.reportedStatus, m.reportedReason,
                        u.state, u.offlineReason, u.lastSeen, u.firmware, u.configVersion, u.clockSkewMs, u.relay, u.inhibited,
                        u.outboxDepth, u.counters, u.trains, u.edgeErrorMaxUs, u.edgeErrorP99Us, u.journalCommitMaxUs,
                        (SELECT COUNT(*) FROM paymentRecord p WHERE p.machineId = m.id AND p.status = 'uncertain') AS uncertain
                    FROM machine m LEFT JOIN unitState u ON u.id = m.id WHERE \(clause) ORDER BY m.id LIMIT ? OFFSET ?
                    """, arguments: all)
            return rows.map { row in
                let id: String = row["id"]
                var alerts: [String] = []
                let provisioning: String = row["provisioning"]
                let state: String = row["state"] ?? "unknown"
                if provisioning == "provisioned" && state == "offline" { alerts.append("offline") }
                if let skew: Int = row["clockSkewMs"], abs(skew) > skewLimitMs { alerts.append("clock skew \(skew / 1000) s") }
                let uncertain: Int = row["uncertain"] ?? 0
                if uncertain > 0 { alerts.append("\(uncertain) uncertain payment(s)") }
                if pending.contains(MachineID(unchecked: id)) { alerts.append("config not applied") }
                if row["relay"] as String? == "fault" { alerts.append("relay fault") }
                let report: String? = (row["reportedStatus"] as String?).map { status in
                    "\(status)\((row["reportedReason"] as String?).map { " (\($0))" } ?? "")"
                }
                return UnitOverview(
                    machineId: id, provisioning: provisioning, state: provisioning == "revoked" ? "revoked" : state,
                    offlineReason: row["offlineReason"], lastSeen: row["lastSeen"], firmware: row["firmware"],
                    desiredConfigVersion: (row["desiredVersion"] as Int?).flatMap { $0 > 0 ? $0 : nil },
                    appliedConfigVersion: row["reportedStatus"] as String? == "applied" ? row["reportedVersion"] : nil,
                    configReport: report, clockSkewMs: row["clockSkewMs"], relay: row["relay"],
                    inhibited: (row["inhibited"] as Int?).map { $0 != 0 }, outboxDepth: row["outboxDepth"],
                    counters: (row["counters"] as String?).flatMap { try? WireCoding.decode(PaymentCounters.self, from: Data($0.utf8)) },
                    alerts: alerts, trains: row["trains"] ?? 0, edgeErrorMaxUs: row["edgeErrorMaxUs"], edgeErrorP99Us: row["edgeErrorP99Us"],
                    journalCommitMaxUs: row["journalCommitMaxUs"])
            }
        }
    }

    /// A unit's state (`online`, `offline`, `unknown`), or nil if never seen.
    public func unitState(_ id: MachineID) throws -> String? {
        try database.read { db in try String.fetchOne(db, sql: "SELECT state FROM unitState WHERE id = ?", arguments: [id.rawValue]) }
    }

    /// How many units last reported `outboxDepth` = `depth` (benchmark markers).
    public func unitsReportingOutboxDepth(_ depth: Int) throws -> Int {
        try database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM unitState WHERE outboxDepth = ?", arguments: [depth]) ?? 0 }
    }

    /// Messages ignored because their body named another machine than their topic.
    public func ignoredMessages() throws -> [(machine: String, kind: String, count: Int)] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT machineId, kind, count FROM ignoredMessage ORDER BY machineId, kind").map {
                ($0["machineId"], $0["kind"], $0["count"])
            }
        }
    }
}
