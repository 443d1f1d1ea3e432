import FleetManager
import Foundation
import MessageSchema

/// The payments ledger and the revenue charts: the same filter (`PaymentFilter`), the same
/// SQL and the same CSV lines as `fleet-manager payments list` and `report`.
extension ConsolePages {
    /// A ledger request as the browser sent it: the filter, the page, and what was wrong with it.
    struct LedgerQuery {
        var filter = PaymentFilter()
        /// The fields as given (to fill the form again and build links).
        var fields: [String: String] = [:]
        var page = 1
        var problems: [String] = []
        static let pageSize = 100
        static let names = ["machine", "user", "status", "reason", "settlement", "from", "to", "open"]

        init(_ parameters: [String: String]) {
            for name in Self.names {
                guard let value = parameters[name]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { continue }
                guard value.utf8.count <= 128 else {
                    problems.append("\(name) is too long (at most 128 characters)")
                    continue
                }
                fields[name] = value
            }
            filter.machineId = fields["machine"]
            filter.userId = fields["user"]
            filter.reason = fields["reason"]
            filter.open = fields["open"] == "1"
            if let status = fields["status"] {
                filter.status = PaymentFilter.Status(rawValue: status)
                if filter.status == nil { problems.append("status must be one of \(PaymentFilter.Status.allCases.map(\.rawValue).joined(separator: ", "))") }
            }
            if let settlement = fields["settlement"] {
                filter.settlement = PaymentFilter.Settlement(rawValue: settlement)
                if filter.settlement == nil {
                    problems.append("settlement must be one of \(PaymentFilter.Settlement.allCases.map(\.rawValue).joined(separator: ", "))")
                }
            }
            for (name, end) in [("from", false), ("to", true)] {
                guard let text = fields[name] else { continue }
                guard let ms = PaymentFilter.day(text, end: end) else {
                    problems.append("\(name) '\(text)' is not a day (YYYY-MM-DD)")
                    continue
                }
                if end { filter.to = ms } else { filter.from = ms }
            }
            if let from = filter.from, let to = filter.to, from >= to { problems.append("from is after to") }
            page = max(1, parameters["page"].flatMap(Int.init) ?? 1)
        }

        /// The query string for the same filter (and `extra`).
        func link(_ path: String, _ extra: [String: String] = [:]) -> String {
            let all = fields.merging(extra) { $1 }
            let query = all.keys.sorted().map { "\($0)=\(all[$0]!.addingPercentEncoding(withAllowedCharacters: .urlQueryValue) ?? "")" }
            return query.isEmpty ? path : path + "?" + query.joined(separator: "&")
        }
    }

    static func money(_ amount: Int, _ currency: String) -> String { Money.format(amount, currency: currency) }

    static func totalsTable(_ totals: [LedgerTotals]) -> String {
        let rows: String = totals.map { t -> String in
            """
            <tr data-currency="\(escape(t.currency))"><td>\(t.currency.isEmpty ? "(none: units' own claims)" : escape(t.currency))</td><td data-field="payments">\(t.payments)</td>\
            <td>\(t.credited)</td><td>\(t.rejected)</td><td>\(t.uncertain)</td><td>\(t.pending)</td>\
            <td>\(money(t.requested, t.currency))</td><td data-field="revenue" data-minor="\(t.revenue)">\(money(t.revenue, t.currency))</td></tr>
            """
        }.joined()
        return """
            <table id="totals"><thead><tr><th>Currency</th><th>Payments</th><th>Credited</th><th>Rejected</th><th>Uncertain</th><th>Pending</th><th>Paid</th><th>Revenue</th></tr></thead>
            <tbody>\(rows.isEmpty ? "<tr><td colspan=\"8\" class=\"muted\">no payments match</td></tr>" : rows)</tbody></table>
            """
    }

