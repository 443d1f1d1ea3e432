import ArgumentParser
import EdgeAgent
import FleetManager
import Foundation
import LocalServices
import Logging
import MQTT
import MessageSchema
import PaymentSDK
import RelayOutput
import TestSupport

@main
struct Demo: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pulsebridge-demo",
        abstract: "A demo fleet on this machine: broker, fleet manager, three machines with simulated GPIO, payments.")

    @Flag(help: "Keep everything running after the payments until Ctrl-C, to explore with fleet-manager.")
    var keepRunning = false
    @Flag(help: "Run the fleet on a 3-node nats-server cluster (broker-config/nats-cluster.sh) instead of one mosquitto.")
    var cluster = false

    func run() async throws {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .critical
            return handler
        }
        let demo = DemoFleet()
        do {
            try await demo.run(keepRunning: keepRunning, cluster: cluster)
        } catch {
            FileHandle.standardError.write(Data("pulsebridge-demo: \(error)\n".utf8))
            await demo.stop()
            throw ExitCode(1)
        }
        await demo.stop()
    }
}

/// One simulated machine: its profile, its agent process and its edge log.
struct DemoMachine {
    var id: MachineID
    var kind: String
    var profile: MachineProfile
    var directory: String
    var edgeLog: String { directory + "/edges.jsonl" }
    var process: ChildProcess?
    /// Bytes of the edge log already shown.
    var shown = 0
}

final class DemoFleet: @unchecked Sendable {
    // @unchecked: used from the demo's one task, in order.
    var broker: LocalMosquitto?
    var cluster: LocalNATSCluster?
    var machines: [DemoMachine] = []
    var serve: Task<Void, any Error>?
    var payments: PaymentClient?
    var publisher: MQTTClient?
    var backend: (any ProvisioningBackend)?
    var paymentServer: ChildProcess?
    let started = ContinuousClock.now
    let directory = NSTemporaryDirectory() + "pulsebridge-demo-\(UUID().uuidString.prefix(8))"

    func say(_ text: String) {
        let elapsed = ContinuousClock.now - started
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        print(String(format: "[%6.2fs] ", seconds) + text)
    }

    static func coin(_ value: Int, line: Int, pulse: Int, gap: Int) -> OutputConfig {
        OutputConfig(channel: "coin", chip: "gpiochip0", line: line, valuePerPulse: value, pulseMs: pulse, gapMs: gap)
    }

    func run(keepRunning: Bool, cluster useCluster: Bool = false) async throws {
        print("PulseBridge demo fleet — everything runs on this machine, on loopback; GPIO is simulated.\n")
        let binaries = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
            .deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)

        let pagePort = try LoopbackPort.free()
        let pageBase = "http://127.0.0.1:\(pagePort)"
        let home: FleetHome
        if useCluster {
            let cluster = try await LocalNATSCluster.start()
            self.cluster = cluster
            let ports = cluster.mqttPorts
            say("nats-server cluster of 3 nodes started in \(cluster.directory) (MQTT on \(ports.map(String.init).joined(separator: ", "))): JetStream MQTT, MQTT 3.1.1")
            var options = FleetSetup.Options.natsCluster(cluster, home: directory + "/fleet")
            options.paymentUrlTemplate = pageBase + "/m/{machineId}"
            home = try await FleetSetup.initialize(options)
        } else {
            let broker = try await LocalMosquitto.start(template: "dynsec")
            self.broker = broker
            say("mosquitto \(broker.host):\(broker.port) started from broker-config/templates/dynsec.conf (dynamic security, no anonymous access)")
            home = try await FleetSetup.initialize(
                FleetSetup.Options(
                    home: directory + "/fleet", brokerHost: broker.host, brokerPort: broker.port, adminPassword: broker.adminPassword!,
                    deviceBrokerUrl: "mqtt://127.0.0.1:\(broker.port)", paymentUrlTemplate: pageBase + "/m/{machineId}"))
        }
        say("fleet created at \(home.path): fleet key \(try home.signingKey(.fleet).kid), payment key \(try home.signingKey(.payment).kid)")

