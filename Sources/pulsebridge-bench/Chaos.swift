import ArgumentParser
import Foundation
import TestSupport

/// The chaos run: payments while agents are killed and the broker restarts; the books.
struct Chaos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos", abstract: "Payments through SIGKILLs, broker restarts and duplicates; checks the books.")
    @Option(help: "Payments.") var payments = 2000
    @Option(help: "Agents.") var machines = 4
    @Option(help: "Payments published per second.") var rate = 40.0
    @Option(help: "Seconds between agent kills.") var killEvery = 2.0
    @Option(help: "Seconds between broker restarts.") var brokerRestartEvery = 10.0
    @OptionGroup var output: OutputOptions

    func run() async throws {
        var options = ChaosRun.Options()
        options.payments = payments
        options.machines = machines
        options.rate = rate
        options.killEvery = .milliseconds(Int(killEvery * 1000))
        options.brokerRestartEvery = .milliseconds(Int(brokerRestartEvery * 1000))
        let report = try await ChaosRun.run(options) { FileHandle.standardError.write(Data("chaos: \($0)\n".utf8)) }
        try output.print(Self.measurements(report))
        if !output.json {
            for books in report.books { print("  \(books)") }
            print("  final outcomes: \(report.reasons.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
            print(report.violations.isEmpty ? "  books balance: no violations" : "  VIOLATIONS:\n    " + report.violations.prefix(30).joined(separator: "\n    "))
        }
        if !report.violations.isEmpty { throw ExitCode(1) }
    }

    static func measurements(_ report: ChaosRun.Report) -> [Measurement] {
        [
            ("payments", Double(report.payments), ""), ("credited", Double(report.credited), ""),
            ("rejected", Double(report.rejected), ""), ("uncertain", Double(report.uncertain), ""),
            ("without a result", Double(report.withoutResult), ""), ("duplicates injected", Double(report.duplicatesInjected), ""),
            ("duplicate results", Double(report.duplicateResults), ""), ("re-sent by the server", Double(report.republished), ""),
            ("agent kills", Double(report.kills), ""), ("broker restarts", Double(report.brokerRestarts), ""),
            ("forgeries sent", Double(report.forgeriesSent), ""), ("forged or foreign results ignored", Double(report.forgeriesIgnored), ""),
            ("disk-full phases", Double(report.diskFullPhases), ""),
            ("violations", Double(report.violations.count), ""), ("wall time", report.seconds, "s"),
        ].map { Measurement(benchmark: "chaos", metric: $0.0, value: $0.1, unit: $0.2) }
    }
}