    static func ledgerFilters(_ query: LedgerQuery, action: String, full: Bool) -> String {
        func input(_ name: String, _ placeholder: String, type: String = "text") -> String {
            "<input name=\"\(name)\" id=\"filter-\(name)\" type=\"\(type)\" placeholder=\"\(placeholder)\" value=\"\(escape(query.fields[name] ?? ""))\">"
        }
        func select(_ name: String, _ values: [String], _ any: String) -> String {
            let options: String = ([""] + values).map { value -> String in
                "<option value=\"\(value)\"\(value == (query.fields[name] ?? "") ? " selected" : "")>\(value.isEmpty ? any : value)</option>"
            }.joined()
            return "<select name=\"\(name)\" id=\"filter-\(name)\">\(options)</select>"
        }
        var fields = [input("machine", "machine ID"), input("from", "from", type: "date"), input("to", "to", type: "date")]
        if full {
            fields.insert(input("user", "user ID"), at: 1)
            fields += [
                select("status", PaymentFilter.Status.allCases.map(\.rawValue), "any decision"), input("reason", "reason"),
                select("settlement", PaymentFilter.Settlement.allCases.map(\.rawValue), "any settlement"),
                "<label><input type=\"checkbox\" name=\"open\" value=\"1\" id=\"filter-open\"\(query.filter.open ? " checked" : "")> to settle</label>",
            ]
        }
        let problems = query.problems.map { "<p class=\"error\">\(escape($0))</p>" }.joined()
        return "<form class=\"filters\" method=\"get\" action=\"\(action)\">\(fields.joined())<button id=\"filter\">Filter</button></form>\(problems)"
    }

    static func payments(
        _ records: [PaymentRecord], totals: [LedgerTotals], count: Int, query: LedgerQuery, session: OperatorSession
    ) -> String {
        let canSettle = session.account.role >= .operator
        let back = query.link("/payments", query.page > 1 ? ["page": String(query.page)] : [:])
        let rows: String = records.map { p -> String in
            var settle = escape(p.settlement?.rawValue ?? "unknown") + (p.settledBy.map { " <span class=\"muted\">(\(escape($0)))</span>" } ?? "")
            if canSettle, p.settlement == nil || p.settlement == .hold {
                settle += ["capture", "void"].map { action -> String in
                    """
                    <form method="post" action="/payments/settle" class="inline"><input type="hidden" name="csrf" value="\(session.csrf)">\
                    <input type="hidden" name="machine" value="\(escape(p.machineId))"><input type="hidden" name="payment" value="\(escape(p.paymentId))">\
                    <input type="hidden" name="back" value="\(escape(back))">\
                    <button name="action" value="\(action)" id="\(action)-\(escape(p.paymentId))">\(action == "capture" ? "Capture" : "Void")</button></form>
                    """
                }.joined()
            }
            let currency = p.currency ?? ""
            return """
                <tr id="payment-\(escape(p.paymentId))"><td>\(time(p.at))</td><td>\(escape(p.paymentId))</td>\
                <td><a href="\(escape(query.link("/payments", ["machine": p.machineId])))">\(escape(p.machineId))</a></td>\
                <td>\(p.userId.map { "<a href=\"\(escape(query.link("/payments", ["user": $0])))\">\(escape($0))</a>" } ?? "–")</td>\
                <td>\(p.requestedAmount.map { money($0, currency) } ?? "–")</td><td>\(money(p.creditedAmount, currency))</td>\
                <td>\(escape(p.status?.rawValue ?? "pending"))</td><td>\(escape(p.reason ?? "–"))</td><td>\(settle)</td></tr>
                """
        }.joined(separator: "\n")
        let pages = max(1, (count + LedgerQuery.pageSize - 1) / LedgerQuery.pageSize)
        return page(
            title: "Payments", session: session, here: "/payments",
            body: """
                \(ledgerFilters(query, action: "/payments", full: true))
                <h2>Totals</h2>\(totalsTable(totals))
                <p><a class="button" id="export" href="\(escape(query.link("/payments.csv")))" download>Export CSV</a>
                <span class="muted">every matching payment; amounts in minor units, a currency column, times in UTC</span></p>
                <table id="ledger"><thead><tr><th>When</th><th>Payment</th><th>Machine</th><th>User</th><th>Paid</th><th>Credited</th><th>Decision</th><th>Reason</th><th>Settlement</th></tr></thead>
                <tbody>\(rows.isEmpty ? "<tr><td colspan=\"9\" class=\"muted\">no payments match</td></tr>" : rows)</tbody></table>
                <p class="pages">\(count) payment(s) · page \(query.page) of \(pages)
                \(query.page > 1 ? "<a href=\"\(escape(query.link("/payments", ["page": String(query.page - 1)])))\">previous</a>" : "")
                \(query.page < pages ? "<a id=\"next\" href=\"\(escape(query.link("/payments", ["page": String(query.page + 1)])))\">next</a>" : "")</p>
                """)
    }

