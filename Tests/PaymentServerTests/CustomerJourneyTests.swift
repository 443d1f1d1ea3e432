import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import FleetManager
import LocalServices
import Locking
import MQTT
import MessageSchema
import PaymentSDK
import PaymentServer
import Testing
import TestSupport

/// The fleet of these tests: laundry-01 with a unit, laundry-02 without (offline), and the
/// payment server (TestSupport's `PaymentServerFleet`).
struct PayFleet {
    let base: PaymentServerFleet
    var home: FleetHome { base.home }
    var directory: String { base.directory }
    var agent: AgentUnit { base.agents[Self.machine]! }
    var configPath: String { base.configPath }
    var completions: Locked<[String: Int]> { base.completions }
    var server: ChildProcess { base.server }

    static let machine: MachineID = "laundry-01"
    static let offlineMachine: MachineID = "laundry-02"
    /// 100 per pulse, 50 ms on, 50 ms off: "Wash" (400) is 4 pulses, "Long wash" (2000) is 20 (2 s).
    static let profile = MachineProfile(
        maxAmount: 5_000, heartbeatS: 2, postVendDelayMs: 0,
        outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50)],
        inhibit: nil)

    static func binary(_ name: String) -> String { PaymentServerFleet.binary(name) }

    static func with(_ body: (PayFleet) async throws -> Void) async throws {
        let machines = [
            PaidMachine(
                id: machine, name: "Washer 1", place: "Corner Laundry, Main St", menu: [("Wash", 400), ("Long wash", 2000)],
                freeAmount: (100, 3000), profile: profile),
            PaidMachine(id: offlineMachine, name: "Dryer 2", place: "Corner Laundry, Main St", menu: [("Dry 10 min", 100)], profile: profile, online: false),
        ]
        try await PaymentServerFleet.with(machines) { base in
            let fleet = PayFleet(base: base)
            do {
                try await body(fleet)
            } catch {
                Issue.record("payment-server log:\n\(readTextFile(base.directory + "/payment-server.log").suffix(4000))")
                throw error
            }
            let log = readTextFile(base.directory + "/payment-server.log")
            #expect(!log.contains("Fatal error"), "\(log.suffix(2000))")
        }
    }

    var publicUrl: String { base.publicUrl }
    func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        try await base.waitUntil(what, timeout: timeout, condition)
    }
    func serverPayments() async throws -> [String: [String: Any]] { try await base.serverPayments() }

    /// `payment-server settle PAYMENT --action ACTION`.
    func settle(_ payment: String, _ action: String) async throws -> (status: LocalServices.ExitStatus, output: String) {
        let child = try ChildProcess.spawn(
            Self.binary("payment-server"), ["settle", payment, "--action", action, "--config", configPath, "--log-level", "error"],
            outputPath: directory + "/settle-\(UUID().uuidString).out")
        return (await child.waitForExit(), child.output())
    }


    struct HTTPResult {
        var status: Int
        var body: String
        var headers: [String: String]
    }

    /// One request, redirects not followed.
    func request(_ method: String, _ path: String, body: Data? = nil, headers: [String: String] = [:]) async throws -> HTTPResult {
        var request = URLRequest(url: URL(string: publicUrl + path)!)
        request.httpMethod = method
        request.httpBody = body
        for (name, value) in headers { request.setValue(value, forHTTPHeaderField: name) }
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpShouldSetCookies = false
        configuration.httpCookieAcceptPolicy = .never
        let session = URLSession(configuration: configuration, delegate: NoRedirects(), delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        let (data, response) = try await session.data(for: request)
        let http = response as! HTTPURLResponse
        var fields: [String: String] = [:]
        for (name, value) in http.allHeaderFields { fields["\(name)".lowercased()] = "\(value)" }
        return HTTPResult(status: http.statusCode, body: String(decoding: data, as: UTF8.self), headers: fields)
    }

    func get(_ path: String) async throws -> HTTPResult { try await request("GET", path) }

    /// A customer in Chromium, through `Tests/browser/pay_flow.py`.
    func customer(_ arguments: [String]) async throws -> [String: Any] {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("browser/pay_flow.py").path
        let child = try ChildProcess.spawn(
            "/usr/bin/env", ["python3", script, "--shots", screenshots] + arguments,
            outputPath: directory + "/browser-\(UUID().uuidString).out")
        let status = await child.waitForExit(timeout: .seconds(180))
        let output = child.output()
        guard let line = output.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
            let result = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
        else {
            Issue.record("the browser run printed no result (\(String(describing: status))):\n\(output.suffix(3000))")
            return [:]
        }
        #expect(status == .exited(0), "browser: \(result)")
        return result
    }

    /// Where the browser's screenshots go: `PULSEBRIDGE_SCREENSHOTS` (scripts/screenshots.sh
    /// points it at docs/screenshots), else this fleet's folder.
    var screenshots: String {
        let path = ProcessInfo.processInfo.environment["PULSEBRIDGE_SCREENSHOTS"].flatMap { $0.isEmpty ? nil : $0 } ?? directory + "/screenshots"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }
}

