import EdgeAgent
import FleetManager
import Foundation
import LocalServices
import MQTT
import MessageSchema
import PaymentSDK
import RelayOutput
import Testing
import TestSupport

/// The integrity review's findings against the payment servers and `serve`: a unit's stolen
/// credentials, a forged refusal, a result that comes late. Real broker with dynamic security,
/// real agents, the real SDK and `serve`.
@Suite(.serialized, .timeLimit(.minutes(6)))
struct AttributionTests {
    /// One pulse a second of payment: long enough for a forger to act during the train.
    static let slowProfile = MachineProfile(
        maxAmount: 3000, heartbeatS: 1, postVendDelayMs: 0,
        outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 100, gapMs: 100)],
        inhibit: nil)

    /// An agent for a provisioned unit, with its edge log where the test can read it.
    struct Agent {
        var process: ChildProcess
        var directory: String
        var edges: [SimulatedEdge] { SimulatedEdge.read(directory + "/edges") }

        static func start(_ fleet: DynsecFleet, _ machine: MachineID, directory: String? = nil) throws -> Agent {
            let dir = directory ?? NSTemporaryDirectory() + "pb-attr-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let process = try ChildProcess.spawn(
                AgentUnit.binary,
                ["run", "--bundle", fleet.home.bundlesDirectory + "/\(machine.rawValue).json", "--state-dir", dir + "/state", "--gpio", "sim:\(dir)/edges"],
                outputPath: dir + "/agent.log")
            return Agent(process: process, directory: dir)
        }

        func waitForEdges(_ count: Int) async throws {
            let deadline = ContinuousClock.now + .seconds(15)
            while edges.filter(\.active).count < count {
                guard ContinuousClock.now < deadline else { throw InboxTimeout(waitedFor: "\(count) edges", received: []) }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    static func paymentClient(_ fleet: DynsecFleet) async throws -> PaymentClient {
        let (kid, key) = try fleet.home.signingKey(.payment)
        return try await PaymentClient.connect(fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: kid, key: key)
    }

    static func waitOnline(_ payments: PaymentClient, _ machine: MachineID) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        while await payments.status(of: machine, timeout: .milliseconds(200))?.state != .online {
            guard ContinuousClock.now < deadline else { throw InboxTimeout(waitedFor: "\(machine) online", received: []) }
        }
    }

    static func forgedResult(_ machine: MachineID, _ payment: PaymentID, _ status: PaymentStatus, amount: Int = 0) -> Data {
        WireCoding.encode(
            PaymentResult(
                paymentId: payment, machineId: machine, status: status, reason: status == .rejected ? .expired : nil, amount: amount,
                pulses: [], pulsesFired: 0, decidedAt: FleetHarness.nowMs(), bootId: "forged", seq: 1))
    }

    /// Finding 1: unit A's credentials settled machine B's payment. A publishes, on its own
    /// permitted topic, a refusal naming B, a fake `credited` of 9,999,999 for B's payment,
    /// and a fake `installed` firmware report for B. The SDK settles B's payment from B's
    /// result only; `serve` records nothing of it for B and no revenue for A.
    @Test func aUnitCannotSettleAnotherMachinesPayment() async throws {
        try await DynsecFleet.with { fleet in
            let a: MachineID = "unit-a"
            let b: MachineID = "unit-b"
            _ = try await fleet.provisioner.provision(a, profile: Self.slowProfile)
            _ = try await fleet.provisioner.provision(b, profile: Self.slowProfile)
            let monitor = try FleetMonitor(home: fleet.home)
            let serve = Task { try await monitor.run() }
            let agent = try Agent.start(fleet, b)
            let forger = try fleet.deviceClient(a)
            try await forger.connect()
            let payments = try await Self.paymentClient(fleet)
            try await Self.waitOnline(payments, b)

            let id: PaymentID = "p-attack-1"
            let pay = Task { try await payments.pay(b, amount: 500, currency: "JPY", userId: "victim", paymentId: id) }
            try await agent.waitForEdges(1)
            let resultTopic = fleet.home.topics.topic(.paymentResult, for: a)
            try await forger.publish(topic: resultTopic, payload: Self.forgedResult(b, id, .rejected))
            try await forger.publish(topic: resultTopic, payload: Self.forgedResult(a, id, .credited, amount: 9_999_999))
            try await forger.publish(
                topic: fleet.home.topics.topic(.firmwareReported, for: a),
                payload: WireCoding.encode(FirmwareReported(machineId: b, version: "6.6.6", state: .installed, reason: nil, at: FleetHarness.nowMs())),
                retain: true)
            try await forger.publish(
                topic: fleet.home.topics.topic(.status, for: a),
                payload: WireCoding.encode(
                    StatusMessage(machineId: b, state: .offline, bootId: "forged", session: 1, firmware: "x", configVersion: 1, at: FleetHarness.nowMs())),
                retain: true)

            let outcome = try await pay.value
            #expect(outcome.result?.status == .credited)
            #expect(outcome.result?.machineId == b)
            #expect(outcome.action == .capture)
            #expect(payments.ignoredMessages.load(ordering: .relaxed) >= 1)
            #expect(agent.edges.filter(\.active).count == 5)

            try await OperationsTests.eventually("serve recorded B's result") {
                try fleet.home.registry.payments().contains { $0.machineId == "unit-b" && $0.paymentId == "p-attack-1" && $0.status == .credited }
            }
            try await OperationsTests.eventually("serve counted the forgeries") {
                try fleet.home.registry.ignoredMessages().reduce(0) { $0 + $1.count } >= 3
            }
            let records = try fleet.home.registry.payments()
            let bRecord = try #require(records.first { $0.machineId == "unit-b" && $0.paymentId == "p-attack-1" })
            #expect(bRecord.creditedAmount == 500)
            #expect(bRecord.settlement == .capture)
            #expect(bRecord.userId == "victim")
            // A's claim about a payment it was never sent is no revenue.
            let machines = try fleet.home.registry.machineDays()
            #expect(machines.first { $0.machineId == "unit-a" } == nil)
            #expect(machines.first { $0.machineId == "unit-b" }?.revenue == 500)
            // B is online, and no firmware report of B's came from A.
            #expect(try OperationsTests.state(fleet.home, "unit-b")?.state == "online")
            #expect(try OperationsTests.state(fleet.home, "unit-b")?.firmware != "6.6.6")

            await payments.close()
            await forger.close()
            await agent.process.terminate(grace: .seconds(10))
            serve.cancel()
            _ = try? await serve.value
        }
    }

    /// Finding 2: anyone who may publish completions sends B a badly signed envelope carrying
    /// a real payment's ID; B refuses it naming that ID. The SDK ignores the refusal (its hash
    /// is not of the bytes it sent) and settles the real payment.
    @Test func aRefusalOfSomeoneElsesBytesDoesNotEndTheWait() async throws {
        try await DynsecFleet.with { fleet in
            let b: MachineID = "unit-c"
            _ = try await fleet.provisioner.provision(b, profile: Self.slowProfile)
            let agent = try Agent.start(fleet, b)
            let payments = try await Self.paymentClient(fleet)
            try await Self.waitOnline(payments, b)
            // A second payment server's identity (one each) sends the forgery.
            var other = fleet.home.settings.paymentServer
            other.username = "payment-server-other"
            other.password = "other-password"
            try await fleet.provisioner.backend.createPaymentServer(other)
            let attacker = try await other.connect(clientID: other.username)

            // B is busy with another customer's train; the forgery, then the real payment, queue
            // behind it, so B's refusal of the forgery comes while the real payment is awaited.
            // A 4 s train: the refusal of the forgery comes out after it, long after the real
            // payment's waiter is registered, however loaded the machine is.
            let busy = Task { try await payments.pay(b, amount: 2000, currency: "JPY", userId: "u-0") }
            try await agent.waitForEdges(1)
            let id: PaymentID = "p-refused-1"
            let victim = PaymentCompleted(
                paymentId: id, machineId: b, amount: 300, currency: "JPY", userId: "u-1", issuedAt: FleetHarness.nowMs(),
                expiresAt: FleetHarness.nowMs() + 30_000)
            let forged = SignedEnvelope.sign(victim, kid: try fleet.home.signingKey(.payment).0, key: try Ed25519PrivateKey()).encoded()
            try await attacker.publish(topic: fleet.home.topics.topic(.paymentCompleted, for: b), payload: forged)
            let pay = Task { try await payments.pay(b, amount: 300, currency: "JPY", userId: "u-1", paymentId: id) }
            #expect(try await busy.value.action == .capture)

            let outcome = try await pay.value
            #expect(outcome.result?.status == .credited)
            #expect(outcome.action == .capture)
            #expect(payments.ignoredMessages.load(ordering: .relaxed) >= 1)
            #expect(agent.edges.filter(\.active).count == 23)
            await attacker.close()
            await payments.close()
            await agent.process.terminate(grace: .seconds(10))
        }
    }

    /// Finding 3, the link: a result late because the unit could not publish was voided by the
    /// SDK. Now no result is not a void: the payment is held as unknown and settled by the
    /// late result (capture), or voided once the unit is back online for a session that
    /// began after the payment expired.
    @Test func noResultIsNotAVoid() async throws {
        try await DynsecFleet.with { fleet in
            let b: MachineID = "unit-d"
            _ = try await fleet.provisioner.provision(b, profile: Self.slowProfile)
            let monitor = try FleetMonitor(home: fleet.home)
            let serve = Task { try await monitor.run() }
            let agent = try Agent.start(fleet, b)
            let payments = try await Self.paymentClient(fleet)
            try await Self.waitOnline(payments, b)

            // The unit freezes after its first pulse (its link is as good as down) until past
            // expiresAt + 5 s; then it resumes and its result arrives late. The time to live
            // leaves the agent 5.5 s to start the 0.5 s train (it refuses one that would end
            // within 2 s of the expiry), however slow a sanitizer build on a loaded machine is.
            let ttl = Duration.seconds(8)
            let sentAt = ContinuousClock.now
            let late = Task { try await payments.pay(b, amount: 300, currency: "JPY", userId: "u-late", ttl: ttl, unknownWait: .seconds(30)) }
            try await agent.waitForEdges(1)
            kill(agent.process.pid, SIGSTOP)
            let frozenUntil = sentAt + ttl + .seconds(6)
            try await Task.sleep(until: frozenUntil)  // the frozen span is the scenario itself, not a wait for a condition
            kill(agent.process.pid, SIGCONT)
            let outcome = try await late.value
            #expect(outcome.result?.status == .credited)
            #expect(outcome.action == .capture)

            // A payment the unit never received: sent while it is stopped (forced, as a server
            // that skipped the status check would), expires; the unit starts again and comes
            // online after the expiry with no result for it: void.
            await agent.process.terminate(grace: .seconds(10))
            try await OperationsTests.eventually("serve saw unit-d offline") {
                try OperationsTests.state(fleet.home, "unit-d")?.state == "offline"
            }
            let unanswered = Task { try await payments.pay(b, amount: 200, currency: "JPY", userId: "u-gone", ttl: .seconds(1), unknownWait: .seconds(60)) }
            // Held as unknown in serve meanwhile.
            try await OperationsTests.eventually("serve holds the payment as unknown") {
                try fleet.home.registry.payments(matching: PaymentFilter(settlement: .unknown)).contains { $0.userId == "u-gone" }
            }
            try await Task.sleep(for: .seconds(2))  // let the payment expire: the scenario, not a wait for a condition
            let restarted = try Agent.start(fleet, b, directory: agent.directory)
            let voided = try await unanswered.value
            #expect(voided.result == nil || voided.result?.status == .rejected)
            #expect(voided.action == .void)
            try await OperationsTests.eventually("serve voided it") {
                try fleet.home.registry.payments().contains { $0.userId == "u-gone" && $0.settlement == .void }
            }
            #expect(restarted.edges.filter(\.active).count == 3)

            await payments.close()
            await restarted.process.terminate(grace: .seconds(10))
            serve.cancel()
            _ = try? await serve.value
        }
    }
}