    /// Revenue per day and per machine, one pair of charts per currency.
    static func revenue(_ rows: [MachineReportRow], totals: [LedgerTotals], days: [String], query: LedgerQuery, session: OperatorSession) -> String {
        let currencies = Set(rows.map(\.currency)).sorted()
        var charts = ""
        for currency in currencies {
            let mine = rows.filter { $0.currency == currency }
            var byDay: [String: Int] = [:]
            var byMachine: [String: Int] = [:]
            for row in mine {
                byDay[row.day, default: 0] += row.revenue
                byMachine[row.machineId, default: 0] += row.revenue
            }
            let dayBars = (days.isEmpty ? byDay.keys.sorted() : days).map { (label: $0, value: byDay[$0] ?? 0) }
            var machineBars = byMachine.map { (label: $0.key, value: $0.value) }.sorted { ($1.value, $0.label) < ($0.value, $1.label) }
            if machineBars.count > 20 {
                let rest = machineBars.dropFirst(19).reduce(0) { $0 + $1.value }
                machineBars = Array(machineBars.prefix(19)) + [(label: "\(machineBars.count - 19) others", value: rest)]
            }
            let id = currency.isEmpty ? "none" : currency
            charts += """
                <section class="chart" id="revenue-\(escape(id))"><h2>\(currency.isEmpty ? "No currency" : escape(currency)): \(money(byDay.values.reduce(0, +), currency))</h2>
                <h3>Per day (UTC)</h3>\(ConsoleCharts.columns(id: "days-\(id)", bars: dayBars, currency: currency))
                <h3>Per machine</h3>\(ConsoleCharts.bars(id: "machines-\(id)", bars: machineBars, currency: currency))
                <details><summary>As a table</summary><table class="data"><thead><tr><th>Machine</th><th>Day</th><th>Revenue</th><th>Credited</th><th>Rejected</th><th>Uncertain</th></tr></thead><tbody>
                \(mine.map { "<tr><td>\(escape($0.machineId))</td><td>\($0.day)</td><td>\(money($0.revenue, currency))</td><td>\($0.credited)</td><td>\($0.rejected)</td><td>\($0.uncertain)</td></tr>" }.joined())
                </tbody></table></details></section>
                """
        }
        return page(
            title: "Revenue", session: session, here: "/revenue",
            body: """
                \(ledgerFilters(query, action: "/revenue", full: false))
                <p class="muted">Revenue is what units credited, up to what was paid, for payments signed with a fleet payment key; the same sums as <code>fleet-manager report machines</code>.</p>
                \(totalsTable(totals))
                \(charts.isEmpty ? "<p class=\"muted\" id=\"no-revenue\">No revenue in this period.</p>" : charts)
                """)
    }
}

/// Server-rendered SVG charts: no script, no library; each bar has its value as a tooltip.
enum ConsoleCharts {
    static func axisValue(_ value: Int, _ currency: String) -> String { Money.format(value, currency: currency) }

