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
        results += rows("pulses.idle\(idle.realtime ? ".fifo" : "")", idle)
        let loaded = try await withLoad { try await run(count: count, policy: rt) }
        results += rows("pulses.loaded\(loaded.realtime ? ".fifo" : "")", loaded)
        let loadedNormal = try await withLoad { try await run(count: count, policy: normal) }
        results += rows("pulses.loaded.no-rt", loadedNormal)
        return results
    }

    /// Two errors per edge: when the line changed (the simulated driver stamps it before it
    /// logs the edge, as a GPIO write would change the line), and when `drive` returned (after
    /// the simulator's own log write, which a real line does not have).
    static func rows(_ name: String, _ run: Run) -> [Measurement] {
        [
            Measurement(benchmark: name, metric: "line change error p50", value: run.lineChange.p50, unit: "µs"),
            Measurement(benchmark: name, metric: "line change error p99", value: run.lineChange.p99, unit: "µs"),
            Measurement(benchmark: name, metric: "line change error max", value: run.lineChange.max, unit: "µs"),
            Measurement(benchmark: name, metric: "drive returned error p99", value: run.driveReturned.p99, unit: "µs"),
        ]
    }

    struct Run {
        var lineChange: Distribution
        var driveReturned: Distribution
        var realtime: Bool
    }

    static func run(count: Int, policy: RealtimePolicy) async throws -> Run {
        let engine = PulseEngine(realtime: policy)
        defer { engine.shutdown() }
        let log = NSTemporaryDirectory() + "bench-edges-\(UUID().uuidString).jsonl"
        defer { try? FileManager.default.removeItem(atPath: log) }
        let output = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 1, pulseMs: 10, gapMs: 10)
        let lines = try SimulatedLineDriver(edgeLogPath: log).open(outputs: [output], inhibit: nil)
        defer { lines.close() }
        let report = await engine.fire(try PulsePlan.make(amount: count, outputs: [output]), on: lines)
        guard report.outcome == .completed else { throw ValidationError("train ended \(report.outcome)") }
        // The train's edges are the log's last ones (opening the lines logs them inactive first).
        let logged = SimulatedEdge.read(log).filter { $0.line == 17 }.suffix(report.edges.count)
        guard logged.count == report.edges.count, zip(logged, report.edges).allSatisfy({ $0.active == $1.active }) else {
            throw ValidationError("the edge log does not match the train's edges")
        }
        let lineChange = zip(logged, report.edges).map { Double(Int64(bitPattern: $0.tNs &- $1.scheduledNs)) / 1000 }
        return Run(
            lineChange: Distribution(lineChange), driveReturned: Distribution(report.edges.map { Double($0.errorNs) / 1000 }),
            realtime: engine.isRealtime)
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
