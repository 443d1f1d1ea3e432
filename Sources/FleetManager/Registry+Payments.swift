import Foundation
import GRDB
import MessageSchema

/// What the payment server is told to do with a payment's authorisation.
public enum Settlement: String, Sendable, Codable, Hashable, CaseIterable {
    case capture, void, hold
}

/// A payment as the fleet recorded it.
public struct PaymentRecord: Sendable, Codable, Hashable {
    public var paymentId: String
    public var machineId: String
    public var userId: String?
    public var requestedAmount: Int?
    public var currency: String?
    public var issuedAt: Int?
    /// The unit's first decision (`credited`, `rejected`, `uncertain`); nil while none came.
    public var status: PaymentStatus?
    public var reason: String?
    public var creditedAmount: Int
    public var decidedAt: Int?
    public var duplicates: Int
    /// Nil while unknown (no result, no proof of no credit yet).
    public var settlement: Settlement?
    /// What settled it: `result`, `online_after_expiry`, or `operator:NAME`.
    public var settledBy: String?
    public var expiresAt: Int?

    /// When it happened for the ledger: issued, else decided (a unit's result for a payment the
    /// fleet never saw signed has no issue time).
    public var at: Int? { issuedAt ?? decidedAt }

    /// What it adds to revenue: what the unit credited, up to what was paid; nothing unless
    /// credited and backed by a completion signed with a fleet payment key (a unit's own
    /// claim is no revenue).
    public var revenue: Int {
        guard status == .credited, let requestedAmount else { return 0 }
        return min(creditedAmount, requestedAmount)
    }
}

/// Which payments: the ledger page, its CSV export, `payments list` and `report` all filter
/// with this, in SQL. A nil field does not filter.
public struct PaymentFilter: Sendable, Hashable {
    /// The unit's first decision; `pending` is none yet.
    public enum Status: String, Sendable, CaseIterable {
        case credited, rejected, uncertain, pending
    }

    /// What the payment server is told to do; `unknown` is nothing yet.
    public enum Settlement: String, Sendable, CaseIterable {
        case capture, void, hold, unknown
    }

    public var machineId: String?
    public var userId: String?
    public var status: Status?
    public var reason: String?
    public var settlement: Settlement?
    /// Unix milliseconds, inclusive.
    public var from: Int?
    /// Unix milliseconds, exclusive.
    public var to: Int?
    /// Held for review or unknown: what an operator may have to settle by hand.
    public var open = false

    public init(
        machineId: String? = nil, userId: String? = nil, status: Status? = nil, reason: String? = nil, settlement: Settlement? = nil,
        from: Int? = nil, to: Int? = nil, open: Bool = false
    ) {
        self.machineId = machineId
        self.userId = userId
        self.status = status
        self.reason = reason
        self.settlement = settlement
        self.from = from
        self.to = to
        self.open = open
    }

    /// Unix milliseconds when the UTC day `YYYY-MM-DD` begins (with `end`, when it ends); nil
    /// for a day that does not exist (2026-02-30 is not rolled over to March).
    public static func day(_ text: String, end: Bool = false) -> Int? {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        guard let date = formatter.date(from: text), formatter.string(from: date) == text else { return nil }
        return Int(date.timeIntervalSince1970 * 1000) + (end ? 86_400_000 : 0)
    }

    /// The time a payment is filed under (SQL); the `paymentRecord_at` index is on it.
    static let at = "COALESCE(issuedAt, decidedAt, updatedAt)"

    /// The WHERE clause and its arguments.
    var sql: (String, StatementArguments) {
        var clauses: [String] = []
        var arguments = StatementArguments()
        func add(_ clause: String, _ value: (any DatabaseValueConvertible)?) {
            clauses.append(clause)
            if let value { _ = arguments.append(contentsOf: [value]) }
        }
        if let machineId { add("machineId = ?", machineId) }
        if let userId { add("userId = ?", userId) }
        switch status {
        case .pending: add("status IS NULL", nil)
        case .some(let status): add("status = ?", status.rawValue)
        case nil: break
        }
        if let reason { add("reason = ?", reason) }
        switch settlement {
        case .unknown: add("settlement IS NULL", nil)
        case .some(let settlement): add("settlement = ?", settlement.rawValue)
        case nil: break
        }
        if open { add("(settlement IS NULL OR settlement = 'hold')", nil) }
        if let from { add("\(Self.at) >= ?", from) }
        if let to { add("\(Self.at) < ?", to) }
        return (clauses.isEmpty ? "1" : clauses.joined(separator: " AND "), arguments)
    }
}

