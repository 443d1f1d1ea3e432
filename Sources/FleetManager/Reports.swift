import Foundation

/// Per user ID and currency: the customer information the operator collects.
public struct CustomerReportRow: Sendable, Codable, Hashable {
    public var userId: String
    public var currency: String
    /// Credited payments.
    public var payments: Int
    public var amount: Int
    public var machines: [String]
    public var firstSeen: Int
    public var lastSeen: Int
}

/// `fleet-manager report`: built from the payments `serve` recorded. Only payments backed by
/// a completion signed with a fleet payment key count: a unit's result for a payment nobody
/// sent it (its own claim) is no revenue; what a unit credited counts up to what was paid
/// (`PaymentRecord.revenue`). Per machine and day, the registry sums in SQL
/// (`Registry.machineDays`).
public enum FleetReports {
    public static func customers(_ payments: [PaymentRecord]) -> [CustomerReportRow] {
        var rows: [String: CustomerReportRow] = [:]
        for payment in payments {
            guard let user = payment.userId else { continue }
            let at = payment.at ?? 0
            let currency = payment.currency ?? ""
            let key = user + "|" + currency
            var row = rows[key] ?? CustomerReportRow(userId: user, currency: currency, payments: 0, amount: 0, machines: [], firstSeen: at, lastSeen: at)
            if payment.status == .credited, payment.requestedAmount != nil {
                row.payments += 1
                row.amount += payment.revenue
            }
            if !row.machines.contains(payment.machineId) { row.machines.append(payment.machineId) }
            row.firstSeen = min(row.firstSeen, at)
            row.lastSeen = max(row.lastSeen, at)
            rows[key] = row
        }
        return rows.values.map { var r = $0; r.machines.sort(); return r }.sorted { ($0.userId, $0.currency) < ($1.userId, $1.currency) }
    }

    /// `report customers` as a table: headers and rows.
    public static func customerTable(_ rows: [CustomerReportRow]) -> (headers: [String], rows: [[String]]) {
        (
            ["USER", "CURRENCY", "PAYMENTS", "AMOUNT", "MACHINES", "FIRST SEEN", "LAST SEEN"],
            rows.map { [$0.userId, $0.currency, "\($0.payments)", "\($0.amount)", $0.machines.joined(separator: " "), isoTime($0.firstSeen), isoTime($0.lastSeen)] }
        )
    }

    /// `report machines` as a table: headers and rows.
    public static func machineTable(_ rows: [MachineReportRow]) -> (headers: [String], rows: [[String]]) {
        (
            ["MACHINE", "DAY", "CURRENCY", "REVENUE", "CREDITED", "REJECTED", "UNCERTAIN"],
            rows.map { [$0.machineId, $0.day, $0.currency, "\($0.revenue)", "\($0.credited)", "\($0.rejected)", "\($0.uncertain)"] }
        )
    }

    /// The ledger's CSV columns (amounts in the currency's minor unit).
    public static let ledgerHeader = [
        "payment_id", "machine_id", "user_id", "issued_at", "decided_at", "currency", "requested", "credited", "revenue", "status", "reason",
        "settlement", "settled_by",
    ]

    /// One payment as a ledger CSV record.
    public static func ledgerLine(_ payment: PaymentRecord) -> String {
        CSVRows.line([
            payment.paymentId, payment.machineId, payment.userId ?? "", payment.issuedAt.map(isoTime) ?? "", payment.decidedAt.map(isoTime) ?? "",
            payment.currency ?? "", payment.requestedAmount.map(String.init) ?? "", String(payment.creditedAmount), String(payment.revenue),
            payment.status?.rawValue ?? "pending", payment.reason ?? "", payment.settlement?.rawValue ?? "unknown", payment.settledBy ?? "",
        ])
    }

    /// UTC, to the millisecond: `2026-11-30T12:00:00.123Z`.
    public static func isoTime(_ ms: Int) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    /// Renders rows as an aligned table or CSV (RFC 4180 quoting, formulas defused).
    public static func render(headers: [String], rows: [[String]], format: String) -> String {
        switch format {
        case "csv":
            return ([headers] + rows).map(CSVRows.line).joined()
        default:
            let widths = headers.indices.map { i in ([headers] + rows).map { $0[i].count }.max() ?? 0 }
            return ([headers] + rows).map { row in
                row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                    .trimmingCharacters(in: .whitespaces)
            }.joined(separator: "\n") + "\n"
        }
    }
}
