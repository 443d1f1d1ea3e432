import EdgeAgent
import FleetConsole
import FleetManager
import Foundation
import LocalServices
import Locking
import MQTT
import MessageSchema
import PaymentSDK
import Testing
import TestSupport

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// `serve --http`'s `/metrics` after a scripted run of payments: refused without the token,
/// valid for `promtool check metrics`, and the numbers are the registry's.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct MetricsTests {
    static func get(_ url: String, token: String?) async throws -> (status: Int, body: String) {
        var request = URLRequest(url: URL(string: url)!)
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        let (data, response) = try await URLSession(configuration: .ephemeral).data(for: request)
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    /// `promtool` from Debian's prometheus package (scripts/setup.sh puts it on PATH).
    static var promtool: String? {
        let candidates = [ProcessInfo.processInfo.environment["PULSEBRIDGE_PROMTOOL"]].compactMap { $0 }
            + (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin").split(separator: ":").map { "\($0)/promtool" }
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// The value of the sample `series` (name and labels exactly as written), if present.
    static func sample(_ text: String, _ series: String) -> Double? {
        for line in text.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1).split(separator: " ").first ?? "")
        }
        return nil
    }

    @Test func metricsAfterAScriptedRunMatchTheRegistry() async throws {
        try await DynsecFleet.with { fleet in
            let units: [MachineID] = ["unit-01", "unit-02"]
            for unit in units + ["unit-09"] { _ = try await fleet.provisioner.provision(unit, profile: OperationsTests.fastProfile) }
            try await fleet.provisioner.revoke("unit-09")
            let metrics = FleetMetrics()
            let monitor = try FleetMonitor(home: fleet.home, metrics: metrics)
            var options = ConsoleServer.Options()
            options.port = 0
            options.metricsToken = "scrape-token-0123456789"
            let server = ConsoleServer(registry: fleet.home.registry, metrics: metrics, options: options)
            let port = Locked<Int?>(nil)
            let application = server.application { bound in port.withLock { $0 = bound } }
            let serving = Task { try await application.runService() }
            let watching = Task { try await monitor.run() }
            defer {
                serving.cancel()
                watching.cancel()
            }
            var agents = [ChildProcess]()
            for unit in units { agents.append(try OperationsTests.startAgent(fleet, unit)) }
            defer { for agent in agents { agent.send(SIGKILL) } }
            try await OperationsTests.eventually("both online and the server listening") {
                try fleet.home.registry.overviews(now: 0).filter { $0.state == "online" }.count == 2 && port.withLock { $0 } != nil
            }
            let base = "http://127.0.0.1:\(port.withLock { $0 }!)"

            // Refused without the token, or with a wrong one (ConsoleTests checks every route).
            #expect(try await Self.get(base + "/metrics", token: nil).status == 401)
            #expect(try await Self.get(base + "/metrics", token: "scrape-token-012345678X").status == 401)
            #expect(try await Self.get(base + "/nothing-here", token: options.metricsToken).status == 404)

            // The scripted run: two credited, one over the limit.
            let (kid, key) = try fleet.home.signingKey(.payment)
            let payments = try await PaymentClient.connect(fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: kid, key: key)
            #expect(try await payments.pay("unit-01", amount: 300, currency: "JPY", userId: "alice").result?.status == .credited)
            #expect(try await payments.pay("unit-02", amount: 200, currency: "JPY", userId: "bob").result?.status == .credited)
            #expect(try await payments.pay("unit-02", amount: 3100, currency: "JPY", userId: "bob").result?.reason == .overLimit)
            await payments.close()
            try await OperationsTests.eventually("three decided payments in the registry") {
                try fleet.home.registry.payments().filter { $0.status != nil }.count == 3
            }
            try await OperationsTests.eventually("heartbeats counting the credits") {
                try fleet.home.registry.overviews(now: 0).map { $0.counters?.credited ?? 0 }.reduce(0, +) == 2
            }

            // The agents' own measurements arrive with their heartbeats (extension `metrics`).
            try await OperationsTests.eventually("heartbeats carrying the trains' timing") {
                try fleet.home.registry.overviews(now: 0).map(\.trains).reduce(0, +) == 2
            }
            let measured = try fleet.home.registry.overviews(now: 0).filter { $0.trains > 0 }
            #expect(measured.count == 2 && measured.allSatisfy { $0.edgeErrorMaxUs != nil && $0.edgeErrorP99Us! <= $0.edgeErrorMaxUs! && $0.journalCommitMaxUs != nil })

            let scraped = try await Self.get(base + "/metrics", token: options.metricsToken)
            #expect(scraped.status == 200)
            let text = scraped.body
            let records = try fleet.home.registry.payments()
            #expect(Self.sample(text, #"pulsebridge_units{state="online"}"#) == 2)
            #expect(Self.sample(text, #"pulsebridge_units{state="revoked"}"#) == 1)
            #expect(Self.sample(text, #"pulsebridge_payments{status="credited",settlement="capture"}"#) == Double(records.filter { $0.status == .credited }.count))
            #expect(Self.sample(text, #"pulsebridge_payments{status="rejected",settlement="void"}"#) == 1)
            #expect(Self.sample(text, #"pulsebridge_credited_amount{currency="JPY"}"#) == Double(records.map(\.creditedAmount).reduce(0, +)))
            #expect(Self.sample(text, #"pulsebridge_credited_amount{currency="JPY"}"#) == 500)
            #expect(Self.sample(text, #"pulsebridge_unit_reported{counter="credited"}"#) == 2)
            #expect(Self.sample(text, #"pulsebridge_unit_reported{counter="pulses"}"#) == 5)
            #expect(Self.sample(text, "pulsebridge_payment_result_latency_seconds_count") == 3)
            #expect(Self.sample(text, "pulsebridge_broker_connected") == 1)
            #expect((Self.sample(text, "pulsebridge_events_ingested_total") ?? 0) >= 6)
            #expect((Self.sample(text, "pulsebridge_heartbeat_lag_seconds_count") ?? 0) >= 2)
            #expect((Self.sample(text, "pulsebridge_registry_write_seconds_count") ?? 0) >= 1)
            #expect(Self.sample(text, "pulsebridge_unit_trains") == 2)
            let worstEdge = Double(measured.compactMap(\.edgeErrorMaxUs).max()!) / 1e6
            #expect(Self.sample(text, "pulsebridge_unit_edge_error_max_seconds") == worstEdge)
            #expect(Self.sample(text, "pulsebridge_unit_edge_error_p99_max_seconds") == Double(measured.compactMap(\.edgeErrorP99Us).max()!) / 1e6)
            #expect(Self.sample(text, "pulsebridge_unit_journal_commit_max_seconds") == Double(measured.compactMap(\.journalCommitMaxUs).max()!) / 1e6)

            // A unit that goes away: its offline alert is counted, and the online count drops.
            await agents[1].killAndWait()
            try await OperationsTests.eventually("unit-02 offline") { try OperationsTests.state(fleet.home, "unit-02")?.state == "offline" }
            let after = try await Self.get(base + "/metrics", token: options.metricsToken).body
            #expect(Self.sample(after, #"pulsebridge_units{state="online"}"#) == 1)
            #expect(Self.sample(after, #"pulsebridge_alerts_open{kind="offline"}"#) == 1)

            // Valid exposition format, as Prometheus's own checker reads it.
            guard let promtool = Self.promtool else {
                Issue.record("promtool is not installed (scripts/setup.sh takes it from Debian's prometheus package)")
                return
            }
            let file = NSTemporaryDirectory() + "pb-metrics-\(UUID().uuidString).txt"
            try after.write(toFile: file, atomically: true, encoding: .utf8)
            let check = try ChildProcess.spawn("/bin/sh", ["-c", "\"$0\" check metrics < \"$1\"", promtool, file], outputPath: file + ".check")
            #expect(await check.waitForExit(timeout: .seconds(60)) == .exited(0), "\(check.output())")
            #expect(!check.output().contains("error"), "\(check.output())")
        }
    }
}
