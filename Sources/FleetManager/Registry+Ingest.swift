import Foundation
import GRDB
import MessageSchema


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
}
