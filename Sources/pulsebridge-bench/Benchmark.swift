import ArgumentParser
import Foundation

/// One number a benchmark measured.
struct Measurement: Codable, Sendable {
    var benchmark: String
    var metric: String
    var value: Double
    var unit: String
}

/// Percentiles of a set of samples.
struct Distribution: Sendable {
    let sorted: [Double]
    init(_ samples: [Double]) { sorted = samples.sorted() }
    func percentile(_ p: Double) -> Double {
        guard !sorted.isEmpty else { return .nan }
        return sorted[Swift.min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }
    var p50: Double { percentile(0.50) }
    var p99: Double { percentile(0.99) }
    var max: Double { sorted.last ?? .nan }
    var min: Double { sorted.first ?? .nan }
    var mean: Double { sorted.reduce(0, +) / Double(Swift.max(sorted.count, 1)) }
}

/// Folder of this executable, where SwiftPM also put its sibling products.
func productsDirectory() -> String {
    let path = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return URL(fileURLWithPath: path).deletingLastPathComponent().path
}

struct OutputOptions: ParsableArguments {
    @Flag(help: "Print machine-readable JSON instead of a table.")
    var json = false

    func print(_ measurements: [Measurement]) throws {
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            Swift.print(String(decoding: try encoder.encode(measurements), as: UTF8.self))
            return
        }
        let nameWidth = max(12, measurements.map { $0.benchmark.count }.max() ?? 0)
        let metricWidth = max(10, measurements.map { $0.metric.count }.max() ?? 0)
        Swift.print(
            "benchmark".padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  "
                + "metric".padding(toLength: metricWidth, withPad: " ", startingAt: 0) + "  value")
        for m in measurements {
            let value = m.value.rounded() == m.value && abs(m.value) < 1e12
                ? String(Int64(m.value)) : String(format: "%.1f", m.value)
            Swift.print(
                m.benchmark.padding(toLength: nameWidth, withPad: " ", startingAt: 0) + "  "
                    + m.metric.padding(toLength: metricWidth, withPad: " ", startingAt: 0) + "  \(value) \(m.unit)")
        }
    }
}

@main
struct PulseBridgeBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pulsebridge-bench",
        abstract: "Measures PulseBridge: MQTT round trips, envelope verification, pulse timing.",
        discussion: "Build in release mode for real numbers: swift run -c release pulsebridge-bench all",
        subcommands: [All.self, FleetScale.self, ClusterScale.self, Simulate.self, MQTTRoundTrip.self, EnvelopeVerification.self, PulseTiming.self, AgentLatency.self, BulkProvisioning.self, ServeIngest.self, ConsoleScale.self, Chaos.self, PaymentPage.self, PeerComparison.self, JournalCommit.self])

    struct All: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Runs every benchmark and prints one table.")
        @OptionGroup var output: OutputOptions

        func run() async throws {
            var measurements: [Measurement] = []
            measurements += try await MQTTRoundTrip.measure(count: 10_000)
            measurements += try EnvelopeVerification.measure(count: 20_000)
            measurements += try await PulseTiming.measure(count: 1000)
            measurements += try await AgentLatency.measure(count: 1000)
            measurements += try await BulkProvisioning.measure(count: 1000)
            measurements += try await ServeIngest.measure(units: 1000)
            measurements += try await ServeIngest.measure(units: 5000)
            measurements += try await PaymentPage.measure()
            try output.print(measurements)
        }
    }
}
