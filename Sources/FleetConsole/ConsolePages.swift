import FleetManager
import Foundation
import WebSupport

/// The console's pages: server-rendered HTML, one stylesheet inline, the one script
/// (`/console.js`, live updates) served to signed-in browsers only.
enum ConsolePages {
    static func escape(_ text: String) -> String { HTML.escape(text) }

    static func time(_ ms: Int?) -> String {
        guard let ms else { return "–" }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    static let style = """
        body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
        header{display:flex;gap:1.2em;align-items:center;padding:.6em 1.2em;background:#14325c;color:#fff}
        header a{color:#fff;text-decoration:none}header a.here{font-weight:700;text-decoration:underline}
        header .who{margin-left:auto}header form{display:inline}
        main{padding:1em 1.2em}table{border-collapse:collapse;background:#fff;width:100%}
        th,td{padding:.35em .6em;border-bottom:1px solid #e3e6ea;text-align:left;white-space:nowrap}
        th{background:#eef1f5;font-weight:600}.state-online{color:#0a7b36;font-weight:600}
        .state-offline{color:#b3261e;font-weight:600}.state-unknown,.state-revoked{color:#6b7280}
        .flash{animation:flash 1.5s}@keyframes flash{from{background:#fff3b0}to{background:transparent}}
        form.filters{display:flex;gap:.5em;margin-bottom:.8em}input,select,button{font:inherit;padding:.3em .5em}
        button{cursor:pointer}.muted{color:#6b7280}.error{color:#b3261e}.login{max-width:22em;margin:4em auto;background:#fff;padding:1.5em;border-radius:6px}
        .login input{display:block;width:100%;box-sizing:border-box;margin:.3em 0 .8em}.pages{margin-top:.8em}
        form.inline{display:inline;margin-left:.4em}form.filters{flex-wrap:wrap}#totals{width:auto;margin-bottom:1em}
        a.button{display:inline-block;padding:.3em .8em;background:#14325c;color:#fff;border-radius:4px;text-decoration:none}
        .columns{display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap}table.facts{width:auto}table.facts th{text-align:right}
        .code svg{width:220px;height:auto;display:block;background:#fff}ul.diff{margin:0;padding-left:1.1em}del{color:#b3261e}ins{color:#0a7b36;text-decoration:none}
        .sheet{display:grid;grid-template-columns:repeat(4,1fr);gap:.6em}.sticker{margin:0;background:#fff;border:1px dashed #aab;text-align:center;padding:.4em;break-inside:avoid}
        .sticker svg{width:100%;height:auto}.sticker figcaption{font-weight:600}.actions form{margin:.4em 0}.notice{background:#e8f4ea;padding:.5em .8em;border-radius:4px}
        .rollout-running{color:#7e5109;font-weight:600}.rollout-completed{color:#0a7b36;font-weight:600}.rollout-aborted,.rollout-interrupted{color:#b3261e;font-weight:600}
        .unit-installed{color:#0a7b36}.unit-failed,.unit-abandoned{color:#b3261e}.unit-sent{color:#7e5109}.unit-planned,.unit-untouched{color:#6b7280}
        @media print{header,.noprint{display:none}main{padding:0}body{background:#fff}}
        svg.chart{display:block;width:100%;max-width:760px;background:#fff;margin:.4em 0 1em}section.chart h3{font-size:1em;margin:.4em 0}
        """

    static func page(title: String, session: OperatorSession?, here: String = "", body: String, script: Bool = false) -> String {
        var nav = ""
        if let session {
            var links = [("/", "Fleet"), ("/payments", "Payments"), ("/revenue", "Revenue"), ("/alerts", "Alerts"), ("/firmware", "Firmware"), ("/codes", "Codes"), ("/audit", "Audit trail")]
            if session.account.role >= .admin { links.append(("/provision", "Provision")) }
            nav = links.map { "<a href=\"\($0.0)\"\($0.0 == here ? " class=\"here\"" : "")>\($0.1)</a>" }.joined()
            nav += """
                <span class="who">\(escape(session.account.name)) (\(session.account.role.rawValue))
                <form method="post" action="/logout"><input type="hidden" name="csrf" value="\(session.csrf)"><button id="logout">Sign out</button></form></span>
                """
        }
        return """
            <!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
            <title>\(escape(title)) · PulseBridge</title><style>\(style)</style></head>
            <body><header><strong>PulseBridge</strong>\(nav)</header><main>\(body)</main>\(script ? "<script src=\"/console.js\"></script>" : "")</body></html>
            """
    }

    static func login(error: String?, name: String = "") -> String {
        page(
            title: "Sign in", session: nil,
            body: """
                <form class="login" method="post" action="/login"><h1>Sign in</h1>
                \(error.map { "<p class=\"error\" id=\"login-error\">\(escape($0))</p>" } ?? "")
                <label>Name<input name="name" id="name" autocomplete="username" value="\(escape(name))" required></label>
                <label>Password<input name="password" id="password" type="password" autocomplete="current-password" required></label>
                <button id="sign-in">Sign in</button></form>
                """)
    }

    static func unitCells(_ unit: UnitOverview) -> [(field: String, text: String)] {
        [
            ("state", unit.state), ("lastSeen", time(unit.lastSeen)), ("firmware", unit.firmware ?? "–"),
            ("config", "\(unit.desiredConfigVersion.map(String.init) ?? "–")/\(unit.appliedConfigVersion.map(String.init) ?? "–")"),
            ("relay", unit.relay ?? "–"), ("inhibited", unit.inhibited.map { $0 ? "yes" : "no" } ?? "–"),
            ("credited", "\(unit.counters?.credited ?? 0)"), ("alerts", unit.alerts.isEmpty ? "–" : unit.alerts.joined(separator: "; ")),
        ]
    }

    struct FleetQuery {
        var search = ""
        var state = ""
        var page = 1
        static let pageSize = 100
    }

    static func fleet(_ units: [UnitOverview], total: Int, query: FleetQuery, counts: [String: Int], session: OperatorSession) -> String {
        let pages = max(1, (total + FleetQuery.pageSize - 1) / FleetQuery.pageSize)
        let options = ["", "online", "offline", "unknown", "revoked"].map { state in
            "<option value=\"\(state)\"\(state == query.state ? " selected" : "")>\(state.isEmpty ? "any state" : state)</option>"
        }.joined()
        let rows = units.map { unit in
            "<tr id=\"unit-\(escape(unit.machineId))\"><td><a href=\"/machines/\(escape(unit.machineId))\">\(escape(unit.machineId))</a></td>"
                + unitCells(unit).map { "<td data-field=\"\($0.field)\"\($0.field == "state" ? " class=\"state-\(escape($0.text))\"" : "")>\(escape($0.text))</td>" }.joined()
                + "</tr>"
        }.joined(separator: "\n")
        func link(_ page: Int) -> String {
            "/?q=\(query.search.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")&state=\(query.state)&page=\(page)"
        }
        let summary = ["online", "offline", "unknown", "revoked"].map { "<span id=\"count-\($0)\">\(counts[$0] ?? 0)</span> \($0)" }.joined(separator: " · ")
        return page(
            title: "Fleet", session: session, here: "/",
            body: """
                <p class="muted">\(summary) · live</p>
                <form class="filters" method="get" action="/"><input name="q" id="search" placeholder="machine ID contains…" value="\(escape(query.search))">
                <select name="state" id="state-filter">\(options)</select><button>Filter</button></form>
                <table id="fleet"><thead><tr><th>Machine</th><th>State</th><th>Last seen</th><th>Firmware</th><th>Config D/A</th><th>Relay</th><th>Inhibited</th><th>Credited</th><th>Alerts</th></tr></thead>
                <tbody>\(rows.isEmpty ? "<tr><td colspan=\"9\" class=\"muted\">no units match</td></tr>" : rows)</tbody></table>
                <p class="pages">\(total) unit(s) · page \(query.page) of \(pages)
                \(query.page > 1 ? "<a href=\"\(link(query.page - 1))\">previous</a>" : "") \(query.page < pages ? "<a href=\"\(link(query.page + 1))\">next</a>" : "")</p>
                """, script: true)
    }

