import FleetManager
import Foundation
import MessageSchema

/// One unit's page: what it is now, how it has been (presence and heartbeats), what it was
/// given (configurations, each with what it changed; firmware), what it took (payments), and
/// the payment code to stick on the machine.
extension ConsolePages {
    static func machine(
        _ unit: UnitOverview, history: MachineHistory, payments: [PaymentRecord], totals: [LedgerTotals], code: PaymentCode?, days: Int, now: Int,
        notice: String? = nil, canAct: Bool = false, session: OperatorSession
    ) -> String {
        let id = escape(unit.machineId)
        let start = now - days * 86_400_000
        let facts: [(String, String)] = [
            ("State", unit.state + (unit.offlineReason.map { " (\($0))" } ?? "")), ("Last seen", time(unit.lastSeen)),
            ("Firmware", unit.firmware ?? "–"),
            ("Configuration", "desired v\(unit.desiredConfigVersion.map(String.init) ?? "–"), applied v\(unit.appliedConfigVersion.map(String.init) ?? "–")\(unit.configReport.map { " · last report: \($0)" } ?? "")"),
            ("Relay", unit.relay ?? "–"), ("Inhibited", unit.inhibited.map { $0 ? "yes" : "no" } ?? "–"),
            ("Outbox", unit.outboxDepth.map(String.init) ?? "–"), ("Clock", unit.clockSkewMs.map { "\($0) ms off the manager's" } ?? "–"),
            ("Counters", unit.counters.map { "\($0.credited) credited, \($0.rejected) rejected, \($0.uncertain) uncertain" } ?? "–"),
            ("Alerts", unit.alerts.isEmpty ? "none" : unit.alerts.joined(separator: "; ")),
            (
                "Pulse timing",
                unit.edgeErrorMaxUs.map { "edges off schedule by \(unit.edgeErrorP99Us ?? $0) µs (p99), \($0) µs at worst; \(unit.trains) train(s) seen" }
                    ?? "no train reported yet"
            ),
            ("Journal", unit.journalCommitMaxUs.map { "a train start committed in \($0) µs at most" } ?? "–"),
        ]
        let summary = facts.map { "<tr><th>\($0.0)</th><td id=\"fact-\($0.0.lowercased().replacingOccurrences(of: " ", with: "-"))\">\(escape($0.1))</td></tr>" }.joined()
        let periods = [1, 2, 7, Registry.historyDays].map { d in
            d == days ? "<strong>\(d) d</strong>" : "<a href=\"/machines/\(id)?days=\(d)\">\(d) d</a>"
        }.joined(separator: " · ")

        // Presence as sessions: each change until the next (or now).
        var sessions: [(state: String, reason: String?, from: Int, to: Int)] = []
        for (i, change) in history.presence.enumerated() {
            let end = i + 1 < history.presence.count ? history.presence[i + 1].at : now
            sessions.append((change.state, change.reason, max(change.at, start), end))
        }
        let sessionRows = sessions.reversed().map { s -> String in
            "<tr class=\"state-\(escape(s.state))\"><td>\(escape(s.state))\(s.reason.map { " (\(escape($0)))" } ?? "")</td><td>\(time(s.from))</td><td>\(s.to == now ? "now" : time(s.to))</td><td>\(duration(s.to - s.from))</td></tr>"
        }.joined()

        // Heartbeats per hour over the period, the missing hours as zero.
        let byHour = Dictionary(history.heartbeats.map { ($0.hour, $0) }, uniquingKeysWith: { $1 })
        let firstHour = start / 3_600_000 * 3_600_000
        let hours = stride(from: firstHour, through: now, by: 3_600_000).map { hour -> (label: String, value: Int) in
            let label = String(time(hour).dropFirst(5).prefix(11)).replacingOccurrences(of: "T", with: " ")
            return (label, byHour[hour]?.count ?? 0)
        }
        let longestGap = history.heartbeats.map(\.maxGapMs).max()
        let deepestOutbox = history.heartbeats.map(\.maxOutbox).max()
        let worstEdge = history.heartbeats.compactMap(\.maxEdgeErrorUs).max()
        let worstCommit = history.heartbeats.compactMap(\.maxCommitUs).max()
        let trains = history.heartbeats.reduce(0) { $0 + $1.trains }

        // Configurations, each against the one before it.
        let configRows = history.configs.enumerated().map { i, config -> String in
            let previous = i + 1 < history.configs.count ? history.configs[i + 1].json : nil
            let changes = ConfigDiff.changes(from: previous, to: config.json)
            let shown = changes.prefix(30).map { c in
                "<li><code>\(escape(c.key))</code>: \(c.old.map { "<del>\(escape($0))</del> → " } ?? "")\(c.new.map { "<ins>\(escape($0))</ins>" } ?? "<em>removed</em>")</li>"
            }.joined()
            let applied = unit.appliedConfigVersion == config.version ? " <span class=\"state-online\">applied</span>" : ""
            return "<tr id=\"config-v\(config.version)\"><td>v\(config.version)\(applied)</td><td>\(time(config.publishedAt))</td><td>\(previous == nil ? "<span class=\"muted\">first</span> " : "")<ul class=\"diff\">\(shown)\(changes.count > 30 ? "<li>… \(changes.count - 30) more</li>" : "")</ul></td></tr>"
        }.joined()

