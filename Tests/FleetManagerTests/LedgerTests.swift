import Foundation
import GRDB
import MessageSchema
import Testing

@testable import FleetManager

/// The payments ledger: the SQL filter, paging, export batches, totals and per-day sums against
/// an oracle written here in plain Swift over random payments; the CSV a spreadsheet opens.
@Suite struct LedgerTests {
    static let day = 86_400_000
    /// 2026-11-01T00:00:00Z
    static let start = 1_793_491_200_000

    /// Random payments: three currencies and units' own claims (no currency), every decision and
    /// settlement, user IDs a spreadsheet would run as formulas or that need quoting.
    static func randomPayments(_ count: Int, seed: UInt64) -> [PaymentRecord] {
        var generator = SeededGenerator(seed: seed)
        let machines = ["laundry-01", "laundry-02", "wash-01", "vend-01"]
        let users = ["alice", "=HYPERLINK(\"http://x\",\"y\")", "+1 555", "-2+3", "@sum(1)", "comma, user", "line\nbreak", "Zoë", nil]
        let statuses: [String?] = ["credited", "credited", "rejected", "uncertain", nil]
        var out: [PaymentRecord] = []
        for i in 0..<count {
            let signed = Int.random(in: 0..<10, using: &generator) > 0
            let status = statuses.randomElement(using: &generator)!
            let requested = Int.random(in: 1...50, using: &generator) * 100
            let at = start + Int.random(in: 0..<(20 * day), using: &generator)
            out.append(
                PaymentRecord(
                    paymentId: "p-\(i)", machineId: machines.randomElement(using: &generator)!, userId: signed ? users.randomElement(using: &generator)! : nil,
                    requestedAmount: signed ? requested : nil, currency: signed ? ["JPY", "EUR", "KWD"].randomElement(using: &generator)! : nil,
                    issuedAt: signed ? at : nil, status: (signed ? status : (status ?? "credited")).flatMap(PaymentStatus.init(rawValue:)),
                    reason: status == "rejected" ? ["expired", "inhibited"].randomElement(using: &generator)! : nil,
                    // Sometimes more than was paid (the revenue caps it), sometimes less (a cut train).
                    creditedAmount: status == "credited" || !signed ? requested + [-100, 0, 0, 100].randomElement(using: &generator)! : 0,
                    decidedAt: status == nil ? nil : at + 500, duplicates: 0,
                    settlement: (status == "credited" ? "capture" : status == "rejected" ? "void" : status == "uncertain" ? ["hold", "capture"].randomElement(using: &generator)! : nil)
                        .flatMap(Settlement.init(rawValue:)),
                    settledBy: status == nil ? nil : "result", expiresAt: signed ? at + 60_000 : nil))
        }
        return out
    }

