import Foundation
import Testing
import TestSupport

/// The chaos run in short form (the benchmark runs the long one): payments keep flowing while
/// agents are SIGKILLed and restarted, the broker restarts and duplicates are injected; no
/// payment may end without exactly one final result, and the edge logs must match the books.
@Suite(.timeLimit(.minutes(10)))
struct ChaosTests {
    @Test func noMoneyIsLostOrMadeUp() async throws {
        var options = ChaosRun.Options()
        options.payments = 150
        options.machines = 3
        options.rate = 30
        options.killEvery = .milliseconds(900)
        options.brokerRestartEvery = .seconds(3)
        options.ttl = .seconds(60)
        let report = try await ChaosRun.run(options)
        #expect(report.violations.isEmpty, "\(report.violations.prefix(20))")
        #expect(report.withoutResult == 0)
        #expect(report.credited + report.rejected + report.uncertain == report.payments)
        #expect(report.kills > 0)
        #expect(report.brokerRestarts > 0)
        #expect(report.credited > 0)
        // The forging unit and the forged completions were all sent and all ignored, and the
        // full disk was survived, with the books above still balanced.
        #expect(report.forgeriesSent > 0)
        #expect(report.forgeriesIgnored > 0)
        #expect(report.diskFullPhases == 1)
        for books in report.books { #expect(books.activations >= books.creditedPulses, "\(books)") }
    }
}
