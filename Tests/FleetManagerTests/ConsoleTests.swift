import FleetConsole
import FleetManager
import Foundation
import LocalServices
import Locking
import MessageSchema
import Testing
import TestSupport

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// The console over HTTP, as an attacker and as each role: nothing answers without a session,
/// forms need their CSRF token and the right role, sign-in is limited, actions are audited.
/// (ConsoleBrowserTests drives it in Chromium.)
@Suite(.serialized, .timeLimit(.minutes(3)))
struct ConsoleTests {
    struct Reply {
        var status: Int
        var headers: [String: String]
        var body: String
    }

    struct Browser {
        let base: String
        var cookie: String?
        let session: URLSession = {
            // Cookies only as the test sets them: no jar.
            let configuration = URLSessionConfiguration.ephemeral
            configuration.httpCookieStorage = nil
            configuration.httpShouldSetCookies = false
            return URLSession(configuration: configuration, delegate: NoRedirects(), delegateQueue: nil)
        }()

        func send(_ method: String, _ path: String, form: [String: String]? = nil, origin: String? = nil) async throws -> Reply {
            var request = URLRequest(url: URL(string: base + path)!)
            request.httpMethod = method
            request.httpShouldHandleCookies = false
            if let cookie { request.setValue("pb_console=\(cookie)", forHTTPHeaderField: "Cookie") }
            if let origin { request.setValue(origin, forHTTPHeaderField: "Origin") }
            if let form {
                request.setValue("application/x-www-form-urlencoded", forHTTPHeaderField: "Content-Type")
                request.httpBody = Data(
                    form.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }.joined(separator: "&").utf8)
            }
            let (data, response) = try await session.data(for: request)
            let http = response as! HTTPURLResponse
            var headers: [String: String] = [:]
            for (key, value) in http.allHeaderFields { headers["\(key)".lowercased()] = "\(value)" }
            return Reply(status: http.statusCode, headers: headers, body: String(decoding: data, as: UTF8.self))
        }

        /// Signs in; the session cookie from now on.
        mutating func signIn(_ name: String, _ password: String) async throws -> Reply {
            let reply = try await send("POST", "/login", form: ["name": name, "password": password])
            if let setCookie = reply.headers["set-cookie"], let token = setCookie.split(separator: ";").first?.split(separator: "=", maxSplits: 1).last {
                cookie = String(token)
            }
            return reply
        }