    static func registry(with payments: [PaymentRecord]) throws -> Registry {
        let directory = NSTemporaryDirectory() + "pb-ledger-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let registry = try Registry(path: directory + "/registry.sqlite")
        try registry.database.write { db in
            for p in payments {
                try db.execute(
                    sql: """
                        INSERT INTO paymentRecord (paymentId, machineId, userId, requestedAmount, currency, issuedAt, expiresAt, status, reason,
                            creditedAmount, decidedAt, duplicates, updatedAt, settlement, settledBy)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        p.paymentId, p.machineId, p.userId, p.requestedAmount, p.currency, p.issuedAt, p.expiresAt, p.status?.rawValue, p.reason, p.creditedAmount,
                        p.decidedAt, p.duplicates, (p.issuedAt ?? p.decidedAt ?? start), p.settlement?.rawValue, p.settledBy,
                    ])
            }
        }
        return registry
    }

    /// The oracle: what `filter` means, in Swift.
    static func matches(_ p: PaymentRecord, _ f: PaymentFilter) -> Bool {
        let at = p.issuedAt ?? p.decidedAt ?? start
        if let m = f.machineId, p.machineId != m { return false }
        if let u = f.userId, p.userId != u { return false }
        if let s = f.status, (p.status?.rawValue ?? "pending") != s.rawValue { return false }
        if let r = f.reason, p.reason != r { return false }
        if let s = f.settlement, (p.settlement?.rawValue ?? "unknown") != s.rawValue { return false }
        if f.open, !(p.settlement == nil || p.settlement == .hold) { return false }
        if let from = f.from, at < from { return false }
        if let to = f.to, at >= to { return false }
        return true
    }

    static let filters: [PaymentFilter] = [
        PaymentFilter(), PaymentFilter(machineId: "wash-01"), PaymentFilter(userId: "=HYPERLINK(\"http://x\",\"y\")"),
        PaymentFilter(status: .credited), PaymentFilter(status: .pending), PaymentFilter(reason: "expired"), PaymentFilter(settlement: .unknown),
        PaymentFilter(settlement: .hold), PaymentFilter(open: true), PaymentFilter(from: start + 5 * day, to: start + 6 * day),
        PaymentFilter(machineId: "laundry-01", status: .credited, from: start + 2 * day),
    ]

    @Test func theFilterSelectsWhatItSaysPagedAndInBatches() async throws {
        let all = Self.randomPayments(600, seed: 7)
        let registry = try Self.registry(with: all)
        for filter in Self.filters {
            let expected = Set(all.filter { Self.matches($0, filter) }.map(\.paymentId))
            let got = try registry.payments(matching: filter)
            #expect(Set(got.map(\.paymentId)) == expected, "\(filter)")
            #expect(got.count == expected.count)
            #expect(try registry.paymentCount(matching: filter) == expected.count)
            // Oldest first, and pages and export batches give the same sequence.
            let times = got.map { $0.issuedAt ?? $0.decidedAt ?? Self.start }
            #expect(times == times.sorted(), "\(filter)")
            var paged: [String] = []
            var offset = 0
            while true {
                let page = try registry.payments(matching: filter, limit: 37, offset: offset)
                paged += page.map(\.paymentId)
                offset += 37
                if page.count < 37 { break }
            }
            #expect(paged == got.map(\.paymentId))
            var batched: [String] = []
            try await registry.forEachPayment(matching: filter, batch: 41) { batched += $0.map(\.paymentId) }
            #expect(batched == got.map(\.paymentId), "\(filter)")
        }
    }

    @Test func totalsAndPerDaySumsAgreeWithTheOracleAndEachOther() throws {
        let all = Self.randomPayments(800, seed: 11)
        let registry = try Self.registry(with: all)
        for filter in Self.filters {
            let selected = all.filter { Self.matches($0, filter) }
            let totals = try registry.ledgerTotals(matching: filter)
            let byCurrency = Dictionary(grouping: selected) { $0.currency ?? "" }
            #expect(Set(totals.map(\.currency)) == Set(byCurrency.keys), "\(filter)")
            for total in totals {
                let mine = byCurrency[total.currency] ?? []
                let revenue = mine.reduce(0) { sum, p in
                    sum + (p.status == .credited && p.requestedAmount != nil ? min(p.creditedAmount, p.requestedAmount!) : 0)
                }
                #expect(total.payments == mine.count)
                #expect(total.revenue == revenue, "\(total.currency) \(filter)")
                #expect(total.credited == mine.filter { $0.status == .credited }.count)
                #expect(total.pending == mine.filter { $0.status == nil }.count)
                #expect(total.requested == mine.reduce(0) { $0 + ($1.requestedAmount ?? 0) })
                // A unit's own claim is never revenue.
                if total.currency.isEmpty { #expect(total.revenue == 0) }
            }
            // `report machines` (per machine and day) adds up to the ledger's totals.
            let days = try registry.machineDays(matching: filter)
            for total in totals where !total.currency.isEmpty {
                #expect(days.filter { $0.currency == total.currency }.reduce(0) { $0 + $1.revenue } == total.revenue, "\(filter)")
                #expect(days.filter { $0.currency == total.currency }.reduce(0) { $0 + $1.credited } == total.credited)
            }
            #expect(!days.contains { $0.currency.isEmpty }, "units' own claims are in no report")
            for row in days {
                let mine = selected.filter {
                    $0.machineId == row.machineId && $0.currency == row.currency && $0.requestedAmount != nil
                        && FleetReports.isoTime($0.issuedAt!).hasPrefix(row.day)
                }
                #expect(row.revenue == mine.reduce(0) { $0 + $1.revenue })
            }
        }
    }

    @Test func theCSVOpensInASpreadsheetAsTheLedgerSaysAndRunsNoFormula() async throws {
        let all = Self.randomPayments(300, seed: 3)
        let registry = try Self.registry(with: all)
        var csv = CSVRows.line(FleetReports.ledgerHeader)
        try await registry.forEachPayment(matching: PaymentFilter(), batch: 50) { csv += $0.map(FleetReports.ledgerLine).joined() }
        let rows = try CSVRows.parse(csv)
        #expect(rows.first?.fields == FleetReports.ledgerHeader)
        let records = Array(rows.dropFirst())
        #expect(records.count == all.count)
        let column = Dictionary(uniqueKeysWithValues: FleetReports.ledgerHeader.enumerated().map { ($1, $0) })
        let byId = Dictionary(uniqueKeysWithValues: all.map { ($0.paymentId, $0) })
        var revenue: [String: Int] = [:]
        for row in records {
            let fields = row.fields
            let payment = try #require(byId[fields[column["payment_id"]!]])
            // No field starts with what a spreadsheet runs; the user ID is there behind an apostrophe.
            for field in fields { #expect(!("=+@".contains(field.first ?? " ")) && !(field.first == "-" && Int(field) == nil), "\(fields)") }
            let user = fields[column["user_id"]!]
            #expect((user.hasPrefix("'") ? String(user.dropFirst()) : user) == (payment.userId ?? ""))
            #expect(fields[column["currency"]!] == (payment.currency ?? ""))
            revenue[payment.currency ?? "", default: 0] += Int(fields[column["revenue"]!])!
        }
        let totals = try registry.ledgerTotals(matching: PaymentFilter())
        #expect(Dictionary(uniqueKeysWithValues: totals.map { ($0.currency, $0.revenue) }) == revenue)
    }

    @Test func aFieldIsQuotedAndDefusedAsNeeded() {
        #expect(CSVRows.field("plain") == "plain")
        #expect(CSVRows.field("=1+2") == "'=1+2")
        #expect(CSVRows.field("@SUM(A1)") == "'@SUM(A1)")
        #expect(CSVRows.field("+33 1 23") == "'+33 1 23")
        #expect(CSVRows.field("-5") == "-5", "a number stays a number")
        #expect(CSVRows.field("-5+1") == "'-5+1")
        #expect(CSVRows.field("\tx") == "'\tx")
        #expect(CSVRows.field("a,b") == "\"a,b\"")
        #expect(CSVRows.field("=\"x\",1") == "\"'=\"\"x\"\",1\"")
        #expect(CSVRows.field("a;b") == "\"a;b\"", "also for spreadsheets that read ';'")
        #expect(CSVRows.field("two\nlines") == "\"two\nlines\"")
    }

    @Test func moneyIsShownInTheCurrencysOwnUnit() {
        #expect(Money.format(1_234_567, currency: "JPY") == "1,234,567 JPY")
        #expect(Money.format(123_456, currency: "EUR") == "1,234.56 EUR")
        #expect(Money.format(5, currency: "EUR") == "0.05 EUR")
        #expect(Money.format(1_005, currency: "KWD") == "1.005 KWD")
        #expect(Money.format(0, currency: "USD") == "0.00 USD")
        #expect(Money.format(-250, currency: "USD") == "-2.50 USD")
        #expect(Money.format(300, currency: "") == "300")
    }

    @Test func daysThatDoNotExistAreRefused() {
        #expect(PaymentFilter.day("2026-11-01") == Self.start)
        #expect(PaymentFilter.day("2026-11-01", end: true) == Self.start + Self.day)
        for text in ["2026-02-30", "2026-13-01", "yesterday", "2026-1-1", ""] { #expect(PaymentFilter.day(text) == nil, "\(text)") }
    }
}

/// SplitMix64: the same random payments on every run.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
