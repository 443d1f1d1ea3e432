import Foundation

/// Per user ID: the customer information the operator collects.
public struct CustomerReportRow: Sendable, Codable, Hashable {
    public var userId: String
    /// Credited payments.
    public var payments: Int
    public var amount: Int
    public var machines: [String]
    public var firstSeen: Int
    public var lastSeen: Int
}

/// Per machine and day (UTC).
public struct MachineReportRow: Sendable, Codable, Hashable {
    public var machineId: String
    public var day: String
    public var revenue: Int
    public var credited: Int
    public var rejected: Int
    public var uncertain: Int
}

/// `fleet-manager report`: built from the payments `serve` recorded. Only payments backed by
/// a completion signed with a fleet payment key count: a unit's result for a payment nobody
/// sent it (its own claim) is no revenue; what a unit credited counts up to what was paid.
public enum FleetReports {
    /// The amount a recorded payment adds to revenue.
    static func revenue(_ payment: PaymentRecord) -> Int? {
        guard payment.status == "credited", let requested = payment.requestedAmount else { return nil }
        return min(payment.creditedAmount, requested)
    }

    public static func customers(_ payments: [PaymentRecord]) -> [CustomerReportRow] {
        var rows: [String: CustomerReportRow] = [:]
        for payment in payments {
            guard let user = payment.userId else { continue }
            let at = payment.issuedAt ?? payment.decidedAt ?? 0
            var row = rows[user] ?? CustomerReportRow(userId: user, payments: 0, amount: 0, machines: [], firstSeen: at, lastSeen: at)
            if let amount = revenue(payment) {
                row.payments += 1
                row.amount += amount
            }
            if !row.machines.contains(payment.machineId) { row.machines.append(payment.machineId) }
            row.firstSeen = min(row.firstSeen, at)
            row.lastSeen = max(row.lastSeen, at)
            rows[user] = row
        }
        return rows.values.map { var r = $0; r.machines.sort(); return r }.sorted { $0.userId < $1.userId }
    }

    public static func machines(_ payments: [PaymentRecord]) -> [MachineReportRow] {
        var rows: [String: MachineReportRow] = [:]
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        for payment in payments where payment.requestedAmount != nil {
            let at = payment.issuedAt ?? payment.decidedAt ?? 0
            let day = formatter.string(from: Date(timeIntervalSince1970: Double(at) / 1000))
            let key = payment.machineId + "|" + day
            var row = rows[key] ?? MachineReportRow(machineId: payment.machineId, day: day, revenue: 0, credited: 0, rejected: 0, uncertain: 0)
            switch payment.status {
            case "credited":
                row.credited += 1
                row.revenue += revenue(payment) ?? 0
            case "rejected": row.rejected += 1
            case "uncertain": row.uncertain += 1
            default: break
            }
            rows[key] = row
        }
        return rows.values.sorted { ($0.machineId, $0.day) < ($1.machineId, $1.day) }
    }

    /// Renders rows as an aligned table, CSV (RFC 4180 quoting) or JSON.
    public static func render(headers: [String], rows: [[String]], format: String) -> String {
        switch format {
        case "csv":
            func quote(_ field: String) -> String {
                field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) ? "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : field
            }
            return ([headers] + rows).map { $0.map(quote).joined(separator: ",") }.joined(separator: "\n") + "\n"
        default:
            let widths = headers.indices.map { i in ([headers] + rows).map { $0[i].count }.max() ?? 0 }
            return ([headers] + rows).map { row in
                row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ")
                    .trimmingCharacters(in: .whitespaces)
            }.joined(separator: "\n") + "\n"
        }
    }
}