        machines = [
            DemoMachine(
                id: "laundry-01", kind: "coin laundry",
                profile: MachineProfile(maxAmount: 2000, heartbeatS: 1, postVendDelayMs: 300, outputs: [Self.coin(100, line: 17, pulse: 50, gap: 50)], inhibit: nil),
                directory: directory + "/laundry-01"),
            DemoMachine(
                id: "wash-01", kind: "car wash with a bill channel",
                profile: MachineProfile(
                    maxAmount: 5000, heartbeatS: 1, postVendDelayMs: 300,
                    outputs: [Self.coin(100, line: 17, pulse: 30, gap: 30), OutputConfig(channel: "bill", chip: "gpiochip0", line: 27, valuePerPulse: 1000, pulseMs: 100, gapMs: 150)],
                    inhibit: nil),
                directory: directory + "/wash-01"),
            DemoMachine(
                id: "vend-01", kind: "vending machine with an inhibit line",
                profile: MachineProfile(
                    maxAmount: 500, heartbeatS: 1, postVendDelayMs: 300, outputs: [Self.coin(10, line: 5, pulse: 40, gap: 60)],
                    inhibit: InhibitConfig(chip: "gpiochip0", line: 22, activeLow: true)),
                directory: directory + "/vend-01"),
        ]

        let backend = try await home.provisioningBackend()
        let publisher = try await home.settings.manager.connect(clientID: "fleet-manager-demo")
        self.backend = backend
        self.publisher = publisher
        let provisioner = Provisioner(home: home, backend: backend, publisher: publisher)
        for index in machines.indices {
            let machine = machines[index]
            let outcome = try await provisioner.provision(machine.id, profile: machine.profile)
            let outputs = machine.profile.outputs.map { "\($0.channel) \($0.valuePerPulse) JPY (\($0.pulseMs)/\($0.gapMs) ms)" }.joined(separator: ", ")
            say("provisioned \(machine.id), a \(machine.kind): \(outputs); bundle \(outcome.bundlePath)")
        }

        let monitor = try FleetMonitor(home: home)
        serve = Task { try await monitor.run() }
        say("fleet-manager serve is watching the fleet")

        for index in machines.indices {
            try FileManager.default.createDirectory(atPath: machines[index].directory, withIntermediateDirectories: true)
            machines[index].process = try ChildProcess.spawn(
                binaries + "/edge-agent",
                ["run", "--bundle", home.bundlesDirectory + "/\(machines[index].id.rawValue).json", "--state-dir", machines[index].directory + "/state",
                 "--gpio", "sim:\(machines[index].edgeLog)"],
                outputPath: machines[index].directory + "/agent.log")
        }
        let (kid, key) = try home.signingKey(.payment)
        try await startPaymentServer(home, backend: backend, binaries: binaries, port: pagePort)
        say("payment-server \(pageBase) started (its own broker identity payment-server-web, simulated provider)")
        let payments = try await PaymentClient.connect(home.settings.paymentServer, topics: home.topics, kid: kid, key: key)
        self.payments = payments
        for machine in machines {
            guard await waitOnline(machine.id, payments) else { throw FleetError("\(machine.id) did not come online; see \(machine.directory)/agent.log") }
            say("\(machine.id) is online (edge agent pid \(machine.process!.pid), edge log \(machine.edgeLog))")
        }
        // serve must see the units too before anything is paid (on a cluster, its
        // subscriptions are replicated consumers that take a moment to set up).
        let watched = ContinuousClock.now + .seconds(60)
        while try home.registry.unitStateCounts()["online", default: 0] < machines.count {
            guard ContinuousClock.now < watched else { throw FleetError("serve did not see the units come online within 60 s") }
            try await Task.sleep(for: .milliseconds(50))
        }
        for index in machines.indices { machines[index].shown = edgeLogSize(machines[index]) }

        print("\nPayments: payment → decision → pulses (measured on the edge log) → result\n")
        let first = try await pay(0, 400, "u-alice", payments)
        _ = try await pay(1, 1500, "u-bob", payments)
        _ = try await pay(2, 150, "u-carol", payments)

        say("the same payment for laundry-01 again (a payment server retrying)")
        let again = try await payments.publishAndWait(first.payment, envelope: SignedEnvelope.sign(first.payment, kid: kid, key: key).encoded())
        report(0, again)

        say("a payment for laundry-01 issued 2 minutes ago, valid 60 s (sent without MQTT expiry, as a 3.1.1 server would)")
        let issued = Int(Date().timeIntervalSince1970 * 1000) - 120_000
        let stale = PaymentCompleted(
            paymentId: PaymentID(unchecked: "p-demo-expired"), machineId: "laundry-01", amount: 200, currency: "JPY", userId: "u-dave",
            issuedAt: issued, expiresAt: issued + 60_000)
        let staleResult = try await payments.publishAndWait(
            stale, envelope: SignedEnvelope.sign(stale, kid: kid, key: key).encoded(), messageExpiry: false)
        report(0, staleResult)

