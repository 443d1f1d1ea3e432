import Foundation
import LocalServices
import Testing
import TestSupport

/// The README's first command ends in `pulsebridge-demo`: run it and check what it shows.
@Suite(.timeLimit(.minutes(4)))
struct DemoTests {
    /// On one mosquitto (the README's command); `--cluster` (a 3-node NATS cluster) only with
    /// PULSEBRIDGE_CLUSTER_TESTS=1, by hand: on the loaded CI machine it lost a result
    /// (docs/scale.md, "Open finding").
    @Test(arguments: [false] + (LocalNATSCluster.testsEnabled ? [true] : []))
    func demoRunsTheWholeStoryAndStopsEverything(onCluster: Bool) async throws {
        let binary = URL(fileURLWithPath: AgentUnit.binary).deletingLastPathComponent().appendingPathComponent("pulsebridge-demo").path
        let out = NSTemporaryDirectory() + "demo-\(UUID().uuidString).out"
        let demo = try ChildProcess.spawn(binary, onCluster ? ["--cluster"] : [], outputPath: out)
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
        if onCluster {
            // "nats-server cluster of 3 nodes started in DIR (MQTT on …)": nothing of it left.
            let line = output.split(separator: "\n").first { $0.contains("nats-server cluster of 3 nodes started in ") }
            let directory = try #require(line?.split(separator: " ").first { $0.hasPrefix("/") }.map(String.init))
            let left = try await LocalNATSClusterProbe.running(in: directory)
            #expect(left.isEmpty, "nats-server left running: \(left)")
        }
    }
}

/// nats-server processes still running (the demo must stop its cluster).
enum LocalNATSClusterProbe {
    static func running(in directory: String) async throws -> String {
        let out = NSTemporaryDirectory() + "pgrep-\(UUID().uuidString).out"
        let probe = try ChildProcess.spawn("/bin/sh", ["-c", "pgrep -af '[n]ats-server -c \(directory)' || true"], outputPath: out)
        _ = await probe.waitForExit()
        return probe.output().trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
