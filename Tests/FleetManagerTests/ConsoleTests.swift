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
    /// Does not follow redirects: the test looks at them.
    final class NoRedirects: NSObject, URLSessionTaskDelegate, Sendable {
        func urlSession(
            _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse, newRequest request: URLRequest,
            completionHandler: @escaping (URLRequest?) -> Void
        ) {
            completionHandler(nil)
        }
    }

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

    static func withConsole(_ body: (Registry, Browser) async throws -> Void) async throws {
        let directory = NSTemporaryDirectory() + "pb-console-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let registry = try Registry(path: directory + "/registry.sqlite")
        for (name, role) in [("ana", OperatorAccount.Role.operator), ("vic", .viewer), ("root", .admin)] {
            try registry.addOperator(name, role: role, password: "correct horse \(name)")
        }
        var options = ConsoleServer.Options()
        options.port = 0
        options.metricsToken = "scrape-token-0123456789"
        options.livePeriod = .milliseconds(100)
        let server = ConsoleServer(registry: registry, metrics: FleetMetrics(), options: options)
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
        try await Self.withConsole { _, browser in
            for route in ConsoleServer.routes {
                let reply = try await browser.send(route.method, route.path, form: route.method == "POST" ? ["csrf": "x"] : nil)
                switch (route.method, route.path) {
                case ("GET", "/"), ("GET", "/alerts"), ("GET", "/audit"):
                    #expect(reply.status == 303 && reply.headers["location"] == "/login", "\(route)")
                case ("GET", _):
                    #expect(reply.status == 401, "\(route): \(reply.status)")
                default:
                    #expect(reply.status == 403, "\(route): \(reply.status)")
                }
                #expect(!reply.body.contains("<table"), "\(route)")
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
