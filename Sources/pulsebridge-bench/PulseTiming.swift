import ArgumentParser
import Foundation
import LocalServices
import MessageSchema
import RelayOutput

/// Edge timing error of the pulse engine (actual − scheduled), on the simulated driver,
/// idle and with both cores busy from other processes.
struct PulseTiming: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pulses", abstract: "Pulse edge timing error, idle and under CPU load.")
    @Option(help: "Pulses per run (10 ms on, 10 ms off).")
    var count = 1000
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(count: count))
    }

    static func measure(count: Int) async throws -> [Measurement] {
        var results: [Measurement] = []
        let rt = RealtimePolicy(fifoPriority: 50, lockMemory: false)
        let normal = RealtimePolicy(fifoPriority: nil, lockMemory: false)
        let idle = try await run(count: count, policy: rt)
        results += rows("pulses.idle\(idle.realtime ? ".fifo" : "")", idle.errors)
        let loaded = try await withLoad { try await run(count: count, policy: rt) }
        results += rows("pulses.loaded\(loaded.realtime ? ".fifo" : "")", loaded.errors)
        let loadedNormal = try await withLoad { try await run(count: count, policy: normal) }
        results += rows("pulses.loaded.no-rt", loadedNormal.errors)
        return results
    }

    static func rows(_ name: String, _ errors: Distribution) -> [Measurement] {
        [
            Measurement(benchmark: name, metric: "edge error p50", value: errors.p50, unit: "µs"),
            Measurement(benchmark: name, metric: "edge error p99", value: errors.p99, unit: "µs"),
            Measurement(benchmark: name, metric: "edge error max", value: errors.max, unit: "µs"),
        ]
    }

    static func run(count: Int, policy: RealtimePolicy) async throws -> (errors: Distribution, realtime: Bool) {
        let engine = PulseEngine(realtime: policy)
        defer { engine.shutdown() }
        let log = NSTemporaryDirectory() + "bench-edges-\(UUID().uuidString).jsonl"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let output = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 1, pulseMs: 10, gapMs: 10)
        let lines = try SimulatedLineDriver(edgeLogPath: log).open(outputs: [output], inhibit: nil)
        defer { lines.close() }
        let report = await engine.fire(try PulsePlan.make(amount: count, outputs: [output]), on: lines)
        guard report.outcome == .completed else { throw ValidationError("train ended \(report.outcome)") }
        return (Distribution(report.edges.map { Double($0.errorNs) / 1000 }), engine.isRealtime)
    }

    /// Runs `body` while two CPU hogs (stress-ng, or busy shell loops) keep both cores busy.
    static func withLoad<T>(_ body: () async throws -> T) async throws -> T {
        let hogs: [ChildProcess]
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/stress-ng") {
            hogs = [try ChildProcess.spawn("/usr/bin/stress-ng", ["--cpu", "2", "--timeout", "120s", "--quiet"])]
        } else {
            hogs = try (0..<2).map { _ in try ChildProcess.spawn("/bin/sh", ["-c", "while :; do :; done"]) }
        }
        defer { for hog in hogs { hog.send(SIGKILL) } }
        // Let the hogs reach full speed.
        try await Task.sleep(for: .milliseconds(500))
        let result = try await body()
        for hog in hogs { await hog.terminate(grace: .seconds(2)) }
        return result
    }
}