        let firmwareRows = history.firmware.map { step in
            "<tr><td>\(time(step.at))</td><td>\(escape(step.version))</td><td>\(escape(step.state))</td><td>\(escape(step.reason ?? "–"))</td></tr>"
        }.joined()

        let paymentRows = payments.map { p -> String in
            let currency = p.currency ?? ""
            return "<tr><td>\(time(p.at))</td><td>\(escape(p.paymentId))</td><td>\(escape(p.userId ?? "–"))</td><td>\(p.requestedAmount.map { money($0, currency) } ?? "–")</td><td>\(money(p.creditedAmount, currency))</td><td>\(escape(p.status?.rawValue ?? "pending"))</td><td>\(escape(p.settlement?.rawValue ?? "unknown"))</td></tr>"
        }.joined()
        let revenue = totals.filter { !$0.currency.isEmpty }.map { money($0.revenue, $0.currency) }.joined(separator: ", ")

        var codeSection = "<p class=\"muted\">serve knows no payment URL template.</p>"
        if let code {
            let svg = code.svg(moduleSize: 6, caption: unit.machineId).split(separator: "\n", maxSplits: 1).last.map(String.init) ?? ""
            codeSection = """
                <div class="code" id="payment-code">\(svg)</div>
                <p><code>\(escape(code.url))</code> · <a class="button" href="/machines/\(id)/code.svg" id="code-download">Download SVG to print</a></p>
                """
        }

        var actions = ""
        if canAct, unit.provisioning == "provisioned" {
            if session.account.role >= .operator {
                let channels = (history.configs.first.map { ConfigDiff.flatten($0.json) } ?? [:]).filter { $0.key.hasSuffix(".channel") }.map(\.value).sorted()
                actions += """
                    <form method="post" action="/machines/\(id)/config" class="filters"><input type="hidden" name="csrf" value="\(session.csrf)">
                    <input name="pairs" id="config-pairs" size="40" placeholder="maxAmount=3000 \(escape(channels.first ?? "coin")).pulseMs=60" required>
                    <button id="config-set">Publish configuration</button></form>
                    <p class="muted">KEY=VALUE pairs: maxAmount, heartbeatS, postVendDelayMs, currency, or CHANNEL.pulseMs, gapMs, valuePerPulse, line, chip, activeLow\(channels.isEmpty ? "" : " (channels: \(escape(channels.joined(separator: ", "))))"). The same as <code>fleet-manager config set</code>.</p>
                    """
            }
            if session.account.role >= .admin {
                actions += """
                    <form method="post" action="/machines/\(id)/revoke" class="filters"><input type="hidden" name="csrf" value="\(session.csrf)">
                    <input name="confirm" id="revoke-confirm" placeholder="type \(id) to confirm" autocomplete="off">
                    <button id="revoke">Revoke this unit</button></form>
                    <p class="muted">Its broker identity is deleted and its ID is never reused; a replacement is provisioned under a new ID.</p>
                    """
            }
        }
        return page(
            title: unit.machineId, session: session, here: "/",
            body: """
                <h1>\(id) <span class="state-\(escape(unit.state))" id="machine-state">\(escape(unit.state))</span>\(unit.provisioning == "revoked" ? " <span class=\"muted\">(revoked)</span>" : "")</h1>
                \(notice.map { "<p class=\"notice\" id=\"notice\">\(escape($0))</p>" } ?? "")
                <div class="columns"><table class="facts">\(summary)</table><section>\(codeSection)</section></div>
                \(actions.isEmpty ? "" : "<section class=\"actions\"><h2>Act</h2>\(actions)</section>")
                <p>History: \(periods)</p>
                <h2>Online and offline</h2>
                \(ConsoleCharts.timeline(id: "timeline", sessions: sessions.map { ($0.state, $0.from, $0.to) }, from: start, to: now))
                <details\(sessions.count <= 8 ? " open" : "")><summary>\(sessions.count) period(s)</summary><table id="sessions"><thead><tr><th>State</th><th>From</th><th>To</th><th>For</th></tr></thead><tbody>\(sessionRows.isEmpty ? "<tr><td colspan=\"4\" class=\"muted\">no change of presence in this period</td></tr>" : sessionRows)</tbody></table></details>
                <h2>Heartbeats per hour</h2>
                \(ConsoleCharts.columns(id: "heartbeats", bars: hours, currency: "", plain: true))
                <p class="muted" id="heartbeat-summary">Longest gap before a heartbeat: \(longestGap.map { duration($0) } ?? "–") · deepest outbox reported: \(deepestOutbox.map(String.init) ?? "–") · \(trains) train(s), worst edge error \(worstEdge.map { "\($0) µs" } ?? "–"), slowest journal commit \(worstCommit.map { "\($0) µs" } ?? "–")</p>
                <h2>Configurations</h2>
                <table id="configs"><thead><tr><th>Version</th><th>Published</th><th>What it changed</th></tr></thead><tbody>\(configRows.isEmpty ? "<tr><td colspan=\"3\" class=\"muted\">none published</td></tr>" : configRows)</tbody></table>
                <h2>Firmware</h2>
                <table id="firmware"><thead><tr><th>When</th><th>Version</th><th>State</th><th>Reason</th></tr></thead><tbody>\(firmwareRows.isEmpty ? "<tr><td colspan=\"4\" class=\"muted\">no firmware update in this period</td></tr>" : firmwareRows)</tbody></table>
                <h2>Payments</h2>
                <p>Revenue: \(revenue.isEmpty ? "none" : revenue) · <a href="/payments?machine=\(id)">all of them in the ledger</a></p>
                <table id="machine-payments"><thead><tr><th>When</th><th>Payment</th><th>User</th><th>Paid</th><th>Credited</th><th>Decision</th><th>Settlement</th></tr></thead><tbody>\(paymentRows.isEmpty ? "<tr><td colspan=\"7\" class=\"muted\">no payments</td></tr>" : paymentRows)</tbody></table>
                """)
    }

    /// `3 h 12 min`, `45 s`.
    static func duration(_ ms: Int) -> String {
        let seconds = max(0, ms / 1000)
        if seconds < 120 { return "\(seconds) s" }
        let minutes = seconds / 60
        if minutes < 120 { return "\(minutes) min" }
        let hours = minutes / 60
        if hours < 48 { return "\(hours) h \(minutes % 60) min" }
        return "\(hours / 24) d \(hours % 24) h"
    }
}

