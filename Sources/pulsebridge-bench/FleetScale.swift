import ArgumentParser
import FleetManager
import Foundation
import LocalServices
import TestSupport
import Locking
import MessageSchema
import PaymentSDK
import UnitSimulator

#if canImport(Glibc)
    import Glibc
#endif

/// A whole fleet on one mosquitto and one `serve` (the release binary): N units provisioned
/// with the password-file administration, N simulated units (each its own MQTT session and
/// credentials), then: time until all are online (the units' CONNACKs, and serve's registry),
/// payments at a steady rate (publish → result), broker and serve CPU and memory, and a broker
/// restart with payments still flowing: time until all are back online, and what became of
/// each payment sent meanwhile.
struct FleetScale: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet",
        abstract: "10,000 simulated units on one mosquitto and serve: provisioning, online, payments p50/p99, broker restart, CPU/RSS.")
    @Option(help: "Simulated units.") var units = 10_000
    @Option(help: "Seconds between heartbeats of each unit.") var heartbeat = 30
    @Option(help: "Payments per second across the fleet.") var paymentRate = 20
    @Option(help: "Seconds of steady payments measured.") var seconds = 20
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(units: units, heartbeat: heartbeat, paymentRate: paymentRate, seconds: seconds))
    }

    static func measure(units count: Int, heartbeat: Int, paymentRate: Int, seconds: Int) async throws -> [Measurement] {
        UnitFleet.raiseFileLimit()  // the broker inherits it
        let broker = try await LocalMosquitto.start(template: "files")
        let dir = NSTemporaryDirectory() + "bench-fleet-\(UUID().uuidString)"
        var serve: ChildProcess?
        var simulator: ChildProcess?
        let name = "fleet.\(count)-units"
        var rows: [Measurement] = []
        func row(_ metric: String, _ value: Double, _ unit: String) { rows.append(Measurement(benchmark: name, metric: metric, value: value, unit: unit)) }
        do {
            let home = try await FleetSetup.initialize(.passwordFile(broker, home: dir))

            // Provisioning, as `provision --from` runs it.
            let csv = dir + "/machines.csv"
            let machines = (0..<count).map { MachineID(unchecked: String(format: "unit-%05d", $0)) }
            try machines.map(\.rawValue).joined(separator: "\n").write(toFile: csv, atomically: true, encoding: .utf8)
            let provisionStart = ContinuousClock.now
            let report = try await home.withProvisioner(purpose: "bench") { try await $0.provisionAll(csv: csv) }
            let provisionSeconds = (ContinuousClock.now - provisionStart).secondsDouble
            guard report.provisioned.count == count else { throw ValidationError("provisioning failed: \(report.failed.prefix(3))") }
            row("provision rate", (Double(count) / provisionSeconds).rounded(), "units/s")

            serve = try ChildProcess.spawn(productsDirectory() + "/fleet-manager", ["serve", "--home", dir], outputPath: dir + "/serve.log")
            // The units in a process of their own (`simulate`); trains answered at once: this
            // measures the path, not the coin mechanism's pulses.
            let connectStart = ContinuousClock.now
            let statsPath = dir + "/simulator.jsonl"
            simulator = try ChildProcess.spawn(
                productsDirectory() + "/pulsebridge-bench",
                ["simulate", "--bundles", home.bundlesDirectory, "--port", String(broker.port), "--heartbeat", String(heartbeat), "--instant-trains"],
                outputPath: statsPath)
            let units = SimulatorProcess(statsPath: statsPath)
            try await units.waitUntil("every unit online", timeout: .seconds(300)) { $0.online == count }
            row("all online (units)", (ContinuousClock.now - connectStart).secondsDouble, "s")
            try await waitForServe(home, online: count, timeout: .seconds(300))
            row("all online (serve)", (ContinuousClock.now - connectStart).secondsDouble, "s")

            // Steady payments, with CPU and memory of broker and serve meanwhile.
            let (kid, key) = try home.signingKey(.payment)
            let payments = try await PaymentClient.connect(home.settings.paymentServer, topics: home.topics, kid: kid, key: key)
            let currency = CurrencyCode(unchecked: home.settings.currency)
            let brokerPid = broker.processForTesting!.pid
            let ticks = (broker: AgentLatency.cpuTicks(brokerPid), serve: AgentLatency.cpuTicks(serve!.pid))
            let steadyStart = ContinuousClock.now
            let steady = try await payStream(payments, machines: machines, currency: currency, rate: paymentRate, for: .seconds(seconds))
            let wall = (ContinuousClock.now - steadyStart).secondsDouble
            let hz = Double(sysconf(Int32(_SC_CLK_TCK)))
            row("broker CPU", (Double(AgentLatency.cpuTicks(brokerPid) - ticks.broker) / hz / wall * 100).rounded(), "%")
            row("broker RSS", Double(AgentLatency.rssKiB(brokerPid)) / 1024, "MiB")
            row("serve CPU", (Double(AgentLatency.cpuTicks(serve!.pid) - ticks.serve) / hz / wall * 100).rounded(), "%")
            row("serve RSS", Double(AgentLatency.rssKiB(serve!.pid)) / 1024, "MiB")
            let latencies = Distribution(steady.latencies)
            row("payments captured", Double(steady.credited), "of \(steady.sent)")
            row("payment round trip p50", latencies.p50, "ms")
            row("payment round trip p99", latencies.p99, "ms")

            // A broker restart with payments flowing.
            let during = Task { try await payStream(payments, machines: machines, currency: currency, rate: paymentRate, for: .seconds(30)) }
            try await Task.sleep(for: .seconds(3))
            let connacks = units.current?.connacks ?? 0
            let restartStart = ContinuousClock.now
            try await broker.restart()
            try await units.waitUntil("every unit back online", timeout: .seconds(300)) { $0.connacks >= connacks + count && $0.online == count }
            row("restart: all back online (units)", (ContinuousClock.now - restartStart).secondsDouble, "s")
            let flowing = try await during.value
            row("restart: payments captured", Double(flowing.credited), "of \(flowing.sent)")
            row("restart: refused before publish", Double(flowing.notPublished), "")
            row("restart: no result (held as unknown)", Double(flowing.noResult), "")
            if let final = units.current {
                row("units: completions received", Double(final.paymentsReceived), "of \(steady.sent + flowing.sent) sent")
                row("units: results sent", Double(final.resultsSent), "")
            }
            await payments.close()

            await simulator?.terminate(grace: .seconds(5))
            simulator = nil
            await serve?.terminate(grace: .seconds(10))
            await broker.stop()
            broker.removeFiles()
            return rows
        } catch {
            await simulator?.terminate(grace: .seconds(5))
            await serve?.terminate(grace: .seconds(5))
            await broker.stop()
            throw error
        }
    }

    struct Stream {
        var sent = 0
        var credited = 0
        var notPublished = 0
        var noResult = 0
        var latencies: [Double] = []
    }

    /// `rate` payments per second to random units for `duration`; each waits for its result.
    static func payStream(
        _ payments: PaymentClient, machines: [MachineID], currency: CurrencyCode, rate: Int, for duration: Duration
    ) async throws -> Stream {
        let stream = Locked(Stream())
        let end = ContinuousClock.now + duration
        try await withThrowingTaskGroup(of: Void.self) { group in
            var next = ContinuousClock.now
            while next < end {
                try await Task.sleep(until: next, clock: .continuous)
                next += .milliseconds(1000 / max(1, rate))
                let machine = machines.randomElement()!
                group.addTask {
                    let sent = ContinuousClock.now
                    stream.withLock { $0.sent += 1 }
                    do {
                        let outcome = try await payments.pay(
                            machine, amount: 100, currency: currency, userId: UserID(unchecked: "bench-user"), ttl: .seconds(60),
                            unknownWait: .seconds(5))
                        let ms = (ContinuousClock.now - sent).secondsDouble * 1000
                        stream.withLock { s in
                            // Captured: credited, or a repeat answered with its credited original
                            // (a completion sent again after a lost PUBACK).
                            if outcome.action == .capture {
                                s.credited += 1
                                if outcome.result?.status == .credited { s.latencies.append(ms) }
                            } else if outcome.result == nil {
                                s.noResult += 1
                            }
                        }
                    } catch {
                        stream.withLock { $0.notPublished += 1 }
                    }
                }
            }
            try await group.waitForAll()
        }
        return stream.withLock { $0 }
    }

    static func waitForServe(_ home: FleetHome, online: Int, timeout: Duration) async throws {
        let registry = home.registry
        try await ServeIngest.waitUntil(timeout: timeout) { (try registry.unitStateCounts()["online"] ?? 0) >= online }
    }
}

/// The counters a `simulate` child prints, one JSON line every 200 ms.
struct SimulatorProcess {
    let statsPath: String

    var current: UnitFleet.Stats? {
        guard let data = FileManager.default.contents(atPath: statsPath) else { return nil }
        let lines = data.split(separator: UInt8(ascii: "\n"))
        guard let last = lines.last(where: { $0.first == UInt8(ascii: "{") && $0.last == UInt8(ascii: "}") }) else { return nil }
        return try? JSONDecoder().decode(UnitFleet.Stats.self, from: Data(last))
    }

    func waitUntil(_ what: String, timeout: Duration, _ condition: (UnitFleet.Stats) -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !(current.map(condition) ?? false) {
            guard ContinuousClock.now < deadline else {
                throw ValidationError("\(what) not reached within \(timeout): \(current.map { "\($0)" } ?? "no counters")")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }
}

extension Duration {
    var secondsDouble: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
