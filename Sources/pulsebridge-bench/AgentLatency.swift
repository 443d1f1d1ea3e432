import ArgumentParser
import EdgeAgent
import Foundation
import LocalServices
import MQTT
import MessageSchema
import RelayOutput
import TestSupport

/// The real `edge-agent` binary against a real broker: publish of `payment.completed` → first
/// edge in the simulated edge log, and → `payment.result` received; the agent's memory and
/// idle CPU.
struct AgentLatency: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent", abstract: "Payment → first edge → result latency; agent RSS and idle CPU.")
    @Option(help: "Payments to time (one 10 ms pulse each).")
    var count = 1000
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(count: count))
    }

    static func measure(count: Int) async throws -> [Measurement] {
        var measurements: [Measurement] = []
        let fleet = try await FleetHarness.start()
        do {
            let machine: MachineID = "bench-01"
            let pulse = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 1, pulseMs: 10, gapMs: 10)
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [pulse], maxAmount: 1_000_000, heartbeatS: 30))
            // The release agent beside this benchmark, not a debug build.
            try unit.start(binary: productsDirectory() + "/edge-agent")
            _ = try await fleet.status(machine, .online)
            guard let pid = unit.child?.pid else { throw ValidationError("agent did not start") }

            var edgeOffset = 0
            func newActivations() -> [SimulatedEdge] {
                guard let data = FileManager.default.contents(atPath: unit.edgeLogPath), data.count > edgeOffset else { return [] }
                let fresh = data[edgeOffset...]
                edgeOffset = data.count
                return fresh.split(separator: UInt8(ascii: "\n")).compactMap { try? JSONDecoder().decode(SimulatedEdge.self, from: $0) }.filter(\.active)
            }
            _ = newActivations()

            var toEdge: [Double] = []
            var toResult: [Double] = []
            for i in 0..<(count + 20) {
                let payment = fleet.payment(machine, amount: 1)
                // Signed beforehand: the clock starts when the message is handed to MQTT.
                let envelope = SignedEnvelope.sign(payment, kid: fleet.paymentKid, key: fleet.paymentKey).encoded()
                let t0 = monotonicNanoseconds()
                try await fleet.publishRaw(envelope, to: machine, expiry: 30)
                _ = try await fleet.result(payment.paymentId, machine: machine)
                let t1 = monotonicNanoseconds()
                guard let edge = newActivations().first else { throw ValidationError("no edge for payment \(i)") }
                if i >= 20 {  // warm-up
                    toEdge.append(Double(edge.tNs - t0) / 1000)
                    toResult.append(Double(t1 - t0) / 1000)
                }
            }
            let edges = Distribution(toEdge)
            let results = Distribution(toResult)
            measurements += [
                Measurement(benchmark: "agent.publish-to-first-edge", metric: "p50", value: edges.p50, unit: "µs"),
                Measurement(benchmark: "agent.publish-to-first-edge", metric: "p99", value: edges.p99, unit: "µs"),
                Measurement(benchmark: "agent.publish-to-first-edge", metric: "max", value: edges.max, unit: "µs"),
                Measurement(benchmark: "agent.publish-to-result", metric: "p50", value: results.p50, unit: "µs"),
                Measurement(benchmark: "agent.publish-to-result", metric: "p99", value: results.p99, unit: "µs"),
                Measurement(benchmark: "agent.publish-to-result", metric: "max", value: results.max, unit: "µs"),
            ]

            // Idle: CPU over 10 s with nothing to do, and resident memory.
            try await Task.sleep(for: .seconds(1))
            let cpu0 = cpuTicks(pid)
            try await Task.sleep(for: .seconds(10))
            let cpu1 = cpuTicks(pid)
            let idleRSS = rssKiB(pid)
            measurements.append(Measurement(benchmark: "agent.idle", metric: "CPU", value: Double(cpu1 - cpu0) / Double(sysconf(Int32(_SC_CLK_TCK))) / 10 * 100, unit: "% of a core"))
            measurements.append(Measurement(benchmark: "agent.idle", metric: "RSS", value: Double(idleRSS) / 1024, unit: "MiB"))

            // During a train of 200 pulses (4 s).
            let long = fleet.payment(machine, amount: 200)
            try await fleet.publish(long)
            try await unit.waitForActivations(edgesSoFar(unit) + 50)
            let trainRSS = rssKiB(pid)
            _ = try await fleet.result(long.paymentId, machine: machine)
            measurements.append(Measurement(benchmark: "agent.during-train", metric: "RSS", value: Double(trainRSS) / 1024, unit: "MiB"))
            await unit.terminate()
        } catch {
            await fleet.stop()
            throw error
        }
        await fleet.stop()
        return measurements
    }

    static func edgesSoFar(_ unit: AgentUnit) -> Int { unit.edges.filter(\.active).count }

    static func cpuTicks(_ pid: pid_t) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = text.lastIndex(of: ")")
        else { return 0 }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command name: state is field 3; utime and stime are fields 14 and 15.
        return (Int(fields[11]) ?? 0) + (Int(fields[12]) ?? 0)
    }

    static func rssKiB(_ pid: pid_t) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }
}
