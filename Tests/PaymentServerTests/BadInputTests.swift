import Foundation
import LocalServices
import PaymentServer
import Testing
import TestSupport

/// What a careless or hostile client sends the payment server: every route answers a page a
/// person can read with a 4xx, takes no money it should not, and never answers 500.
@Suite(.serialized, .timeLimit(.minutes(10)))
struct BadInputTests {
    /// The hidden fields and cookie of a machine page, as a browser would hold them.
    struct Session {
        var cookie: String
        var csrf: String
        var key: String
    }

    static func field(_ name: String, in html: String) -> String? {
        guard let range = html.range(of: "name=\"\(name)\" value=\"") else { return nil }
        return String(html[range.upperBound...].prefix { $0 != "\"" })
    }

    static func session(_ fleet: PayFleet, cookie: String? = nil) async throws -> Session {
        let page = try await fleet.request("GET", "/m/laundry-01", headers: cookie.map { ["Cookie": $0] } ?? [:])
        #expect(page.status == 200)
        #expect(page.headers["content-security-policy"]?.contains("script-src 'self'") == true)
        let issued = page.headers["set-cookie"].map { String($0.prefix { $0 != ";" }) }
        let cookie = try #require(cookie ?? issued)
        return Session(cookie: cookie, csrf: try #require(field("csrf", in: page.body)), key: try #require(field("key", in: page.body)))
    }

    static func pay(
        _ fleet: PayFleet, _ session: Session, amount: String = "400", csrf: String? = nil, key: String? = nil, extra: [String: String] = [:]
    ) async throws -> PayFleet.HTTPResult {
        let body = "csrf=\(csrf ?? session.csrf)&key=\(key ?? session.key)&amount=\(amount)"
        return try await fleet.request(
            "POST", "/m/laundry-01/pay", body: Data(body.utf8),
            headers: ["Cookie": session.cookie, "Content-Type": "application/x-www-form-urlencoded"].merging(extra) { $1 })
    }

    static func expectReadable(_ result: PayFleet.HTTPResult, _ status: Int, _ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status == status, "\(result.status): \(result.body.prefix(600))", sourceLocation: sourceLocation)
        #expect(result.body.contains(text), "\(result.body.prefix(600))", sourceLocation: sourceLocation)
        #expect(result.headers["content-type"]?.hasPrefix("text/html") == true, sourceLocation: sourceLocation)
    }