extension ConsoleCharts {
    /// A band over the period: each session in its state's colour, hours and days marked.
    static func timeline(id: String, sessions: [(state: String, from: Int, to: Int)], from: Int, to: Int) -> String {
        let width = 760.0, left = 10.0, right = 10.0, band = 26.0
        let span = Double(max(1, to - from))
        func x(_ at: Int) -> Double { left + (width - left - right) * Double(at - from) / span }
        var svg = "<svg id=\"\(ConsolePages.escape(id))\" class=\"chart\" viewBox=\"0 0 \(Int(width)) 56\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">"
        svg += "<rect x=\(q(left)) y=\"4\" width=\(q(width - left - right)) height=\(q(band)) fill=\"#e3e6ea\"><title>unknown</title></rect>"
        let colours = ["online": "#0a7b36", "offline": "#b3261e"]
        for s in sessions where s.to > from {
            let a = x(max(s.from, from)), b = x(min(s.to, to))
            svg += "<rect x=\(q(a)) y=\"4\" width=\(q(max(0.5, b - a))) height=\(q(band)) fill=\"\(colours[s.state] ?? "#9aa0a6")\" data-state=\"\(ConsolePages.escape(s.state))\"><title>\(ConsolePages.escape(s.state)) \(ConsolePages.time(s.from)) → \(ConsolePages.time(s.to))</title></rect>"
        }
        let step = to - from > 3 * 86_400_000 ? 86_400_000 : 6 * 3_600_000
        for mark in stride(from: (from / step + 1) * step, to: to, by: step) {
            svg += "<line x1=\(q(x(mark))) x2=\(q(x(mark))) y1=\"4\" y2=\(q(band + 8)) stroke=\"#6b7280\" stroke-width=\"0.5\"/>"
            let label = step == 86_400_000 ? String(ConsolePages.time(mark).dropFirst(5).prefix(5)) : String(ConsolePages.time(mark).dropFirst(5).prefix(11)).replacingOccurrences(of: "T", with: " ")
            svg += "<text x=\(q(x(mark))) y=\"50\" text-anchor=\"middle\" font-size=\"10\">\(label)</text>"
        }
        return svg + "</svg>"
    }
}