        say("vend-01's door opens: its inhibit input goes active")
        try SimulatedLineDriver(edgeLogPath: machines[2].edgeLog).setInhibit(true)
        _ = try await pay(2, 120, "u-erin", payments)
        try SimulatedLineDriver(edgeLogPath: machines[2].edgeLog).setInhibit(false)
        say("vend-01's door closes")
        _ = try await pay(1, 9000, "u-bob", payments)
        _ = try await pay(0, 300, "u-bob", payments)
        _ = try await pay(2, 120, "u-erin", payments)

        print("\nA customer at laundry-01: scan the code → payment page → checkout → credited\n")
        let code = try PaymentCode(machine: "laundry-01", template: home.settings.paymentUrlTemplate)
        print(code.text())
        say("the code reads \(code.url)")
        var customer = WebCustomer(base: pageBase)
        let paid = try await customer.pay(machine: "laundry-01", amount: 400, card: "4242424242424242")
        say("  page: \(paid.state): \(paid.text)")
        for line in pulseLines(0) { say("  pulses: \(line)") }
        let declined = try await customer.pay(machine: "laundry-01", amount: 400, card: "4000000000000002")
        say("  a declined card: \(declined.state): \(declined.text)")

        // serve writes what it saw; wait until every payment is recorded, and a heartbeat with
        // the counters has come from every unit.
        try await Task.sleep(for: .seconds(2))
        let deadline = ContinuousClock.now + .seconds(10)
        let made = 9  // distinct payment IDs above (the duplicate reuses one; the declined card sent none)
        while ContinuousClock.now < deadline, try home.registry.payments().filter({ $0.status != nil && $0.userId != nil }).count < made {
            try await Task.sleep(for: .milliseconds(50))
        }
        print("\nThe fleet (fleet-manager devices):\n")
        try printDevices(home)
        print("\nCustomers (fleet-manager report customers):\n")
        let customers = FleetReports.customerTable(FleetReports.customers(try home.registry.payments()))
        print(FleetReports.render(headers: customers.headers, rows: customers.rows, format: "table"))
        print("Machines (fleet-manager report machines):\n")
        let machines = FleetReports.machineTable(try home.registry.machineDays())
        print(FleetReports.render(headers: machines.headers, rows: machines.rows, format: "table"))