        /// The CSRF token the signed-in pages carry.
        func csrf() async throws -> String {
            let page = try await send("GET", "/alerts").body
            guard let range = page.range(of: "name=\"csrf\" value=\"") else { return "" }
            return String(page[range.upperBound...].prefix { $0 != "\"" })
        }
    }

    static func withConsole(home: FleetHome? = nil, _ body: (Registry, Browser) async throws -> Void) async throws {
        let directory = NSTemporaryDirectory() + "pb-console-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let registry = try home?.registry ?? Registry(path: directory + "/registry.sqlite")
        for (name, role) in [("ana", OperatorAccount.Role.operator), ("vic", .viewer), ("root", .admin)] {
            try registry.addOperator(name, role: role, password: "correct horse \(name)")
        }
        var options = ConsoleServer.Options()
        options.port = 0
        options.metricsToken = "scrape-token-0123456789"
        options.livePeriod = .milliseconds(100)
        options.paymentUrlTemplate = "https://pay.example/m/{machineId}"
        let server = home.map { ConsoleServer(home: $0, metrics: FleetMetrics(), options: options) }
            ?? ConsoleServer(registry: registry, metrics: FleetMetrics(), options: options)
        let port = Locked<Int?>(nil)
        let application = server.application { bound in port.withLock { $0 = bound } }
        let serving = Task { try await application.runService() }
        defer { serving.cancel() }
        let deadline = ContinuousClock.now + .seconds(20)
        while port.withLock({ $0 }) == nil {
            guard ContinuousClock.now < deadline else { throw FleetError("the console did not start") }
            try await Task.sleep(for: .milliseconds(10))
        }
        try await body(registry, Browser(base: "http://127.0.0.1:\(port.withLock { $0 }!)"))
    }

    @Test func everyRouteRefusesWithoutASession() async throws {
        try await Self.withConsole { registry, browser in
            let routes = ConsoleServer(registry: registry, metrics: FleetMetrics(), options: ConsoleServer.Options()).routes()
            #expect(routes.count >= 25, "\(routes)")
            #expect(routes.contains { $0 == ("GET", "/machines/1/code.svg") } && routes.contains { $0 == ("POST", "/firmware/rollouts/1/abort") })
            for route in routes {
                let reply = try await browser.send(route.method, route.path, form: route.method == "POST" ? ["csrf": "x"] : nil)
                switch route.method {
                case "GET":
                    // A page sends the browser to sign in; anything else is refused outright.
                    let page = reply.status == 303 && reply.headers["location"] == "/login"
                    #expect(page || reply.status == 401, "\(route): \(reply.status)")
                default:
                    #expect(reply.status == 403, "\(route): \(reply.status)")
                }
                #expect(!reply.body.contains("<table") && !reply.body.contains("csrf"), "\(route)")
            }
            // The pages redirect (a browser lands on the sign-in); the rest answer 401.
            for page in ["/", "/alerts", "/audit", "/payments", "/revenue", "/machines/1", "/provision", "/codes", "/firmware", "/firmware/rollouts/1"] {
                #expect(try await browser.send("GET", page).status == 303, "\(page)")
            }
            for api in ["/events", "/console.js", "/payments.csv", "/metrics", "/machines/1/code.svg", "/bundles/1", "/firmware/rollouts/1/progress"] {
                #expect(try await browser.send("GET", api).status == 401, "\(api)")
            }
            // A forged cookie opens nothing either.
            var forged = browser
            forged.cookie = String(repeating: "a", count: 64)
            #expect(try await forged.send("GET", "/").status == 303)
            let login = try await browser.send("GET", "/login")
            #expect(login.status == 200 && login.body.contains("Sign in"))
            #expect(login.headers["content-security-policy"]?.contains("frame-ancestors 'none'") == true)
        }
    }

    @Test func signInIsLimitedAndSessionsAreCookiesTheRegistryCannotReplay() async throws {
        try await Self.withConsole { registry, browser in
            var browser = browser
            for _ in 0..<5 {
                #expect(try await browser.signIn("ana", "wrong password!").status == 401)
            }
            // The sixth try is refused even with the right password: wait.
            let limited = try await browser.signIn("ana", "correct horse ana")
            #expect(limited.status == 429 && limited.body.contains("Too many failed attempts"))
            // Another name from the same address is limited too (per address and per name).
            #expect(try await browser.signIn("vic", "correct horse vic").status == 429)
            #expect(try registry.auditTrail().filter { $0.action == "sign in" && $0.outcome == .failed }.count == 5)
        }
        try await Self.withConsole { registry, browser in
            var browser = browser
            let signedIn = try await browser.signIn("ana", "correct horse ana")
            #expect(signedIn.status == 303 && signedIn.headers["location"] == "/")
            let cookie = signedIn.headers["set-cookie"] ?? ""
            #expect(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && !cookie.contains("Secure"), "\(cookie)")
            let fleet = try await browser.send("GET", "/")
            #expect(fleet.status == 200 && fleet.body.contains("id=\"fleet\"") && fleet.body.contains("ana (operator)"))
            #expect(try await browser.send("GET", "/console.js").status == 200)
            // What the registry keeps does not open a session: only the token's hash is stored.
            let stored = try registry.openSessions()
            #expect(stored.map(\.operator) == ["ana"] && stored[0].tokenSha256 != browser.cookie)
            var replay = browser
            replay.cookie = stored[0].tokenSha256
            let replayed = try await replay.send("GET", "/")
            #expect(replayed.status == 303, "\(replayed.status) \(replayed.body.prefix(200))")
            // Signing out ends the session for the cookie too.
            let csrf = try await browser.csrf()
            #expect(try await browser.send("POST", "/logout", form: ["csrf": csrf]).status == 303)
            #expect(try await browser.send("GET", "/").status == 303)
            #expect(try registry.auditTrail().map(\.action).prefix(2) == ["sign out", "sign in"])
        }
    }

    @Test func actionsNeedTheTokenTheRoleAndTheOrigin() async throws {
        try await Self.withConsole { registry, browser in
            try registry.upsertMachine("laundry-01")
            _ = try registry.apply(
                [.status(StatusMessage(machineId: "laundry-01", state: .offline, bootId: "b", session: 1, firmware: "1", configVersion: 1, at: 0))],
                now: Registry.now())
            let alert = try #require(try registry.alerts().first)
            let path = "/alerts/\(alert.id)/ack"

            var viewer = browser
            _ = try await viewer.signIn("vic", "correct horse vic")
            let viewerPage = try await viewer.send("GET", "/alerts").body
            #expect(viewerPage.contains("laundry-01") && !viewerPage.contains("id=\"ack-\(alert.id)\""), "a viewer sees no button")
            let refused = try await viewer.send("POST", path, form: ["csrf": try await viewer.csrf()])
            #expect(refused.status == 403 && refused.body.contains("needs the operator role"))

            var ana = browser
            _ = try await ana.signIn("ana", "correct horse ana")
            #expect(try await ana.send("POST", path, form: [:]).status == 403, "no CSRF token")
            #expect(try await ana.send("POST", path, form: ["csrf": String(repeating: "0", count: 32)]).status == 403, "a wrong one")
            #expect(try await ana.send("POST", path, form: ["csrf": try await ana.csrf()], origin: "https://evil.example").status == 403)
            #expect(try registry.alerts().first?.acknowledgedBy == nil)
            let done = try await ana.send("POST", path, form: ["csrf": try await ana.csrf()], origin: browser.base)
            #expect(done.status == 303 && done.headers["location"] == "/alerts")
            #expect(try registry.alerts().first?.acknowledgedBy == "ana")
            let trail = try registry.auditTrail()
            let ack = try #require(trail.first { $0.action == "alerts ack" })
            #expect(ack.actor == "ana" && ack.via == .web && ack.origin == "127.0.0.1" && ack.outcome == .ok)
            #expect(trail.contains { $0.action == "refused" && $0.actor == "vic" })
            let auditPage = try await ana.send("GET", "/audit").body
            #expect(auditPage.contains("alerts ack") && auditPage.contains("ana (web)"))
        }
    }

    /// Payments as `serve` records them: a completion signed for the machine, then its result.
    static func payment(
        _ id: String, _ machine: MachineID, _ amount: Int, _ currency: String, user: String, status: PaymentStatus?, credited: Int = 0, at: Int
    ) -> [FleetEvent] {
        var events: [FleetEvent] = [
            .completion(
                PaymentCompleted(
                    paymentId: PaymentID(rawValue: id)!, machineId: machine, amount: amount, currency: CurrencyCode(rawValue: currency)!,
                    userId: UserID(rawValue: user)!, issuedAt: at, expiresAt: at + 60_000), payloadSha256: String(repeating: "a", count: 64))
        ]
        if let status {
            events.append(
                .result(
                    PaymentResult(
                        paymentId: PaymentID(rawValue: id)!, machineId: machine, status: status, reason: status == .rejected ? .expired : nil,
                        amount: credited, pulses: [PulseCount(channel: "coin", count: credited / 100)], pulsesFired: credited / 100, decidedAt: at + 500,
                        bootId: "b1", seq: 1)))
        }
        return events
    }

    @Test func theLedgerFiltersExportsChartsAndSettlesAsTheCLIDoes() async throws {
        try await Self.withConsole { registry, browser in
            let now = Registry.now()
            for machine: MachineID in ["laundry-01", "wash-01"] { try registry.upsertMachine(machine) }
            var events: [FleetEvent] = []
            events += Self.payment("p-1", "laundry-01", 400, "JPY", user: "alice", status: .credited, credited: 400, at: now - 3_600_000)
            events += Self.payment("p-2", "wash-01", 1250, "EUR", user: "=HYPERLINK(\"http://evil\",\"x\")", status: .credited, credited: 1250, at: now - 60_000)
            events += Self.payment("p-3", "wash-01", 300, "JPY", user: "bob", status: .rejected, at: now - 30_000)
            events += Self.payment("p-4", "laundry-01", 500, "JPY", user: "carol", status: .uncertain, credited: 200, at: now - 20_000)
            events += Self.payment("p-5", "laundry-01", 700, "JPY", user: "dave", status: nil, at: now - 10_000)
            _ = try registry.apply(events, now: now)

            var vic = browser
            _ = try await vic.signIn("vic", "correct horse vic")
            let all = try await vic.send("GET", "/payments")
            #expect(all.status == 200)
            for id in ["p-1", "p-2", "p-3", "p-4", "p-5"] { #expect(all.body.contains("id=\"payment-\(id)\""), "\(id)") }
            #expect(all.body.contains("data-currency=\"JPY\"") && all.body.contains("data-minor=\"400\""), "JPY revenue: p-1 only")
            #expect(all.body.contains("12.50 EUR"), "cents shown as euros")
            #expect(!all.body.contains("id=\"capture-p-4\""), "a viewer gets no settle button")
            let wash = try await vic.send("GET", "/payments?machine=wash-01&status=credited").body
            #expect(wash.contains("payment-p-2") && !wash.contains("payment-p-1") && !wash.contains("payment-p-3"))
            let wrong = try await vic.send("GET", "/payments?from=2026-02-30&status=maybe").body
            #expect(wrong.contains("from &#39;2026-02-30&#39; is not a day") && wrong.contains("status must be one of"))

            // The export: every payment, a currency column, formulas defused; its sums are the registry's.
            let csv = try await vic.send("GET", "/payments.csv")
            #expect(csv.status == 200 && csv.headers["content-type"]?.hasPrefix("text/csv") == true)
            #expect(csv.headers["content-disposition"]?.hasPrefix("attachment; filename=\"pulsebridge-payments-") == true)
            let rows = try CSVRows.parse(csv.body)
            #expect(rows.first?.fields == FleetReports.ledgerHeader)
            #expect(rows.count == 6)
            let column = Dictionary(uniqueKeysWithValues: FleetReports.ledgerHeader.enumerated().map { ($1, $0) })
            var revenue: [String: Int] = [:]
            for row in rows.dropFirst() { revenue[row.fields[column["currency"]!], default: 0] += Int(row.fields[column["revenue"]!])! }
            let totals = try registry.ledgerTotals(matching: PaymentFilter())
            #expect(revenue == Dictionary(uniqueKeysWithValues: totals.map { ($0.currency, $0.revenue) }))
            #expect(revenue == ["JPY": 400, "EUR": 1250])
            #expect(rows.contains { $0.fields[column["user_id"]!] == "'=HYPERLINK(\"http://evil\",\"x\")" })
            #expect(try await vic.send("GET", "/payments.csv?to=someday").status == 400)
            let filtered = try CSVRows.parse(try await vic.send("GET", "/payments.csv?currency=x&machine=laundry-01&open=1").body)
            #expect(filtered.dropFirst().map { $0.fields[0] } == ["p-4", "p-5"], "held and unknown on laundry-01")

            // Revenue: the chart's bars add up to the totals.
            let chart = try await vic.send("GET", "/revenue").body
            #expect(chart.contains("<svg id=\"days-JPY\"") && chart.contains("<svg id=\"machines-EUR\""))
            func sum(_ id: String) -> Int {
                guard let start = chart.range(of: "<svg id=\"\(id)\""), let end = chart[start.upperBound...].range(of: "</svg>") else { return -1 }
                return chart[start.upperBound..<end.lowerBound].components(separatedBy: "data-value=\"").dropFirst()
                    .reduce(0) { $0 + (Int($1.prefix { $0 != "\"" }) ?? 0) }
            }
            #expect(sum("days-JPY") == 400 && sum("machines-JPY") == 400 && sum("days-EUR") == 1250)
            let quiet = try await vic.send("GET", "/revenue?from=2020-01-01&to=2020-01-31").body
            #expect(quiet.contains("id=\"no-revenue\""))

            // Settling by hand: the viewer is refused; the operator's click is the CLI's settle.
            let settle = ["machine": "laundry-01", "payment": "p-4", "action": "void", "back": "/payments?open=1"]
            let refused = try await vic.send("POST", "/payments/settle", form: settle.merging(["csrf": try await vic.csrf()]) { $1 })
            #expect(refused.status == 403)
            var ana = browser
            _ = try await ana.signIn("ana", "correct horse ana")
            #expect(try await ana.send("GET", "/payments").body.contains("id=\"capture-p-4\""))
            let done = try await ana.send("POST", "/payments/settle", form: settle.merging(["csrf": try await ana.csrf()]) { $1 }, origin: browser.base)
            #expect(done.status == 303 && done.headers["location"] == "/payments?open=1")
            let p4 = try #require(try registry.payments(matching: PaymentFilter(userId: "carol")).first)
            #expect(p4.settlement == .void && p4.settledBy == "operator:ana")
            let again = try await ana.send("POST", "/payments/settle", form: settle.merging(["csrf": try await ana.csrf()]) { $1 })
            #expect(again.status == 409 && again.body.contains("not held or unknown"))
            let offsite = try await ana.send(
                "POST", "/payments/settle", form: ["machine": "laundry-01", "payment": "p-5", "action": "capture", "back": "https://evil.example/", "csrf": try await ana.csrf()])
            #expect(offsite.status == 303 && offsite.headers["location"] == "/payments", "no open redirect")
            let trail = try registry.auditTrail().filter { $0.action == "payments settle" }
            #expect(trail.contains { $0.actor == "ana" && $0.via == .web && $0.target == "p-4" && $0.outcome == .ok })
            #expect(trail.contains { $0.target == "p-4" && $0.outcome == .failed })
        }
    }

    @Test func aMachinesPageShowsItsPastItsConfigurationsItsPaymentsAndItsCode() async throws {
        try await Self.withConsole { registry, browser in
            let unit: MachineID = "laundry-01"
            try registry.upsertMachine(unit)
            var config = try MachineProfile.standardCoin.config(for: unit, version: 1, currency: "JPY", trust: nil)
            try registry.setDesiredConfig(config)
            config.version = 2
            config.maxAmount = 2500
            try registry.setDesiredConfig(config)
            let now = Registry.now()
            _ = try registry.apply(
                [
                    .status(StatusMessage(machineId: unit, state: .online, bootId: "b", session: 1, firmware: "1.0", configVersion: 2, at: now)),
                    .heartbeat(
                        Heartbeat(
                            machineId: unit, bootId: "b", seq: 1, at: now, uptimeS: 5, firmware: "1.0", configVersion: 2, inhibited: false, relay: .ok,
                            outboxDepth: 0, counters: PaymentCounters())),
                ] + Self.payment("p-m1", unit, 400, "JPY", user: "alice", status: .credited, credited: 400, at: now - 1000), now: now)

            var vic = browser
            _ = try await vic.signIn("vic", "correct horse vic")
            let page = try await vic.send("GET", "/machines/laundry-01")
            #expect(page.status == 200)
            for part in [
                "<svg id=\"timeline\"", "data-state=\"online\"", "<svg id=\"heartbeats\"", "id=\"config-v2\"", "<code>maxAmount</code>", "<ins>2500</ins>",
                "p-m1", "Revenue: 400 JPY", "https://pay.example/m/laundry-01", "id=\"payment-code\"",
            ] {
                #expect(page.body.contains(part), "\(part)")
            }
            #expect(!page.body.contains("<?xml"), "the code is inline SVG, not a document")
            #expect(try await vic.send("GET", "/").body.contains("href=\"/machines/laundry-01\""), "the fleet links to it")
            #expect(try await vic.send("GET", "/machines/laundry-01?days=999").body.contains("<strong>\(Registry.historyDays) d</strong>"))
            let missing = try await vic.send("GET", "/machines/%3Cscript%3E")
            #expect(missing.body.contains("No such unit") && !missing.body.contains("<script>"))
            let code = try await vic.send("GET", "/machines/laundry-01/code.svg")
            #expect(code.status == 200 && code.headers["content-type"] == "image/svg+xml" && code.body.hasPrefix("<?xml"))
            #expect(code.headers["content-disposition"]?.contains("payment-code-laundry-01.svg") == true)
            #expect(try await vic.send("GET", "/machines/wash-99/code.svg").status == 404)
        }
    }

    /// Actions from the console on a real broker: the library calls the CLI makes, each in the
    /// audit trail, each refused to a role below it.
    @Test func configurationRevokeProvisionAndStickersFromTheBrowser() async throws {
        try await DynsecFleet.with { fleet in
            for unit: MachineID in ["laundry-01", "wash-01"] { _ = try await fleet.provisioner.provision(unit, profile: OperationsTests.fastProfile) }
            try await Self.withConsole(home: fleet.home) { registry, browser in
                var vic = browser
                _ = try await vic.signIn("vic", "correct horse vic")
                var ana = browser
                _ = try await ana.signIn("ana", "correct horse ana")
                var root = browser
                _ = try await root.signIn("root", "correct horse root")
                let machinePage = { (who: Browser) in try await who.send("GET", "/machines/laundry-01").body }
                let (forViewer, forOperator, forAdmin) = (try await machinePage(vic), try await machinePage(ana), try await machinePage(root))
                #expect(!forViewer.contains("id=\"config-set\""), "a viewer gets no form")
                #expect(forOperator.contains("id=\"config-set\"") && !forOperator.contains("id=\"revoke\""))
                #expect(forAdmin.contains("id=\"revoke\""))

                // Configuration: the viewer is refused; a bad value is explained; a good one published.
                let before = try #require(try registry.machine("laundry-01")?.desiredConfig?.version)
                #expect(try await vic.send("POST", "/machines/laundry-01/config", form: ["pairs": "maxAmount=2500", "csrf": try await vic.csrf()]).status == 403)
                let bad = try await ana.send("POST", "/machines/laundry-01/config", form: ["pairs": "maxAmount=lots", "csrf": try await ana.csrf()])
                #expect(bad.status == 400 && bad.body.contains("maxAmount needs a whole number, not &#39;lots&#39;"))
                let unknown = try await ana.send("POST", "/machines/laundry-01/config", form: ["pairs": "speed=3", "csrf": try await ana.csrf()])
                #expect(unknown.body.contains("unknown key &#39;speed&#39;") && unknown.body.contains("id=\"hint\""))
                let published = try await ana.send(
                    "POST", "/machines/laundry-01/config", form: ["pairs": "maxAmount=2500\ncoin.pulseMs=60", "csrf": try await ana.csrf()], origin: browser.base)
                #expect(published.status == 303 && published.headers["location"] == "/machines/laundry-01?published=\(before + 1)", "\(published.body)")
                let desired = try #require(try registry.machine("laundry-01")?.desiredConfig)
                #expect(desired.version == before + 1 && desired.maxAmount == 2500 && desired.outputs[0].pulseMs == 60)
                #expect(try await ana.send("GET", "/machines/laundry-01?published=\(before + 1)").body.contains("id=\"notice\""))

                // Provision: admin only; the bundle downloads once, then it is gone from the server.
                #expect(try await ana.send("GET", "/provision").status == 403)
                #expect(try await ana.send("POST", "/provision", form: ["machine": "vend-09", "csrf": try await ana.csrf()]).status == 403)
                let badId = try await root.send("POST", "/provision", form: ["machine": "Vend 9", "csrf": try await root.csrf()])
                #expect(badId.status == 400 && badId.body.contains("is not a machine ID"))
                let made = try await root.send("POST", "/provision", form: ["machine": "vend-09", "csrf": try await root.csrf()])
                #expect(made.status == 200 && made.body.contains("id=\"provisioned\""), "\(made.body)")
                let link = try #require(made.body.range(of: "href=\"/bundles/").map { String(made.body[$0.upperBound...].prefix { $0 != "\"" }) })
                #expect(try registry.machine("vend-09")?.state == .provisioned)
                #expect(try await ana.send("GET", "/bundles/\(link)").status == 403, "not for an operator")
                let bundle = try await root.send("GET", "/bundles/\(link)")
                #expect(bundle.status == 200 && bundle.headers["content-disposition"]?.contains("vend-09.json") == true)
                let decoded = try JSONDecoder().decode(AgentBundle.self, from: Data(bundle.body.utf8))
                #expect(decoded.machineId == "vend-09")
                #expect(try await root.send("GET", "/bundles/\(link)").status == 410, "once")
                let leftovers = try FileManager.default.contentsOfDirectory(atPath: fleet.home.bundlesDirectory).filter { $0.hasPrefix(".console-") }
                #expect(leftovers.isEmpty, "the password left the server with the download")
                let twice = try await root.send("POST", "/provision", form: ["machine": "vend-09", "csrf": try await root.csrf()])
                #expect(twice.status == 400 && twice.body.contains("vend-09 is already provisioned"), "an existing unit needs new credentials")

                // The sticker sheet: one code per provisioned unit.
                let sheet = try await vic.send("GET", "/codes").body
                for unit in ["laundry-01", "wash-01", "vend-09"] { #expect(sheet.contains("id=\"sticker-\(unit)\""), "\(unit)") }

                // Revoke: admin only, confirmed by typing the ID.
                #expect(try await ana.send("POST", "/machines/wash-01/revoke", form: ["confirm": "wash-01", "csrf": try await ana.csrf()]).status == 403)
                let unconfirmed = try await root.send("POST", "/machines/wash-01/revoke", form: ["confirm": "wash", "csrf": try await root.csrf()])
                #expect(unconfirmed.status == 400 && unconfirmed.body.contains("Type the machine ID"))
                #expect(try registry.machine("wash-01")?.state == .provisioned)
                let revoked = try await root.send("POST", "/machines/wash-01/revoke", form: ["confirm": "wash-01", "csrf": try await root.csrf()])
                #expect(revoked.status == 303 && revoked.headers["location"] == "/machines/wash-01?revoked=1")
                #expect(try registry.machine("wash-01")?.state == .revoked)
                let sheetAfter = try await vic.send("GET", "/codes").body
                #expect(!sheetAfter.contains("sticker-wash-01"), "no code for a revoked unit")

                let trail = try registry.auditTrail()
                for (action, target, outcome) in [
                    ("config set", "laundry-01", AuditRecord.Outcome.ok), ("config set", "laundry-01", .failed), ("provision", "vend-09", .ok),
                    ("bundle download", "vend-09", .ok), ("revoke", "wash-01", .ok), ("refused", "/machines/wash-01/revoke", .ok),
                ] {
                    #expect(trail.contains { $0.action == action && $0.target == target && $0.outcome == outcome && $0.via == .web }, "\(action) \(target) \(outcome)")
                }
            }
        }
    }

    /// A rollout from the console is `FirmwareManager`'s, recorded as it goes: one that stops at
    /// its failure limit, and one an operator aborts while it waits.
    @Test func aRolloutStartedStoppedAndAbortedFromTheConsole() async throws {
        try await DynsecFleet.with { fleet in
            let units: [MachineID] = ["laundry-01", "laundry-02", "laundry-03", "laundry-04", "wash-01"]
            for unit in units { _ = try await fleet.provisioner.provision(unit, profile: OperationsTests.fastProfile) }
            try fleet.home.registry.addRelease(
                FirmwareRelease(version: "9.9.9", sha256: String(repeating: "ab", count: 32), size: 10, url: "http://127.0.0.1:9/9.9.9/edge-agent"))
            try await Self.withConsole(home: fleet.home) { registry, browser in
                var vic = browser
                _ = try await vic.signIn("vic", "correct horse vic")
                var ana = browser
                _ = try await ana.signIn("ana", "correct horse ana")
                let form = { (csrf: String, extra: [String: String]) in
                    ["csrf": csrf, "version": "9.9.9", "units": "laundry", "wave": "25", "maxFailures": "1", "timeout": "1"].merging(extra) { $1 }
                }
                #expect(try await !vic.send("GET", "/firmware").body.contains("id=\"rollout-start\""), "no form for a viewer")
                #expect(try await ana.send("GET", "/firmware").body.contains("id=\"rollout-start\""))
                #expect(try await vic.send("POST", "/firmware/rollouts", form: form(try await vic.csrf(), [:])).status == 403)
                let badWave = try await ana.send("POST", "/firmware/rollouts", form: form(try await ana.csrf(), ["wave": "0"]))
                #expect(badWave.status == 400 && badWave.body.contains("the wave must be 1 to 100"))
                let noRelease = try await ana.send("POST", "/firmware/rollouts", form: form(try await ana.csrf(), ["version": "0.0.9"]))
                #expect(noRelease.status == 400 && noRelease.body.contains("no release 0.0.9"))

                // Nobody installs (no agents): the first wave times out, the limit stops the rest.
                let started = try await ana.send("POST", "/firmware/rollouts", form: form(try await ana.csrf(), [:]))
                #expect(started.status == 303)
                let first = try #require(started.headers["location"].flatMap { Int($0.split(separator: "/").last ?? "") })
                try await OperationsTests.eventually("the rollout stopped at its limit") { try registry.rollout(first)?.state == .aborted }
                let stopped = try #require(try registry.rollout(first))
                #expect(stopped.units.map(\.machineId) == ["laundry-01", "laundry-02", "laundry-03", "laundry-04"], "wash-01 is not in it")
                #expect(stopped.units.map(\.state) == [.failed, .untouched, .untouched, .untouched])
                #expect(stopped.units[0].reason == "timeout" && stopped.startedBy == "ana" && stopped.via == "web")
                #expect(stopped.detail?.contains("1 failure(s) reached --max-failures 1") == true)
                let page = try await vic.send("GET", "/firmware/rollouts/\(first)").body
                #expect(page.contains("data-rollout=\"\(first)\"") && page.contains("failed: timeout") && !page.contains("id=\"abort\""))

                // An operator aborts a rollout waiting for its first wave: the rest is untouched.
                let waiting = try await ana.send("POST", "/firmware/rollouts", form: form(try await ana.csrf(), ["wave": "50", "timeout": "600"]))
                let second = try #require(waiting.headers["location"].flatMap { Int($0.split(separator: "/").last ?? "") })
                try await OperationsTests.eventually("the first wave sent") { try registry.rollout(second)?.count(.sent) == 2 }
                let live = try await vic.send("GET", "/firmware/rollouts/\(second)/progress")
                let progress = try #require(try JSONSerialization.jsonObject(with: Data(live.body.utf8)) as? [String: Any])
                #expect(progress["state"] as? String == "running")
                #expect(((progress["units"] as? [String: Any])?["laundry-01"] as? [String: Any])?["state"] as? String == "sent")
                #expect(try await ana.send("GET", "/firmware/rollouts/\(second)").body.contains("id=\"abort\""))
                #expect(try await vic.send("POST", "/firmware/rollouts/\(second)/abort", form: ["csrf": try await vic.csrf()]).status == 403)
                let aborted = try await ana.send("POST", "/firmware/rollouts/\(second)/abort", form: ["csrf": try await ana.csrf()])
                #expect(aborted.status == 303)
                try await OperationsTests.eventually("aborted at once", timeout: .seconds(10)) { try registry.rollout(second)?.state == .aborted }
                let abandoned = try #require(try registry.rollout(second))
                #expect(abandoned.units.map(\.state) == [.abandoned, .abandoned, .untouched, .untouched])
                #expect(abandoned.detail?.contains("aborted by ana") == true)
                let again = try await ana.send("POST", "/firmware/rollouts/\(second)/abort", form: ["csrf": try await ana.csrf()])
                #expect(again.status == 409)

                let listed = try await vic.send("GET", "/firmware").body
                #expect(listed.contains("/firmware/rollouts/\(first)") && listed.contains("/firmware/rollouts/\(second)"))
                let trail = try registry.auditTrail()
                #expect(trail.filter { $0.action == "firmware rollout" && $0.outcome == .ok }.count == 2)
                #expect(trail.contains { $0.action == "firmware rollout" && $0.outcome == .failed && $0.target == "0.0.9" })
                #expect(trail.contains { $0.action == "firmware abort" && $0.actor == "ana" })
            }
        }
    }

    @Test func theLiveStreamSendsTheListedUnits() async throws {
        try await Self.withConsole { registry, browser in
            try registry.upsertMachine("wash-01")
            try registry.upsertMachine("wash-02")
            var ana = browser
            _ = try await ana.signIn("ana", "correct horse ana")
            // Two seconds of the stream, as curl reads it.
            let out = NSTemporaryDirectory() + "pb-events-\(UUID().uuidString)"
            let curl = try ChildProcess.spawn(
                "/usr/bin/curl", ["-sN", "--max-time", "2", "-H", "Cookie: pb_console=\(ana.cookie!)", browser.base + "/events?ids=wash-01"],
                outputPath: out)
            _ = await curl.waitForExit(timeout: .seconds(20))
            let events = curl.output().split(separator: "\n").map(String.init).filter { $0.hasPrefix("event: ") || $0.hasPrefix("data: ") }
            #expect(events.contains("event: unit"))
            #expect(events.contains { $0.hasPrefix("data: {\"cells\":") && $0.contains("\"id\":\"wash-01\"") })
            #expect(!events.contains { $0.contains("wash-02") }, "only the units asked for")
            #expect(events.contains("event: counts"))
        }
    }
}
