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

/// Reading what units are: the fleet page, the live stream, `devices`, the machine page.
extension Registry {

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