        if keepRunning {
            print("""
                Still running. Open a machine's payment page in a browser (test card 4242424242424242 approves):
                  \(pageBase)/m/laundry-01   \(pageBase)/m/wash-01   \(pageBase)/m/vend-01
                Explore in another terminal:
                  PULSEBRIDGE_HOME=\(home.path) \(binaries)/fleet-manager devices
                  PULSEBRIDGE_HOME=\(home.path) \(binaries)/fleet-manager pay laundry-01 500 --user u-you
                  PULSEBRIDGE_HOME=\(home.path) \(binaries)/fleet-manager code wash-01
                (serve runs inside this demo, so `devices` and reports stay current.) Ctrl-C stops everything.
                """)
            await waitForInterrupt()
        }
    }

    /// `payment-server` as an operator runs it: its own broker identity, config file and database.
    func startPaymentServer(_ home: FleetHome, backend: any ProvisioningBackend, binaries: String, port: Int) async throws {
        let menus: [MachineID: [(label: String, amount: Int)]] = [
            "laundry-01": [("Wash", 400), ("Dry 10 min", 100)],
            "wash-01": [("Quick wash", 500), ("Full wash", 1500)],
            "vend-01": [("Drink", 120), ("Snack", 150)],
        ]
        let configPath = try await PaymentServerSetup.prepare(
            home: home, backend: backend, directory: directory, port: port,
            machines: machines.map {
                PaidMachine(
                    id: $0.id, name: $0.id.rawValue, place: "PulseBridge demo, a \($0.kind)", menu: menus[$0.id] ?? [],
                    freeAmount: ($0.profile.outputs[0].valuePerPulse, $0.profile.maxAmount), profile: $0.profile)
            },
            paymentTtlS: 60, unknownWaitS: 30)
        let server = try ChildProcess.spawn(
            binaries + "/payment-server", ["run", "--config", configPath, "--log-level", "warning"], outputPath: directory + "/payment-server.log")
        paymentServer = server
        try await PaymentServerSetup.waitUntilServing(server, port: port)
    }

    func waitOnline(_ machine: MachineID, _ payments: PaymentClient) async -> Bool {
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline {
            if await payments.status(of: machine, timeout: .milliseconds(500))?.state == .online { return true }
        }
        return false
    }

    func pay(_ index: Int, _ amount: Int, _ user: UserID, _ payments: PaymentClient) async throws -> PaymentOutcome {
        let machine = machines[index]
        say("pay \(machine.id) \(amount) JPY by \(user)")
        let outcome = try await payments.pay(machine.id, amount: amount, currency: "JPY", userId: user)
        report(index, outcome)
        return outcome
    }

    func report(_ index: Int, _ outcome: PaymentOutcome) {
        guard let result = outcome.result else {
            say("  no result by expiresAt + 5 s → \(outcome.action.rawValue)")
            return
        }
        var decision = "  decision: \(result.status.rawValue)"
        if let reason = result.reason { decision += " (\(reason.rawValue))" }
        if let original = result.original { decision += ", first decision \(original.status.rawValue) \(original.amount) JPY" }
        if !result.pulses.isEmpty { decision += "; plan " + result.pulses.map { "\($0.channel) ×\($0.count)" }.joined(separator: " + ") }
        say(decision)
        for line in pulseLines(index) { say("  pulses: \(line)") }
        say("  result: \(outcome.payment.paymentId) \(result.status.rawValue), \(result.amount) JPY, \(result.pulsesFired) pulses, seq \(result.seq) → \(outcome.action.rawValue)")
    }

    /// The pulses added to a machine's edge log since last shown, with measured widths.
    func pulseLines(_ index: Int) -> [String] {
        let machine = machines[index]
        guard let data = FileManager.default.contents(atPath: machine.edgeLog), data.count > machine.shown else { return [] }
        let edges = data[machine.shown...].split(separator: UInt8(ascii: "\n")).compactMap { try? JSONDecoder().decode(SimulatedEdge.self, from: $0) }
        machines[index].shown = data.count
        var lines: [String] = []
        for output in machine.profile.outputs {
            let onLine = edges.filter { $0.line == output.line }
            var widths: [Double] = []
            var rise: UInt64?
            for edge in onLine {
                if edge.active { rise = edge.tNs } else if let start = rise {
                    widths.append(Double(edge.tNs - start) / 1e6)
                    rise = nil
                }
            }
            guard !widths.isEmpty else { continue }
            let shown = widths.prefix(6).map { String(format: "%.2f", $0) }.joined(separator: " ")
            lines.append("\(output.channel) line \(output.line): \(widths.count) × (set \(output.pulseMs) ms, measured \(shown)\(widths.count > 6 ? " …" : "") ms)")
        }
        return lines
    }

    func edgeLogSize(_ machine: DemoMachine) -> Int {
        (try? FileManager.default.attributesOfItem(atPath: machine.edgeLog)[.size] as? Int) ?? 0
    }

    func printDevices(_ home: FleetHome) throws {
        let units = try home.registry.overviews(now: Int(Date().timeIntervalSince1970 * 1000))
        print(FleetReports.render(
            headers: ["MACHINE", "STATE", "FIRMWARE", "CONFIG D/A", "CREDITED", "AMOUNT", "REJECTED", "DUPLICATE", "ALERTS"],
            rows: units.map { unit in
                [
                    unit.machineId, unit.state, unit.firmware ?? "-",
                    "\(unit.desiredConfigVersion.map(String.init) ?? "-")/\(unit.appliedConfigVersion.map(String.init) ?? "-")",
                    "\(unit.counters?.credited ?? 0)", "\(unit.counters?.creditedAmount ?? 0)", "\(unit.counters?.rejected ?? 0)",
                    "\(unit.counters?.duplicate ?? 0)", unit.alerts.isEmpty ? "-" : unit.alerts.joined(separator: "; "),
                ]
            }, format: "table"))
    }

    func waitForInterrupt() async {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self)
        signal(SIGINT, SIG_IGN)
        signal(SIGTERM, SIG_IGN)
        let sources = [SIGINT, SIGTERM].map { sig -> DispatchSourceSignal in
            let source = DispatchSource.makeSignalSource(signal: sig)
            source.setEventHandler { continuation.yield() }
            source.resume()
            return source
        }
        for await _ in stream { break }
        for source in sources { source.cancel() }
    }

    /// Stops everything the demo started: agents (SIGTERM: they publish offline and leave
    /// outputs inactive), serve, clients, broker.
    func stop() async {
        await paymentServer?.terminate(grace: .seconds(10))
        for machine in machines { await machine.process?.terminate(grace: .seconds(10)) }
        serve?.cancel()
        _ = await serve?.result
        await payments?.close()
        await publisher?.close()
        await backend?.close()
        await broker?.stop()
        await cluster?.stop()
        say("stopped: payment server, agents (outputs inactive), serve, broker. Files kept in \(directory)")
    }
}
