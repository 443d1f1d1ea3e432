import FleetManager
import Foundation
import LocalServices
import Locking
import MQTT
import MessageSchema
import PaymentSDK

/// A machine a payment server sells for: its page's name and menu, and its unit's profile.
public struct PaidMachine: Sendable {
    public var id: MachineID
    public var name: String
    public var place: String
    public var menu: [(label: String, amount: Int)]
    /// Step and maximum of a free amount, if offered.
    public var freeAmount: (step: Int, max: Int)?
    public var profile: MachineProfile
    /// Whether a unit (edge-agent, simulated GPIO) runs for it.
    public var online: Bool

    public init(
        id: MachineID, name: String, place: String, menu: [(label: String, amount: Int)], freeAmount: (step: Int, max: Int)? = nil,
        profile: MachineProfile, online: Bool = true
    ) {
        self.id = id
        self.name = name
        self.place = place
        self.menu = menu
        self.freeAmount = freeAmount
        self.profile = profile
        self.online = online
    }
}

/// `payment-server` as an operator sets it up: its own broker identity (`payment-servers add`),
/// the fleet's payment key, a config file listing the machines.
public enum PaymentServerSetup {
    /// Makes the identity, writes its credentials and the config file; returns the config's path.
    public static func prepare(
        home: FleetHome, backend: any ProvisioningBackend, directory: String, name: String = "web", port: Int, machines: [PaidMachine],
        limits: (perUser: Int, perMachine: Int) = (6, 20), paymentTtlS: Int = 30, unknownWaitS: Int = 5
    ) async throws -> String {
        var identity = home.settings.paymentServer
        identity.username = "payment-server-\(name)"
        identity.password = Provisioner.newPassword()
        try await backend.createPaymentServer(identity)
        let credentials = directory + "/payment-server-\(name).json"
        try JSONEncoder().encode(identity).write(to: URL(fileURLWithPath: credentials))
        let (kid, _) = try home.signingKey(.payment)
        // The webhook secret in a file of its own, as docs/payment-server.md advises.
        let secretFile = directory + "/payment-server-\(name)-webhook.secret"
        _ = FileManager.default.createFile(atPath: secretFile, contents: Data(Provisioner.newPassword().utf8), attributes: [.posixPermissions: 0o600])
        let config: [String: Any] = [
            "listen": ["host": "127.0.0.1", "port": port],
            "publicUrl": "http://127.0.0.1:\(port)",
            "database": directory + "/payment-server-\(name).sqlite",
            "brokerCredentials": credentials,
            "topicRoot": home.settings.topicRoot,
            "signingKey": ["kid": kid.rawValue, "file": home.privateKeyPath(kid)],
            "currency": home.settings.currency,
            "paymentTtlS": paymentTtlS,
            "unknownWaitS": unknownWaitS,
            "provider": ["kind": "simulated", "webhookSecretFile": secretFile],
            "limits": ["paymentsPerUserPerMinute": limits.perUser, "paymentsPerMachinePerMinute": limits.perMachine],
            "machines": machines.map { machine -> [String: Any] in
                var entry: [String: Any] = [
                    "machineId": machine.id.rawValue, "name": machine.name, "place": machine.place,
                    "menu": machine.menu.map { ["label": $0.label, "amount": $0.amount] },
                ]
                if let free = machine.freeAmount { entry["freeAmount"] = ["step": free.step, "max": free.max] }
                return entry
            },
        ]
        let path = directory + "/payment-server-\(name)-config.json"
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys]).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Waits until `/healthz` answers (or the process exits).
    public static func waitUntilServing(_ server: ChildProcess, port: Int, timeout: Duration = .seconds(30)) async throws {
        var probe = WebCustomer(base: "http://127.0.0.1:\(port)")
        let deadline = ContinuousClock.now + timeout
        while (try? await probe.request("GET", "/healthz"))?.status != 200 {
            guard ContinuousClock.now < deadline, server.isRunning else {
                throw WebCustomerError("payment-server did not start (\(String(describing: server.exitStatus))): \(server.output().suffix(2000))")
            }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// A whole fleet with one payment server, as an operator runs it: a real broker with dynamic
/// security, provisioned units running `edge-agent` (simulated GPIO), `serve` recording what the
/// fleet reports, and the `payment-server` binary with its own config and database.
public struct PaymentServerFleet: Sendable {
    public let broker: LocalMosquitto
    public let home: FleetHome
    public let directory: String
    public let agents: [MachineID: AgentUnit]
    private let process: Locked<ChildProcess>
    /// The running `payment-server`.
    public var server: ChildProcess { process.withLock { $0 } }
    private let serverBinary: String
    public let port: Int
    public let configPath: String
    /// Every `payment/completed` the broker carried, by payment ID.
    public let completions: Locked<[String: Int]>
    public var publicUrl: String { "http://127.0.0.1:\(port)" }

    /// The binary beside `edge-agent` (`PULSEBRIDGE_BIN_DIR` or SwiftPM's products folder).
    public static func binary(_ name: String) -> String {
        URL(fileURLWithPath: AgentUnit.binary).deletingLastPathComponent().appendingPathComponent(name).path
    }

    public static func with(
        _ machines: [PaidMachine], limits: (perUser: Int, perMachine: Int) = (6, 20), paymentServerBinary: String = binary("payment-server"),
        _ body: (PaymentServerFleet) async throws -> Void
    ) async throws {
        try await LocalMosquitto.with(template: "dynsec") { broker in
            let directory = NSTemporaryDirectory() + "pb-pay-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let port = try LoopbackPort.free()
            let home = try await FleetSetup.initialize(
                FleetSetup.Options(
                    home: directory + "/home", brokerHost: broker.host, brokerPort: broker.port, adminPassword: broker.adminPassword!,
                    deviceBrokerUrl: "mqtt://127.0.0.1:\(broker.port)", paymentUrlTemplate: "http://127.0.0.1:\(port)/m/{machineId}"))
            let backend = try await DynamicSecurityBackend.connect(home.settings.manager)
            let publisher = try await home.settings.manager.connect(clientID: "test-manager")
            let provisioner = Provisioner(home: home, backend: backend, publisher: publisher)
            for machine in machines { _ = try await provisioner.provision(machine.id, profile: machine.profile) }
            let configPath = try await PaymentServerSetup.prepare(
                home: home, backend: backend, directory: directory, port: port, machines: machines, limits: limits)
            await backend.close()

            // Every completion the broker carries (the manager may read everything).
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
            var agents: [MachineID: AgentUnit] = [:]
            for machine in machines where machine.online {
                let agent = AgentUnit(
                    machine: machine.id, directory: directory + "/\(machine.id)", bundlePath: home.bundlesDirectory + "/\(machine.id.rawValue).json")
                try FileManager.default.createDirectory(atPath: agent.directory, withIntermediateDirectories: true)
                try agent.start()
                agents[machine.id] = agent
            }
            let server = try ChildProcess.spawn(
                paymentServerBinary, ["run", "--config", configPath, "--log-level", "info"], outputPath: directory + "/payment-server.log")
            let fleet = PaymentServerFleet(
                broker: broker, home: home, directory: directory, agents: agents, process: Locked(server), serverBinary: paymentServerBinary,
                port: port, configPath: configPath, completions: completions)
            defer {
                serve.cancel()
                watching.cancel()
            }
            do {
                try await PaymentServerSetup.waitUntilServing(server, port: port)
                for machine in machines where machine.online {
                    try await fleet.waitUntil("the page shows \(machine.id) ready") {
                        var customer = WebCustomer(base: fleet.publicUrl)
                        return try await customer.request("GET", "/m/\(machine.id)").body.contains(">Ready<")
                    }
                }
                try await body(fleet)
            } catch {
                await fleet.stop(publisher: publisher, watcher: watcher)
                throw error
            }
            let status = await fleet.stop(publisher: publisher, watcher: watcher)
            guard status == .exited(0) else {
                throw WebCustomerError("payment-server did not stop cleanly on SIGTERM (\(status)): \(fleet.server.output().suffix(2000))")
            }
        }
    }

    /// SIGTERM to the server (it finishes settlements first), the agents, the clients.
    @discardableResult
    func stop(publisher: MQTTClient, watcher: MQTTClient) async -> ExitStatus {
        let status = await server.terminate(grace: .seconds(20))
        for agent in agents.values { await agent.terminate() }
        await publisher.close()
        await watcher.close()
        return status
    }

    /// SIGKILL (a crash, a power cut), then the same server started again on the same config
    /// and database; returns when it serves.
    public func crashAndRestartServer() async throws {
        await server.killAndWait()
        let restarted = try ChildProcess.spawn(
            serverBinary, ["run", "--config", configPath, "--log-level", "info"], outputPath: directory + "/payment-server-restarted.log")
        process.withLock { $0 = restarted }
        try await PaymentServerSetup.waitUntilServing(restarted, port: port)
    }

    public func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if (try? await condition()) == true { return }
            if let exit = server.exitStatus { throw InboxTimeout(waitedFor: "\(what) (payment-server exited: \(exit))", received: []) }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw InboxTimeout(waitedFor: what, received: [])
    }

    /// `payment-server payments --json`, by payment ID.
    public func serverPayments() async throws -> [String: [String: Any]] {
        let child = try ChildProcess.spawn(
            Self.binary("payment-server"), ["payments", "--config", configPath, "--json", "--log-level", "error"],
            outputPath: directory + "/payments-\(UUID().uuidString).out")
        guard await child.waitForExit() == .exited(0) else { throw WebCustomerError("payment-server payments failed: \(child.output())") }
        var out: [String: [String: Any]] = [:]
        for line in child.output().split(separator: "\n") {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], let id = object["paymentId"] as? String else { continue }
            out[id] = object
        }
        return out
    }

    /// Peak and current resident memory of the server, KiB (`VmHWM`, `VmRSS`).
    public func serverMemoryKiB() -> (peak: Int, current: Int) {
        let status = (try? String(contentsOfFile: "/proc/\(server.pid)/status", encoding: .utf8)) ?? ""
        func field(_ name: String) -> Int {
            status.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                .flatMap { Int($0.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first ?? "") } ?? 0
        }
        return (field("VmHWM"), field("VmRSS"))
    }
}
