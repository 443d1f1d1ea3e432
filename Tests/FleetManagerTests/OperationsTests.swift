import EdgeAgent
import FleetManager
import Foundation
import LocalServices
import MQTT
import MessageSchema
import PaymentSDK
import Testing
import TestSupport

/// `serve`, payments, reports and configuration against a fleet of real agents.
@Suite(.serialized, .timeLimit(.minutes(6)))
struct OperationsTests {
    static let fastProfile = MachineProfile(
        maxAmount: 3000, heartbeatS: 1, postVendDelayMs: 0,
        outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 10, gapMs: 10)],
        inhibit: nil)

    /// Starts an agent for a provisioned unit.
    static func startAgent(_ fleet: DynsecFleet, _ machine: MachineID) throws -> ChildProcess {
        let dir = NSTemporaryDirectory() + "pb-ops-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return try ChildProcess.spawn(
            AgentUnit.binary,
            ["run", "--bundle", fleet.home.bundlesDirectory + "/\(machine.rawValue).json", "--state-dir", dir + "/state", "--gpio", "sim:\(dir)/edges"],
            outputPath: dir + "/agent.log")
    }

    /// Waits until the registry satisfies `condition` (it is written by `serve` in batches).
    static func eventually(
        _ what: String, timeout: Duration = .seconds(20), _ condition: () throws -> Bool,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws {
        let deadline = ContinuousClock.now + timeout
        while try !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("timed out waiting for: \(what)", sourceLocation: sourceLocation)
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    static func state(_ home: FleetHome, _ machine: String) throws -> UnitOverview? {
        try home.registry.overviews(now: Int(Date().timeIntervalSince1970 * 1000)).first { $0.machineId == machine }
    }

    @Test func serveTracksTwentyAgents() async throws {
        try await DynsecFleet.with { fleet in
            let machines = (1...20).map { MachineID(rawValue: String(format: "unit-%02d", $0))! }
            for machine in machines { _ = try await fleet.provisioner.provision(machine, profile: Self.fastProfile) }
            let monitor = try FleetMonitor(home: fleet.home)
            let serve = Task { try await monitor.run() }
            var agents: [MachineID: ChildProcess] = [:]
            for machine in machines { agents[machine] = try Self.startAgent(fleet, machine) }

            try await Self.eventually("all 20 online") {
                try fleet.home.registry.overviews(now: 0).filter { $0.state == "online" }.count == 20
            }
            try await Self.eventually("heartbeats with counters") {
                try Self.state(fleet.home, "unit-01")?.counters != nil
            }
            #expect(try Self.state(fleet.home, "unit-01")?.firmware == AgentVersion.built)
            #expect(abs(try Self.state(fleet.home, "unit-01")?.clockSkewMs ?? 99_999) < 5_000)

            // Killed without DISCONNECT: the will marks it offline.
            await agents["unit-03"]!.killAndWait()
            try await Self.eventually("unit-03 offline by its will") {
                let unit = try Self.state(fleet.home, "unit-03")
                return unit?.state == "offline" && unit?.offlineReason == "status"
            }

            // A stale will (an older session's) does not mark a live unit offline.
            let live = try #require(try Self.state(fleet.home, "unit-04"))
            #expect(live.state == "online")
            let injector = try await fleet.home.settings.manager.connect(clientID: "injector")
            let stale = StatusMessage(machineId: "unit-04", state: .offline, bootId: "an-old-boot", session: 1, firmware: "0", configVersion: 0, at: 0)
            try await injector.publish(topic: fleet.home.topics.topic(.status, for: "unit-04"), payload: WireCoding.encode(stale))
            await injector.close()
            // Let serve see it (and the unit's heartbeats after it), then check.
            let seen = monitor.ingested.load(ordering: .relaxed)
            try await Self.eventually("events after the stale will") { monitor.ingested.load(ordering: .relaxed) > seen + 25 }
            #expect(try Self.state(fleet.home, "unit-04")?.state == "online")

            // Silent without a will (frozen): offline after 3 × its 1 s heartbeat, back when it resumes.
            agents["unit-05"]!.send(SIGSTOP)
            try await Self.eventually("unit-05 offline by heartbeat timeout") {
                try Self.state(fleet.home, "unit-05")?.offlineReason == "heartbeat timeout"
            }
            agents["unit-05"]!.send(SIGCONT)
            try await Self.eventually("unit-05 back online") { try Self.state(fleet.home, "unit-05")?.state == "online" }
            #expect(try Self.state(fleet.home, "unit-05")?.alerts.contains("offline") == false)
            #expect(try Self.state(fleet.home, "unit-03")?.alerts.contains("offline") == true)

            // Payments end to end, and what the fleet recorded of them.
            let (kid, key) = try fleet.home.signingKey(.payment)
            let payments = try await PaymentClient.connect(fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: kid, key: key)
            #expect(await payments.status(of: "unit-01")?.state == .online)
            let credited = try await payments.pay("unit-01", amount: 300, currency: "JPY", userId: "alice")
            #expect(credited.result?.status == .credited)
            #expect(credited.action == .capture)
            let refused = try await payments.pay("unit-02", amount: 3100, currency: "JPY", userId: "bob")
            #expect(refused.result?.reason == .overLimit)
            #expect(refused.action == .void)
            let again = try await payments.publishAndWait(
                credited.payment, envelope: SignedEnvelope.sign(credited.payment, kid: kid, key: key).encoded())
            #expect(again.result?.status == .duplicate)
            #expect(again.action == .capture)
            let second = try await payments.pay("unit-02", amount: 200, currency: "JPY", userId: "alice")
            #expect(second.result?.status == .credited)
            await payments.close()

            try await Self.eventually("payments recorded") {
                let records = try fleet.home.registry.payments()
                return records.count == 3 && records.allSatisfy { $0.status != nil && $0.userId != nil }
                    && records.contains { $0.duplicates == 1 }
            }
            let records = try fleet.home.registry.payments()
            #expect(Set(records.map { "\($0.userId!):\($0.status!):\($0.creditedAmount)" }) == ["alice:credited:300", "bob:rejected:0", "alice:credited:200"])
            let customers = FleetReports.customers(records)
            #expect(customers.map(\.userId) == ["alice", "bob"])
            #expect(customers[0].payments == 2 && customers[0].amount == 500 && customers[0].machines == ["unit-01", "unit-02"])
            #expect(customers[1].payments == 0 && customers[1].amount == 0)
            let perMachine = try fleet.home.registry.machineDays()
            #expect(perMachine.map { "\($0.machineId) \($0.revenue) \($0.credited)/\($0.rejected)/\($0.uncertain)" } == ["unit-01 300 1/0/0", "unit-02 200 1/1/0"])

            // A configuration change reaches the unit and shows as applied.
            let client = try await fleet.home.settings.manager.connect(clientID: "config-test")
            let config = try await ConfigPublisher(home: fleet.home, client: client).publish("unit-06") { $0.maxAmount = 2500 }
            await client.close()
            try await Self.eventually("unit-06 applied v\(config.version)") {
                try Self.state(fleet.home, "unit-06")?.appliedConfigVersion == config.version
            }

            serve.cancel()
            _ = await serve.result
            for agent in agents.values { await agent.terminate(grace: .seconds(5)) }
        }
    }

    @Test func serveRecordsPaymentsSignedWithAKeyAddedWhileItRuns() async throws {
        try await DynsecFleet.with { fleet in
            let machine: MachineID = "unit-key"
            _ = try await fleet.provisioner.provision(machine, profile: Self.fastProfile)
            let monitor = try FleetMonitor(home: fleet.home)
            let serve = Task { try await monitor.run() }
            let agent = try Self.startAgent(fleet, machine)
            try await Self.eventually("online") { try Self.state(fleet.home, "unit-key")?.state == "online" }

            let (kid, pushed) = try await KeyManager(home: fleet.home).add(.payment, kid: "pay-late", client: fleet.publisher)
            #expect(pushed == [machine])
            try await Self.eventually("trust applied") { try Self.state(fleet.home, "unit-key")?.appliedConfigVersion == 2 }
            let payments = try await PaymentClient.connect(
                fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: kid, key: try fleet.home.privateKey(kid))
            let outcome = try await payments.pay(machine, amount: 200, currency: "JPY", userId: "late-user")
            await payments.close()
            #expect(outcome.result?.status == .credited)
            try await Self.eventually("payment recorded with its user") {
                try fleet.home.registry.payments().contains { $0.userId == "late-user" && $0.status == .credited }
            }
            serve.cancel()
            _ = await serve.result
            await agent.terminate(grace: .seconds(5))
        }
    }

    @Test func paymentCodeDecodesToThePaymentURL() async throws {
        let code = try PaymentCode(machine: "laundry-07", template: "https://pay.example.com/m/{machineId}")
        let dir = NSTemporaryDirectory() + "pb-code-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try code.svg(caption: "laundry-07").write(toFile: dir + "/code.svg", atomically: true, encoding: .utf8)
        let zbar = try ChildProcess.spawn("zbarimg", ["--quiet", "--raw", dir + "/code.svg"], outputPath: dir + "/out")
        #expect(await zbar.waitForExit() == .exited(0), "\(zbar.output())")
        // zbarimg may also complain about D-Bus on standard error (merged here); the symbol is one line.
        let lines = zbar.output().split(separator: "\n").map(String.init)
        #expect(lines.contains("https://pay.example.com/m/laundry-07"), "\(lines)")
        #expect(code.text().contains("▀"))
    }
}
