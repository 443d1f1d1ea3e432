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

/// A fleet with one payment server, as an operator runs it: a real broker with dynamic
/// security, a provisioned unit running `edge-agent` (simulated GPIO), `serve` recording what
/// the fleet reports, and the `payment-server` binary with its own config file and database.
struct PayFleet {
    let broker: LocalMosquitto
    let home: FleetHome
    let directory: String
    let agent: AgentUnit
    let server: ChildProcess
    let serverPort: Int
    let configPath: String
    /// Every `payment/completed` the broker carried, by payment ID.
    let completions: Locked<[String: Int]>

    static let machine: MachineID = "laundry-01"
    static let offlineMachine: MachineID = "laundry-02"
    /// 100 per pulse, 50 ms on, 50 ms off: "Wash" (400) is 4 pulses, "Long wash" (2000) is 20 (2 s).
    static let profile = MachineProfile(
        maxAmount: 5_000, heartbeatS: 2, postVendDelayMs: 0,
        outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50)],
        inhibit: nil)

    static func binary(_ name: String) -> String {
        URL(fileURLWithPath: AgentUnit.binary).deletingLastPathComponent().appendingPathComponent(name).path
    }

    static func with(_ body: (PayFleet) async throws -> Void) async throws {
        try await LocalMosquitto.with(template: "dynsec") { broker in
            let directory = NSTemporaryDirectory() + "pb-pay-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let serverPort = try LoopbackPort.free()
            let publicUrl = "http://127.0.0.1:\(serverPort)"
            let home = try await FleetSetup.initialize(
                FleetSetup.Options(
                    home: directory + "/home", brokerHost: broker.host, brokerPort: broker.port, adminPassword: broker.adminPassword!,
                    deviceBrokerUrl: "mqtt://127.0.0.1:\(broker.port)", paymentUrlTemplate: publicUrl + "/m/{machineId}"))
            let backend = try await DynamicSecurityBackend.connect(home.settings.manager)
            let publisher = try await home.settings.manager.connect(clientID: "test-manager")
            let provisioner = Provisioner(home: home, backend: backend, publisher: publisher)
            _ = try await provisioner.provision(machine, profile: profile)
            _ = try await provisioner.provision(offlineMachine, profile: profile)
            // The payment server's own broker identity, as `payment-servers add web` makes it.
            var identity = home.settings.paymentServer
            identity.username = "payment-server-web"
            identity.password = Provisioner.newPassword()
            try await backend.createPaymentServer(identity)
            await backend.close()
            let credentials = directory + "/web.json"
            try JSONEncoder().encode(identity).write(to: URL(fileURLWithPath: credentials))

            // Watch every completion the broker carries (the manager may read everything).
            let completions = Locked<[String: Int]>([:])
            let watcher = try await home.settings.manager.connect(clientID: "test-watcher")
            try await watcher.subscribe([MQTTSubscription(home.topics.filter(.paymentCompleted))])
            let watching = Task {
                for await message in watcher.messages {
                    guard let envelope = try? SignedEnvelope.parse(message.payload),
                        let payment = try? WireCoding.decode(PaymentCompleted.self, from: Data(envelope.body.utf8))
                    else { continue }
                    completions.withLock { $0[payment.paymentId.rawValue, default: 0] += 1 }
                }
            }
            let monitor = try FleetMonitor(home: home)
            let serve = Task { try await monitor.run() }

            let agent = AgentUnit(machine: machine, directory: directory + "/unit", bundlePath: home.bundlesDirectory + "/\(machine.rawValue).json")
            try FileManager.default.createDirectory(atPath: agent.directory, withIntermediateDirectories: true)
            try agent.start()

            let (kid, _) = try home.signingKey(.payment)
            let configPath = directory + "/payment-server.json"
            let config: [String: Any] = [
                "listen": ["host": "127.0.0.1", "port": serverPort],
                "publicUrl": publicUrl,
                "database": directory + "/payment-server.sqlite",
                "brokerCredentials": credentials,
                "topicRoot": home.settings.topicRoot,
                "signingKey": ["kid": kid.rawValue, "file": home.privateKeyPath(kid)],
                "currency": "JPY",
                "paymentTtlS": 30,
                "unknownWaitS": 5,
                "provider": ["kind": "simulated", "webhookSecret": "test-webhook-secret-0123456789"],
                "machines": [
                    [
                        "machineId": machine.rawValue, "name": "Washer 1", "place": "Corner Laundry, Main St",
                        "menu": [["label": "Wash", "amount": 400], ["label": "Long wash", "amount": 2000]],
                        "freeAmount": ["step": 100, "max": 3000],
                    ],
                    [
                        "machineId": offlineMachine.rawValue, "name": "Dryer 2", "place": "Corner Laundry, Main St",
                        "menu": [["label": "Dry 10 min", "amount": 100]],
                    ],
                ],
            ]
            try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted]).write(to: URL(fileURLWithPath: configPath))
            let server = try ChildProcess.spawn(
                binary("payment-server"), ["run", "--config", configPath, "--log-level", "info"], outputPath: directory + "/payment-server.log")
            let fleet = PayFleet(
                broker: broker, home: home, directory: directory, agent: agent, server: server, serverPort: serverPort,
                configPath: configPath, completions: completions)
            defer {
                serve.cancel()
                watching.cancel()
            }
            do {
                try await fleet.waitUntil("the payment server answers") { try await fleet.get("/healthz").status == 200 }
                try await fleet.waitUntil("the page shows \(machine) ready") { try await fleet.get("/m/\(machine)").body.contains(">Ready<") }
                try await body(fleet)
            } catch {
                Issue.record("payment-server log:\n\(readTextFile(directory + "/payment-server.log").suffix(4000))")
                await fleet.stop(publisher: publisher, watcher: watcher)
                throw error
            }
            await fleet.stop(publisher: publisher, watcher: watcher)
        }
    }

    func stop(publisher: MQTTClient, watcher: MQTTClient) async {
        let status = await server.terminate(grace: .seconds(20))
        #expect(status == .exited(0), "payment-server stops cleanly on SIGTERM: \(status)")
        await agent.terminate()
        await publisher.close()
        await watcher.close()
    }

    var publicUrl: String { "http://127.0.0.1:\(serverPort)" }

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

    func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            if let exit = server.exitStatus { throw InboxTimeout(waitedFor: "\(what) (payment-server exited: \(exit))", received: []) }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw InboxTimeout(waitedFor: what, received: [])
    }

    /// `payment-server payments --json`, by payment ID.
    func serverPayments() async throws -> [String: [String: Any]] {
        let child = try ChildProcess.spawn(
            Self.binary("payment-server"), ["payments", "--config", configPath, "--json", "--log-level", "error"],
            outputPath: directory + "/payments-\(UUID().uuidString).out")
        #expect(await child.waitForExit() == .exited(0))
        var out: [String: [String: Any]] = [:]
        for line in child.output().split(separator: "\n") {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let id = object["paymentId"] as? String else { continue }
            out[id] = object
        }
        return out
    }

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

final class NoRedirects: NSObject, URLSessionTaskDelegate, Sendable {
    func urlSession(
        _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse, newRequest request: URLRequest,
        completionHandler: @escaping (URLRequest?) -> Void
    ) {
        completionHandler(nil)
    }
}

@Suite(.serialized, .timeLimit(.minutes(15)))
struct CustomerJourneyTests {
    @Test func customersPayAtTheMachineInABrowser() async throws {
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