    static func alerts(_ open: [AlertRecord], resolved: [AlertRecord], session: OperatorSession) -> String {
        let canAct = session.account.role >= .operator
        func row(_ alert: AlertRecord, open: Bool) -> String {
            var ack = alert.acknowledgedBy.map { "acknowledged by \(escape($0))" } ?? "–"
            if open, alert.acknowledgedBy == nil, canAct {
                ack = """
                    <form method="post" action="/alerts/\(alert.id)/ack"><input type="hidden" name="csrf" value="\(session.csrf)"><button id="ack-\(alert.id)">Acknowledge</button></form>
                    """
            }
            return "<tr id=\"alert-\(alert.id)\"><td>\(alert.id)</td><td>\(escape(alert.machineId))</td><td>\(alert.kind.rawValue)\(alert.suppressed.map { " (\(escape($0)))" } ?? "")</td><td>\(escape(alert.detail))</td><td>\(time(alert.openedAt))</td><td>\(open ? "open" : "\(time(alert.resolvedAt)) \(escape(alert.resolution ?? ""))")</td><td>\(ack)</td></tr>"
        }
        let head = "<tr><th>ID</th><th>Machine</th><th>Kind</th><th>Detail</th><th>Opened</th><th>Resolved</th><th>Acknowledged</th></tr>"
        return page(
            title: "Alerts", session: session, here: "/alerts",
            body: """
                <h2>Open</h2><table id="open-alerts"><thead>\(head)</thead><tbody>\(open.isEmpty ? "<tr><td colspan=\"7\" class=\"muted\">no open alerts</td></tr>" : open.map { row($0, open: true) }.joined())</tbody></table>
                <h2>Resolved lately</h2><table id="resolved-alerts"><thead>\(head)</thead><tbody>\(resolved.map { row($0, open: false) }.joined())</tbody></table>
                """)
    }