    /// Vertical bars over a sequence (days).
    /// `plain`: the values are counts, not money.
    static func columns(id: String, bars: [(label: String, value: Int)], currency: String, plain: Bool = false) -> String {
        let axisValue: (Int, String) -> String = plain ? { value, _ in "\(value)" } : { ConsoleCharts.axisValue($0, $1) }
        let width = 760.0, height = 220.0, left = 90.0, right = 10.0, top = 10.0, bottom = 34.0
        let plotWidth = width - left - right, plotHeight = height - top - bottom
        let top1 = Double(max(1, bars.map(\.value).max() ?? 1))
        let step = plotWidth / Double(max(1, bars.count))
        let every = max(1, Int((Double(bars.count) / 10).rounded(.up)))
        var svg = "<svg id=\"\(ConsolePages.escape(id))\" class=\"chart\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">"
        for fraction in [0.0, 0.5, 1.0] {
            let y = top + plotHeight * (1 - fraction)
            svg += "<line x1=\"\(left)\" x2=\"\(width - right)\" y1=\"\(y)\" y2=\"\(y)\" stroke=\"#e3e6ea\"/>"
            svg += "<text x=\"\(left - 6)\" y=\"\(y + 4)\" text-anchor=\"end\" font-size=\"11\">\(ConsolePages.escape(axisValue(Int(top1 * fraction), currency)))</text>"
        }
        for (i, bar) in bars.enumerated() {
            let h = plotHeight * Double(bar.value) / top1
            let x = left + Double(i) * step
            svg += "<rect x=\(q(x + step * 0.12)) y=\(q(top + plotHeight - h)) width=\(q(max(1, step * 0.76))) height=\(q(h)) fill=\"#1f6feb\" data-label=\"\(ConsolePages.escape(bar.label))\" data-value=\"\(bar.value)\"><title>\(ConsolePages.escape(bar.label)): \(ConsolePages.escape(axisValue(bar.value, currency)))</title></rect>"
            if i % every == 0 {
                svg += "<text x=\(q(x + step / 2)) y=\(q(height - bottom + 16)) text-anchor=\"middle\" font-size=\"11\">\(ConsolePages.escape(String(bar.label.suffix(5))))</text>"
            }
        }
        return svg + "</svg>"
    }

    /// Horizontal bars, one per label (machines).
    static func bars(id: String, bars: [(label: String, value: Int)], currency: String) -> String {
        let width = 760.0, left = 150.0, right = 110.0, row = 20.0
        let height = row * Double(max(1, bars.count)) + 8
        let top1 = Double(max(1, bars.map(\.value).max() ?? 1))
        var svg = "<svg id=\"\(ConsolePages.escape(id))\" class=\"chart\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">"
        for (i, bar) in bars.enumerated() {
            let y = 4 + Double(i) * row
            let w = (width - left - right) * Double(bar.value) / top1
            svg += "<text x=\(q(left - 6)) y=\(q(y + 14)) text-anchor=\"end\" font-size=\"12\">\(ConsolePages.escape(String(bar.label.prefix(22))))</text>"
            svg += "<rect x=\(q(left)) y=\(q(y + 3)) width=\(q(max(1, w))) height=\(q(row - 6)) fill=\"#0a7b36\" data-label=\"\(ConsolePages.escape(bar.label))\" data-value=\"\(bar.value)\"><title>\(ConsolePages.escape(bar.label)): \(ConsolePages.escape(axisValue(bar.value, currency)))</title></rect>"
            svg += "<text x=\(q(left + max(1, w) + 6)) y=\(q(y + 14)) font-size=\"12\">\(ConsolePages.escape(axisValue(bar.value, currency)))</text>"
        }
        return svg + "</svg>"
    }

    /// A coordinate attribute value, quoted, to one decimal.
    static func q(_ value: Double) -> String { "\"\((value * 10).rounded() / 10)\"" }
}

extension CharacterSet {
    /// What may stand unescaped in a query value.
    static let urlQueryValue: CharacterSet = {
        CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    }()
}
