import Foundation
import LocalServices
import Testing
import TestSupport

/// The README's first command ends in `pulsebridge-demo`: run it and check what it shows.
@Suite(.timeLimit(.minutes(4)))
struct DemoTests {
    @Test func demoRunsTheWholeStoryAndStopsEverything() async throws {
        let binary = URL(fileURLWithPath: AgentUnit.binary).deletingLastPathComponent().appendingPathComponent("pulsebridge-demo").path
        let out = NSTemporaryDirectory() + "demo-\(UUID().uuidString).out"
        let demo = try ChildProcess.spawn(binary, [], outputPath: out)
        #expect(await demo.waitForExit() == .exited(0))
        let output = demo.output()
        for expected in [
            "decision: credited; plan coin ×4",
            "decision: credited; plan coin ×5 + bill ×1",
            "decision: duplicate, first decision credited 400 JPY",
            "decision: rejected (expired)",
            "decision: rejected (machine_inhibited)",
            "decision: rejected (over_limit)",
            "the code reads http://127.0.0.1:",
            "page: captured: Credited: 4 pulses. Start your machine!",
            "a declined card: declined: Your payment was declined. You have not been charged.",
            "stopped: payment server, agents (outputs inactive), serve, broker",
        ] {
            #expect(output.contains(expected), "missing: \(expected)\n\(output)")
        }
        let bob = output.split(separator: "\n").first { $0.hasPrefix("u-bob ") }?.split(separator: " ").map(String.init)
        // USER, CURRENCY, PAYMENTS, AMOUNT, MACHINES…, FIRST SEEN, LAST SEEN
        #expect(bob?.prefix(6) == ["u-bob", "JPY", "2", "1800", "laundry-01", "wash-01"], "\(output)")
        #expect(bob?.count == 8)
        // Measured widths are printed from the edge log (their values are the benchmark's business).
        #expect(output.contains("coin line 17: 4 × (set 50 ms, measured "))
    }
}