    @Test func everyRouteRefusesBadInputWithAPage() async throws {
        try await PayFleet.with { fleet in
            BadInputTests.expectReadable(try await fleet.get("/m/no-such-machine"), 404, "Unknown machine")
            BadInputTests.expectReadable(try await fleet.get("/m/%00%ff"), 404, "Unknown machine")
            BadInputTests.expectReadable(try await fleet.get("/nothing/here"), 404, "Not found")

            let session = try await Self.session(fleet)
            // Forged or stale forms.
            var noCookie = session
            noCookie.cookie = ""
            Self.expectReadable(try await Self.pay(fleet, noCookie), 403, "Session expired")
            Self.expectReadable(try await Self.pay(fleet, session, csrf: "0000"), 403, "Form expired")
            let otherUser = try await Self.session(fleet)
            Self.expectReadable(try await Self.pay(fleet, session, csrf: otherUser.csrf), 403, "Form expired")
            Self.expectReadable(try await Self.pay(fleet, session, extra: ["Origin": "https://evil.example"]), 403, "another site")
            // Bad amounts and shapes.
            Self.expectReadable(try await Self.pay(fleet, session, amount: "401"), 400, "does not offer")
            Self.expectReadable(try await Self.pay(fleet, session, amount: "abc"), 400, "Choose an amount")
            Self.expectReadable(try await Self.pay(fleet, session, amount: "99999999999999999999"), 400, "Choose an amount")
            Self.expectReadable(try await Self.pay(fleet, session, amount: "-400"), 400, "Choose an amount")
            Self.expectReadable(try await Self.pay(fleet, session, key: "short"), 400, "incomplete")
            Self.expectReadable(
                try await fleet.request(
                    "POST", "/m/laundry-01/pay", body: Data("{\"amount\":400}".utf8), headers: ["Cookie": session.cookie, "Content-Type": "application/json"]),
                415, "Not a form")
            Self.expectReadable(
                try await fleet.request(
                    "POST", "/m/laundry-01/pay", body: Data(repeating: 0x61, count: 200_000),
                    headers: ["Cookie": session.cookie, "Content-Type": "application/x-www-form-urlencoded"]),
                413, "too large")
            #expect(try await fleet.serverPayments().isEmpty, "no bad request made a payment")

            // The same form twice: one payment, the same checkout.
            let first = try await Self.pay(fleet, session)
            let again = try await Self.pay(fleet, session)
            #expect(first.status == 303 && again.status == 303)
            #expect(first.headers["location"]?.contains("/simulated-provider/checkout/sim_") == true)
            #expect(first.headers["location"] == again.headers["location"])
            let payments = try await fleet.serverPayments()
            #expect(payments.count == 1)
            let mine = try #require(payments.keys.first)
            // Someone else's payment is not found; their receipt leaks nothing.
            Self.expectReadable(try await fleet.request("GET", "/p/\(mine)", headers: ["Cookie": otherUser.cookie]), 404, "Payment not found")
            #expect(try await fleet.request("GET", "/p/\(mine)", headers: ["Cookie": session.cookie]).status == 200)

            // Per-customer rate limit: 6 payments a minute (the first one counts).
            var statuses: [Int] = []
            for _ in 0..<6 {
                let fresh = try await Self.session(fleet, cookie: session.cookie)
                statuses.append(try await Self.pay(fleet, fresh).status)
            }
            #expect(statuses == [303, 303, 303, 303, 303, 429], "\(statuses)")

            // Webhooks must be signed by the provider.
            Self.expectReadable(
                try await fleet.request("POST", "/webhooks/simulated", body: Data("{\"ref\":\"sim_x\"}".utf8), headers: ["X-Simulated-Signature": "00"]),
                401, "signature")
            Self.expectReadable(try await fleet.request("POST", "/webhooks/other", body: Data()), 404, "Unknown provider")
            // The checkout only returns to this server.
            let location = try #require(first.headers["location"])
            let checkoutPath = String(location[location.range(of: "/simulated-provider")!.lowerBound...]).components(separatedBy: "?")[0]
            Self.expectReadable(
                try await fleet.request("GET", checkoutPath + "?return=https%3A%2F%2Fevil.example%2Fp%2Fx", headers: ["Cookie": session.cookie]),
                400, "return address")

            // A fuzz pass over the form routes: random bodies, types and sizes; never a 500.
            var generator = SystemRandomNumberGenerator()
            let routes = ["/m/laundry-01/pay", "/me/profile", "/me/delete", checkoutPath, "/webhooks/simulated", "/p/\(mine)/return"]
            let types = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", "application/json", ""]
            let alphabet = Array("=&%+abc01\u{0}\u{7f}é😀;\"'<>\r\n".unicodeScalars)
            var failures: [String] = []
            for i in 0..<400 {
                let route = routes[Int.random(in: 0..<routes.count, using: &generator)]
                let length = [0, 1, 10, 100, 3000, 9000][Int.random(in: 0..<6, using: &generator)]
                var text = ""
                for _ in 0..<length { text.unicodeScalars.append(alphabet[Int.random(in: 0..<alphabet.count, using: &generator)]) }
                if i % 3 == 0 { text = "csrf=\(session.csrf)&key=\(UUID().uuidString)&" + text }
                var headers = ["Content-Type": types[Int.random(in: 0..<types.count, using: &generator)]]
                if i % 2 == 0 { headers["Cookie"] = session.cookie }
                let get = i % 7 == 0
                let result = try await fleet.request(get ? "GET" : "POST", route, body: get ? nil : Data(text.utf8), headers: headers)
                if result.status >= 500 { failures.append("\(route) \(headers) \(text.debugDescription.prefix(200)) → \(result.status)") }
            }
            #expect(failures.isEmpty, "\(failures.count) answered 5xx: \(failures.prefix(5))")
            #expect(try await fleet.get("/healthz").status == 200, "still serving")
            let log = readTextFile(fleet.directory + "/payment-server.log")
            #expect(!log.contains("Fatal error") && !log.contains("request failed"), "\(log.suffix(2000))")
        }
    }
}
