import RelayOutput
import ArgumentParser
import FleetManager
import Foundation
import LocalServices
import MessageSchema
import Locking
import TestSupport

/// The customer's side under load: `payment-server` (release, a child process) with the
/// simulated provider, in front of simulated units (edge-agent, simulated GPIO).
/// - payments/s: customers paying concurrently, each through the page, the checkout and the
///   receipt (every HTTP step a phone makes), one customer per machine at a time;
/// - pay → credited and captured, per payment;
/// - page load (`GET /m/{machine}`) p50/p99 while that runs;
/// - the server's memory;
/// - scan → credited in Chromium (the browser test's script), when Chromium is installed.
struct PaymentPage: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "payment-page", abstract: "payment-server: payments/s, pay → captured, page load p99 under load, RSS, scan → credited in Chromium.")
    @Option(help: "Simulated machines (one customer paying at each at a time).") var machines = 8
    @Option(help: "Payments per machine.") var payments = 25
    @Option(help: "Page loaders running alongside.") var loaders = 4
    @Option(help: "Browser runs (scan → credited); 0 skips.") var browserRuns = 3
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(machines: machines, payments: payments, loaders: loaders, browserRuns: browserRuns))
    }

    static func measure(machines count: Int = 8, payments: Int = 25, loaders: Int = 4, browserRuns: Int = 3) async throws -> [Measurement] {
        // One 10 ms pulse per 100: a payment of 100 is one pulse.
        let profile = MachineProfile(
            maxAmount: 10_000, heartbeatS: 5, postVendDelayMs: 0,
            outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 10, gapMs: 10)], inhibit: nil)
        let machines = (1...count).map {
            PaidMachine(id: MachineID(unchecked: String(format: "bench-%02d", $0)), name: "Machine \($0)", place: "Bench", menu: [("One", 100)], profile: profile)
        }
        var results: [Measurement] = []
        let name = "payment-page"
        try await PaymentServerFleet.with(
            machines, limits: (perUser: 100_000, perMachine: 100_000), paymentServerBinary: productsDirectory() + "/payment-server"
        ) { fleet in
            let start = ContinuousClock.now
            let stop = Locked(false)
            // Page loads alongside the payments.
            async let pageLoads: [Double] = withTaskGroup(of: [Double].self) { group in
                for loader in 0..<loaders {
                    group.addTask {
                        var customer = WebCustomer(base: fleet.publicUrl)
                        var samples: [Double] = []
                        var i = loader
                        while !stop.withLock({ $0 }) {
                            let t = monotonicNanoseconds()
                            _ = try? await customer.request("GET", "/m/\(machines[i % machines.count].id)")
                            samples.append(Double(monotonicNanoseconds() - t) / 1e6)
                            i += 1
                        }
                        return samples
                    }
                }
                var all: [Double] = []
                for await samples in group { all += samples }
                return all
            }
            let latencies: [Double] = try await withThrowingTaskGroup(of: [Double].self) { group in
                for machine in machines {
                    group.addTask {
                        var customer = WebCustomer(base: fleet.publicUrl)
                        var samples: [Double] = []
                        for _ in 0..<payments {
                            let t = monotonicNanoseconds()
                            let outcome = try await customer.pay(machine: machine.id.rawValue, amount: 100, card: "4242424242424242")
                            guard outcome.state == "captured" else { throw ValidationError("a payment ended \(outcome.state): \(outcome.text)") }
                            samples.append(Double(monotonicNanoseconds() - t) / 1e6)
                        }
                        return samples
                    }
                }
                var all: [Double] = []
                for try await samples in group { all += samples }
                return all
            }
            let elapsed = ContinuousClock.now - start
            stop.withLock { $0 = true }
            let loads = Distribution(await pageLoads)
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
            let pay = Distribution(latencies)
            let memory = fleet.serverMemoryKiB()
            results += [
                Measurement(benchmark: name, metric: "payments/s (\(count) machines)", value: (Double(latencies.count) / seconds * 10).rounded() / 10, unit: "/s"),
                Measurement(benchmark: name, metric: "pay → captured p50", value: pay.p50, unit: "ms"),
                Measurement(benchmark: name, metric: "pay → captured p99", value: pay.p99, unit: "ms"),
                Measurement(benchmark: name, metric: "page load p50 (loaded)", value: loads.p50, unit: "ms"),
                Measurement(benchmark: name, metric: "page load p99 (loaded)", value: loads.p99, unit: "ms"),
                Measurement(benchmark: name, metric: "page loads", value: Double(loads.sorted.count), unit: ""),
                Measurement(benchmark: name, metric: "server RSS peak", value: Double(memory.peak / 1024), unit: "MiB"),
                Measurement(benchmark: name, metric: "server RSS after", value: Double(memory.current / 1024), unit: "MiB"),
            ]
            let captured = try await fleet.serverPayments().values.filter { $0["state"] as? String == "captured" && $0["providerState"] as? String == "captured" }
            guard captured.count == latencies.count else { throw ValidationError("\(latencies.count) paid, \(captured.count) captured") }

            // Scan → credited in a real browser.
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("Tests/browser/pay_flow.py").path
            if browserRuns > 0, FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), FileManager.default.fileExists(atPath: script) {
                var seconds: [Double] = []
                for run in 0..<browserRuns {
                    let child = try ChildProcess.spawn(
                        "/usr/bin/env",
                        ["python3", script, "--url", fleet.publicUrl + "/m/\(machines[run % machines.count].id)", "--choose", "One", "--card", "approve", "--expect", "captured,voided,held,unknown"],
                        outputPath: fleet.directory + "/browser-\(run).out")
                    _ = await child.waitForExit()
                    guard let line = child.output().split(separator: "\n").last(where: { $0.hasPrefix("{") }),
                        let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], object["state"] as? String == "captured",
                        let s = object["seconds"] as? Double
                    else { throw ValidationError("the browser run failed: \(child.output().suffix(1500))") }
                    seconds.append(s * 1000)
                }
                let scan = Distribution(seconds)
                results += [
                    Measurement(benchmark: name, metric: "scan → credited in Chromium p50 (\(browserRuns) runs)", value: scan.p50, unit: "ms"),
                    Measurement(benchmark: name, metric: "scan → credited in Chromium max", value: scan.max, unit: "ms"),
                ]
            }
        }
        return results
    }
}