/// Chromium takes both cores while it renders: beside the timing tests (pulse widths) it would
/// make them fail for no fault of theirs. scripts/test.sh runs this suite on its own, in the
/// release stage with the release binaries (`PULSEBRIDGE_BROWSER_TESTS=1`).
@Suite(.serialized, .timeLimit(.minutes(15)))
struct CustomerJourneyTests {
    static let enabled = ProcessInfo.processInfo.environment["PULSEBRIDGE_BROWSER_TESTS"] == "1"

    @Test(.enabled(if: enabled, "the browser stage of scripts/test.sh runs it alone (PULSEBRIDGE_BROWSER_TESTS=1)"))
    func customersPayAtTheMachineInABrowser() async throws {
        try #require(FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), "Chromium is missing: run scripts/setup.sh")
        try await PayFleet.with { fleet in
            let coin = 17
            // The payment code, as the operator prints it, read back as a phone would.
            let svg = fleet.directory + "/code.svg", png = fleet.directory + "/code.png"
            let code = try ChildProcess.spawn(
                PayFleet.binary("fleet-manager"), ["code", PayFleet.machine.rawValue, "--format", "svg", "--out", svg, "--home", fleet.home.path],
                outputPath: fleet.directory + "/code.out")
            #expect(await code.waitForExit() == .exited(0), "\(code.output())")
            let render = try ChildProcess.spawn("/usr/bin/rsvg-convert", ["-o", png, svg], outputPath: fleet.directory + "/rsvg.out")
            #expect(await render.waitForExit() == .exited(0))
            let zbar = try ChildProcess.spawn("/usr/bin/zbarimg", ["-q", "--raw", png], outputPath: fleet.directory + "/zbar.out")
            #expect(await zbar.waitForExit() == .exited(0))
            // (zbarimg's stderr may carry D-Bus noise; the decoded text is its own line)
            let url = zbar.output().split(separator: "\n").last { $0.hasPrefix("http") }.map(String.init) ?? zbar.output()
            #expect(url == fleet.publicUrl + "/m/laundry-01")

            // Approving card: credited with exactly the pulses, captured by the provider.
            let approved = try await fleet.customer([
                "--url", url, "--choose", "Wash", "--card", "approve", "--expect", "captured,voided,held,unknown,failed,declined", "--name", "approve",
                "--profile", "Jane Doe,jane@example.com",
            ])
            try #require(approved["state"] as? String == "captured", "\(approved)")
            #expect((approved["text"] as? String)?.contains("4 pulses") == true, "\(approved)")
            #expect((approved["machinePageBytes"] as? Int ?? .max) < 50_000, "first load ≤ 50 KB: \(approved)")
            #expect(fleet.agent.activations(line: coin) == 4)
            let approvedId = try #require(approved["paymentId"] as? String)
            #expect(approved["listed"] as? Bool == true, "My payments lists it: \(approved)")
            #expect(approved["withoutConsent"] as? String == "Consent needed", "no profile without consent: \(approved)")
            #expect(approved["savedName"] as? String == "Jane Doe", "\(approved)")
            var payments = try await fleet.serverPayments()
            #expect(payments[approvedId]?["state"] as? String == "captured")
            #expect(payments[approvedId]?["providerState"] as? String == "captured")
            #expect(fleet.completions.withLock { $0[approvedId] } == 1)

            // Declined card: nothing published, nothing credited.
            let declined = try await fleet.customer(["--url", url, "--choose", "Wash", "--card", "decline", "--expect", "declined,captured,voided,failed", "--name", "decline"])
            #expect(declined["state"] as? String == "declined", "\(declined)")
            let declinedId = try #require(declined["paymentId"] as? String)
            #expect(fleet.completions.withLock { $0[declinedId] } == nil)

            // The provider never answers: nothing published, nothing charged.
            let timedOut = try await fleet.customer(["--url", url, "--choose", "Wash", "--card", "timeout", "--expect", "failed,captured,declined", "--name", "timeout"])
            #expect(timedOut["state"] as? String == "failed", "\(timedOut)")
            #expect(fleet.completions.withLock { $0[timedOut["paymentId"] as? String ?? ""] } == nil)

            // Pay pressed twice at once: one payment, one train.
            let double = try await fleet.customer(["--url", url, "--free", "300", "--card", "approve", "--double-click", "--expect", "captured,voided,held,unknown", "--name", "double"])
            #expect(double["state"] as? String == "captured", "\(double)")
            #expect(fleet.agent.activations(line: coin) == 4 + 3)
            payments = try await fleet.serverPayments()
            let doubleUser = payments[double["paymentId"] as? String ?? ""]?["userId"] as? String
            #expect(payments.values.filter { $0["userId"] as? String == doubleUser }.count == 1)

            // A provider that confirms later, by webhook.
            let webhook = try await fleet.customer([
                "--url", url, "--choose", "Wash", "--card", "webhook", "--expect", "captured,voided,held,failed", "--name", "webhook",
                "--profile", "John Roe,john@example.com", "--delete-profile",
            ])
            #expect(webhook["state"] as? String == "captured", "\(webhook)")
            #expect(webhook["nameAfterDelete"] as? String == "", "the profile is gone: \(webhook)")
            // The webhook and the customer's return both reconciled it: one completion.
            #expect(fleet.completions.withLock { $0[webhook["paymentId"] as? String ?? ""] } == 1)
            #expect(fleet.agent.activations(line: coin) == 4 + 3 + 4)

            // Credited, but the capture fails: held for the operator, never lost.
            let captureFails = try await fleet.customer(["--url", url, "--choose", "Wash", "--card", "capture-fails", "--expect", "held,captured,voided", "--name", "capture-fails"])
            #expect(captureFails["state"] as? String == "held", "\(captureFails)")
            #expect(fleet.agent.activations(line: coin) == 4 + 3 + 4 + 4)

            // A machine that is offline takes no money, even from a forced form.
            let offline = try await fleet.customer(["--url", fleet.publicUrl + "/m/laundry-02", "--choose", "Dry", "--force", "--expect", "refused", "--name", "offline"])
            #expect(offline["availability"] as? String == "Offline", "\(offline)")
            #expect(offline["state"] as? String == "refused", "\(offline)")
            #expect((offline["title"] as? String) == "Machine offline", "\(offline)")
            payments = try await fleet.serverPayments()
            #expect(!payments.values.contains { $0["machineId"] as? String == "laundry-02" })

            // The unit dies mid-train: `uncertain` → held, not captured.
            let before = fleet.agent.activations(line: coin)
            async let long = fleet.customer(["--url", url, "--choose", "Long wash", "--card", "approve", "--expect", "held,captured,voided,unknown", "--name", "uncertain"])
            try await fleet.waitUntil("the long train started", timeout: .seconds(120)) { fleet.agent.activations(line: coin) >= before + 3 }
            await fleet.agent.kill()
            try fleet.agent.start()
            let uncertain = try await long
            #expect(uncertain["state"] as? String == "held", "\(uncertain)")
            payments = try await fleet.serverPayments()
            let uncertainId = uncertain["paymentId"] as? String ?? ""
            #expect(payments[uncertainId]?["resultStatus"] as? String == "uncertain")
            #expect(payments[uncertainId]?["providerState"] as? String == "authorized", "held: neither captured nor voided")
            #expect(readTextFile(fleet.directory + "/payment-server.log").contains("ALERT: the machine's train stopped part-way"), "held and alerted")

            // The operator settles what was held: the capture that failed fails again (and says
            // so), the interrupted train is voided after review, a captured payment is refunded.
            let retry = try await fleet.settle(captureFails["paymentId"] as? String ?? "", "capture")
            #expect(retry.status == .exited(1) && retry.output.contains("the provider did not capture"), "\(retry.output)")
            let void = try await fleet.settle(uncertainId, "void")
            #expect(void.status == .exited(0) && void.output.contains("\(uncertainId): voided"), "\(void.output)")
            let refund = try await fleet.settle(approvedId, "refund")
            #expect(refund.status == .exited(0) && refund.output.contains("refunded"), "\(refund.output)")
            let wrong = try await fleet.settle(approvedId, "void")
            #expect(wrong.status == .exited(1) && wrong.output.contains("is refunded"), "\(wrong.output)")
            #expect(!wrong.output.contains("Fatal error"))
            payments = try await fleet.serverPayments()
            #expect(payments[uncertainId]?["providerState"] as? String == "voided")
            #expect(payments[approvedId]?["providerState"] as? String == "refunded")

            // The customer information: the server and `fleet-manager report customers` agree.
            try await fleet.waitUntil("serve recorded the credited payments") {
                let rows = try FleetReports.customers(fleet.home.registry.payments())
                return rows.reduce(0) { $0 + $1.payments } == 4
            }
            let registry = try FleetReports.customers(fleet.home.registry.payments())
            let listing = try ChildProcess.spawn(
                PayFleet.binary("payment-server"), ["customers", "--config", fleet.configPath, "--format", "csv", "--log-level", "error"],
                outputPath: fleet.directory + "/customers.csv")
            #expect(await listing.waitForExit() == .exited(0))
            var server: [String: (Int, Int)] = [:]
            var names: [String: String] = [:]
            for line in listing.output().split(separator: "\n").dropFirst() {
                let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                names[fields[0]] = fields[1]
                if let n = Int(fields[5]), let amount = Int(fields[6]), n > 0 { server[fields[0]] = (n, amount) }
            }
            #expect(names[approved["userId"] as? String ?? "?"] == "Jane Doe", "the profile kept with consent")
            #expect(names[webhook["userId"] as? String ?? "?"] == "", "the deleted profile is gone")
            #expect(server[webhook["userId"] as? String ?? "?"]?.0 == 1, "its payments stay, under the pseudonymous ID")
            #expect(server.count == registry.filter { $0.payments > 0 }.count, "\(server) vs \(registry)")
            for row in registry where row.payments > 0 {
                #expect(server[row.userId]?.0 == row.payments && server[row.userId]?.1 == row.amount, "\(row.userId): \(String(describing: server[row.userId])) vs \(row)")
            }
        }
    }
}