    static func audit(_ trail: [AuditRecord], session: OperatorSession) -> String {
        let rows = trail.map { r in
            "<tr><td>\(time(r.at))</td><td>\(escape(r.actor)) (\(r.via.rawValue))</td><td>\(escape(r.origin))</td><td>\(escape(r.action))</td><td>\(escape(r.target ?? "–"))</td><td>\(escape(r.detail ?? "–"))</td><td>\(r.outcome == .ok ? "ok" : "failed: \(escape(r.error ?? "?"))")</td></tr>"
        }.joined()
        return page(
            title: "Audit trail", session: session, here: "/audit",
            body: """
                <table id="audit"><thead><tr><th>When</th><th>Who</th><th>From</th><th>Action</th><th>Target</th><th>Detail</th><th>Outcome</th></tr></thead><tbody>\(rows)</tbody></table>
                """)
    }

    static func message(_ title: String, _ text: String, session: OperatorSession?) -> String {
        page(title: title, session: session, body: "<h1>\(escape(title))</h1><p id=\"message\">\(escape(text))</p>")
    }

    /// Live updates of the fleet table: the units on the page, from `/events`.
    static let script = """
        (function(){
          document.querySelectorAll('[data-print]').forEach(function(b){ b.addEventListener('click', function(){ window.print(); }); });
          var rollout = document.querySelector('[data-rollout]');
          if (rollout) {
            var poll = function(){
              fetch('/firmware/rollouts/' + rollout.getAttribute('data-rollout') + '/progress').then(function(r){ return r.json(); }).then(function(p){
                var state = document.getElementById('rollout-state');
                state.textContent = p.state; state.className = 'rollout-' + p.state;
                document.getElementById('rollout-detail').textContent = p.detail;
                Object.keys(p.counts).forEach(function(k){ var el = document.getElementById('count-' + k); if (el) el.textContent = p.counts[k]; });
                Object.keys(p.units).forEach(function(id){
                  var row = document.querySelector('tr[data-unit="' + id + '"]');
                  if (!row) return;
                  var u = p.units[id];
                  var text = u.state + (u.reason ? ': ' + u.reason : '');
                  var cell = row.querySelector('[data-field="state"]');
                  if (cell.textContent !== text) { cell.textContent = text; cell.className = 'unit-' + u.state + ' flash'; }
                  row.querySelector('[data-field="report"]').textContent = u.report;
                });
                if (p.state === 'running') setTimeout(poll, 1000);
                else { var a = document.getElementById('abort'); if (a) a.closest('form').remove(); }
              });
            };
            setTimeout(poll, 1000);
          }
          var rows = document.querySelectorAll('#fleet tbody tr[id^="unit-"]');
          var ids = Array.prototype.map.call(rows, function(r){ return r.id.slice(5); });
          if (!ids.length) return;
          var source = new EventSource('/events?ids=' + encodeURIComponent(ids.join(',')));
          source.addEventListener('unit', function(e){
            var unit = JSON.parse(e.data);
            var row = document.getElementById('unit-' + unit.id);
            if (!row) return;
            Object.keys(unit.cells).forEach(function(field){
              var cell = row.querySelector('[data-field="' + field + '"]');
              if (!cell || cell.textContent === unit.cells[field]) return;
              cell.textContent = unit.cells[field];
              if (field === 'state') cell.className = 'state-' + unit.cells[field];
              cell.classList.add('flash');
            });
          });
          source.addEventListener('counts', function(e){
            var counts = JSON.parse(e.data);
            Object.keys(counts).forEach(function(state){
              var el = document.getElementById('count-' + state);
              if (el) el.textContent = counts[state];
            });
          });
        })();
        """
}