/// Sums over the payments a filter selects, per currency (amounts in the currency's minor
/// unit, as the wire protocol carries them).
public struct LedgerTotals: Sendable, Codable, Hashable {
    /// ISO 4217 code; empty for a unit's result the fleet never saw a signed completion for.
    public var currency: String
    public var payments: Int
    public var credited: Int
    public var rejected: Int
    public var uncertain: Int
    public var pending: Int
    /// What customers paid (signed completions).
    public var requested: Int
    /// What counts as revenue (see `PaymentRecord.revenue`).
    public var revenue: Int
}

/// Revenue per machine and day (UTC), per currency: `report machines` and the console's charts.
public struct MachineReportRow: Sendable, Codable, Hashable {
    public var machineId: String
    public var day: String
    public var currency: String
    public var revenue: Int
    public var credited: Int
    public var rejected: Int
    public var uncertain: Int
}

extension Registry {
    static func registerLedgerMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v8-ledger") { db in
            // The ledger pages and exports by time: an index on the expression they sort by.
            try db.execute(
                sql: """
                    CREATE INDEX paymentRecord_at ON paymentRecord(\(PaymentFilter.at), machineId, paymentId);
                    CREATE INDEX paymentRecord_status ON paymentRecord(status, reason);
                    """)
        }
    }

    static func paymentRecord(_ row: Row) -> PaymentRecord {
        PaymentRecord(
            paymentId: row["paymentId"], machineId: row["machineId"], userId: row["userId"], requestedAmount: row["requestedAmount"],
            currency: row["currency"], issuedAt: row["issuedAt"], status: (row["status"] as String?).flatMap(PaymentStatus.init(rawValue:)),
            reason: row["reason"], creditedAmount: row["creditedAmount"], decidedAt: row["decidedAt"], duplicates: row["duplicates"],
            settlement: (row["settlement"] as String?).flatMap(Settlement.init(rawValue:)), settledBy: row["settledBy"], expiresAt: row["expiresAt"])
    }

    /// The payments `filter` selects, oldest first; `limit` and `offset` page through them.
    public func payments(matching filter: PaymentFilter = PaymentFilter(), limit: Int? = nil, offset: Int = 0) throws -> [PaymentRecord] {
        let (clause, arguments) = filter.sql
        var all = arguments
        _ = all.append(contentsOf: [limit ?? -1, offset])
        return try database.read { db in
            try Row.fetchAll(
                db, sql: "SELECT * FROM paymentRecord WHERE \(clause) ORDER BY \(PaymentFilter.at), machineId, paymentId LIMIT ? OFFSET ?",
                arguments: all
            ).map(Self.paymentRecord)
        }
    }

    /// Every payment `filter` selects, oldest first, in batches of `batch` (each read on its
    /// own, so an export of millions neither holds the database nor its rows in memory).
    public func forEachPayment(matching filter: PaymentFilter, batch: Int = 2_000, _ body: ([PaymentRecord]) async throws -> Void) async throws {
        let (clause, arguments) = filter.sql
        var after: (at: Int, machine: String, payment: String)?
        while true {
            var all = arguments
            var keyset = ""
            if let after {
                keyset = " AND (\(PaymentFilter.at), machineId, paymentId) > (?, ?, ?)"
                _ = all.append(contentsOf: [after.at, after.machine, after.payment])
            }
            _ = all.append(contentsOf: [batch])
            let rows = try database.read { db in
                try Row.fetchAll(
                    db,
                    sql: """
                        SELECT *, \(PaymentFilter.at) AS filedAt FROM paymentRecord WHERE \(clause)\(keyset)
                        ORDER BY \(PaymentFilter.at), machineId, paymentId LIMIT ?
                        """, arguments: all)
            }
            guard let last = rows.last else { return }
            after = (last["filedAt"], last["machineId"], last["paymentId"])
            try await body(rows.map(Self.paymentRecord))
            if rows.count < batch { return }
        }
    }

    /// How many payments `filter` selects.
    public func paymentCount(matching filter: PaymentFilter) throws -> Int {
        let (clause, arguments) = filter.sql
        return try database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM paymentRecord WHERE \(clause)", arguments: arguments) ?? 0 }
    }

    /// The SQL for `PaymentRecord.revenue`.
    static let revenueSQL = "CASE WHEN status = 'credited' AND requestedAmount IS NOT NULL THEN MIN(creditedAmount, requestedAmount) ELSE 0 END"

    /// Totals per currency over what `filter` selects.
    public func ledgerTotals(matching filter: PaymentFilter) throws -> [LedgerTotals] {
        let (clause, arguments) = filter.sql
        return try database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT COALESCE(currency, '') AS currency, COUNT(*) AS payments,
                        COUNT(CASE WHEN status = 'credited' THEN 1 END) AS credited, COUNT(CASE WHEN status = 'rejected' THEN 1 END) AS rejected,
                        COUNT(CASE WHEN status = 'uncertain' THEN 1 END) AS uncertain, COUNT(CASE WHEN status IS NULL THEN 1 END) AS pending,
                        SUM(COALESCE(requestedAmount, 0)) AS requested, SUM(\(Self.revenueSQL)) AS revenue
                    FROM paymentRecord WHERE \(clause) GROUP BY 1 ORDER BY 1
                    """, arguments: arguments
            ).map { row in
                LedgerTotals(
                    currency: row["currency"], payments: row["payments"], credited: row["credited"], rejected: row["rejected"],
                    uncertain: row["uncertain"], pending: row["pending"], requested: row["requested"], revenue: row["revenue"])
            }
        }
    }

    /// Per machine, day (UTC) and currency: payments backed by a signed completion (a unit's
    /// own claim is in none), as `report machines` prints them.
    public func machineDays(matching filter: PaymentFilter = PaymentFilter()) throws -> [MachineReportRow] {
        let (clause, arguments) = filter.sql
        return try database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT machineId, strftime('%Y-%m-%d', \(PaymentFilter.at) / 1000, 'unixepoch') AS day, COALESCE(currency, '') AS currency,
                        SUM(\(Self.revenueSQL)) AS revenue, COUNT(CASE WHEN status = 'credited' THEN 1 END) AS credited,
                        COUNT(CASE WHEN status = 'rejected' THEN 1 END) AS rejected, COUNT(CASE WHEN status = 'uncertain' THEN 1 END) AS uncertain
                    FROM paymentRecord WHERE requestedAmount IS NOT NULL AND \(clause)
                    GROUP BY machineId, day, currency ORDER BY machineId, day, currency
                    """, arguments: arguments
            ).map { row in
                MachineReportRow(
                    machineId: row["machineId"], day: row["day"], currency: row["currency"], revenue: row["revenue"], credited: row["credited"],
                    rejected: row["rejected"], uncertain: row["uncertain"])
            }
        }
    }

    /// An operator settles a held or unknown payment by hand (after review).
    public func settleByOperator(machine: MachineID, payment: PaymentID, settlement: Settlement, operator name: String, now: Int) throws -> Bool {
        try database.write { db in
            try db.execute(
                sql: """
                    UPDATE paymentRecord SET settlement = ?, settledBy = ?, updatedAt = ?
                    WHERE machineId = ? AND paymentId = ? AND (settlement IS NULL OR settlement = 'hold')
                    """, arguments: [settlement.rawValue, "operator:\(name)", now, machine.rawValue, payment.rawValue])
            guard db.changesCount > 0 else { return false }
            _ = try Self.resolve(machine, .uncertain, subject: payment.rawValue, resolution: "settled (\(settlement.rawValue)) by operator:\(name)", now: now, db)
            return true
        }
    }
}
