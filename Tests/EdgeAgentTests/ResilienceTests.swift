import EdgeAgent
import Foundation
import LocalServices
import MQTT
import MessageSchema
import RelayOutput
import Testing
import TestSupport

/// Exactly-once credit through crashes, broker outages and restarts; status, configuration,
/// graceful stop and bundle errors, with the real binary.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct ResilienceTests {
    static let slowCoin = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 100, gapMs: 100)

    @Test func killedMidTrainIsUncertainAndNeverFiredAgain() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "wash-01"
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [Self.slowCoin]))
            try unit.start()
            let first = try await fleet.status(machine, .online)
            let payment = fleet.payment(machine, amount: 1000)
            try await fleet.publish(payment)
            try await unit.waitForActivations(3)
            await unit.kill()
            let firedBeforeKill = unit.activations(line: 17)
            #expect(firedBeforeKill < 10)

            try unit.start()
            _ = try await fleet.status(machine, .online) { $0.bootId != first.bootId }
            let result = try await fleet.result(payment.paymentId, machine: machine)
            #expect(result.status == .uncertain)
            #expect(result.reason == .interrupted)
            #expect(result.bootId != first.bootId)
            // The progress record knows how far the train got (a process crash loses nothing
            // written before it).
            #expect(result.pulsesFired == firedBeforeKill || result.pulsesFired == firedBeforeKill - 1)

            // Redelivered or republished: a duplicate of the uncertain decision, no new pulse.
            try await fleet.publish(payment)
            let duplicate = try await fleet.result(payment.paymentId, machine: machine)
            #expect(duplicate.status == .duplicate)
            #expect(duplicate.original?.status == .uncertain)
            #expect(unit.activations(line: 17) == firedBeforeKill)
        }
    }

    @Test func resultDecidedBeforeACrashIsPublishedAfterTheRestart() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "wash-02"
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [Self.slowCoin]))
            try unit.start()
            _ = try await fleet.status(machine, .online)
            let payment = fleet.payment(machine, amount: 300)
            try await fleet.publish(payment)
            try await unit.waitForActivations(1)
            // Freeze the broker: the decision is made but its PUBACK cannot come.
            let broker = try #require(fleet.broker.processForTesting)
            broker.send(SIGSTOP)
            let store = try AgentStore(path: unit.stateDirectory + "/agent.sqlite")
            // Bounded, generous: a loaded CI machine runs many suites at once.
            let deadline = ContinuousClock.now + .seconds(60)
            while try store.outbox().isEmpty {
                #expect(ContinuousClock.now < deadline, "the decision never reached the outbox")
                if ContinuousClock.now >= deadline { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            await unit.kill()
            broker.send(SIGCONT)
            #expect(unit.activations(line: 17) == 3)

            try unit.start()
            let result = try await fleet.result(payment.paymentId, machine: machine)
            #expect(result.status == .credited)
            #expect(result.amount == 300)
            #expect(unit.activations(line: 17) == 3)
        }
    }

    @Test func paymentsPublishedWhileTheAgentIsDown() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "vend-03"
            let unit = try fleet.unit(machine)
            try unit.start()
            _ = try await fleet.status(machine, .online)
            #expect(await unit.terminate() == .exited(0))

            let fresh = fleet.payment(machine, amount: 200, ttlMs: 60_000)
            try await fleet.publish(fresh)
            // Without MQTT expiry (as a 3.1.1 server would send it) the broker keeps it; the
            // agent itself must refuse it once expired.
            let stale = fleet.payment(machine, amount: 300, ttlMs: 1_000)
            try await fleet.publish(stale, withExpiry: false)
            // With MQTT expiry the broker drops it: never delivered, never fired.
            let dropped = fleet.payment(machine, amount: 400, ttlMs: 1_000)
            try await fleet.publish(dropped)
            // The property under test is the passing of time: both short ones expire.
            try await Task.sleep(for: .milliseconds(2_100))

            try unit.start()
            #expect(try await fleet.result(fresh.paymentId, machine: machine).status == .credited)
            let expired = try await fleet.result(stale.paymentId, machine: machine)
            #expect(expired.status == .rejected)
            #expect(expired.reason == .expired)
            await #expect(throws: InboxTimeout.self) {
                _ = try await fleet.result(dropped.paymentId, machine: machine, timeout: .seconds(1))
            }
            #expect(unit.activations(line: 17) == 2)
        }
    }

    @Test func configurationIsAppliedIgnoredOrRejected() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "laundry-11"
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, version: 1))
            try unit.start()
            _ = try await fleet.status(machine, .online)
            #expect(try await fleet.configReport(machine, version: 1).status == .applied)

            // Version 2: only a 500-yen coin, a higher limit.
            let five = OutputConfig(channel: "coin500", chip: "gpiochip0", line: 5, valuePerPulse: 500, pulseMs: 20, gapMs: 20)
            try await fleet.publishConfig(fleet.signed(fleet.config(machine, version: 2, outputs: [five], maxAmount: 9000)), to: machine)
            #expect(try await fleet.configReport(machine, version: 2).status == .applied)
            _ = try await fleet.heartbeat(machine) { $0.configVersion == 2 }
            let payment = fleet.payment(machine, amount: 1500)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: machine).pulses == [PulseCount(channel: "coin500", count: 3)])
            #expect(unit.activations(line: 5) == 3)

            // An older version is ignored: still version 2.
            try await fleet.publishConfig(fleet.signed(fleet.config(machine, version: 1)), to: machine)
            // Signed by a payment key: rejected, unknown_key.
            try await fleet.publishConfig(fleet.signed(fleet.config(machine, version: 3), kid: fleet.paymentKid, key: fleet.paymentKey), to: machine)
            let refused = try await fleet.configReport(machine, version: 3)
            #expect(refused.status == .rejected)
            #expect(refused.reason == .unknownKey)
            let check = fleet.payment(machine, amount: 500)
            try await fleet.publish(check)
            #expect(try await fleet.result(check.paymentId, machine: machine).pulses == [PulseCount(channel: "coin500", count: 1)])
        }
    }

    @Test func trustRotationReplacesThePaymentKeys() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "laundry-12"
            let unit = try fleet.unit(machine)
            try unit.start()
            _ = try await fleet.status(machine, .online)
            let newKey = try Ed25519PrivateKey()
            let rotated = [
                TrustEntry(kid: "pay-next", purpose: .payment, publicKey: newKey.publicKey.base64),
                TrustEntry(kid: fleet.fleetKid, purpose: .fleet, publicKey: fleet.fleetKey.publicKey.base64),
            ]
            try await fleet.publishConfig(fleet.signed(fleet.config(machine, version: 2, trust: rotated)), to: machine)
            #expect(try await fleet.configReport(machine, version: 2).status == .applied)
            let old = fleet.payment(machine, amount: 100)
            try await fleet.publish(old)
            #expect(try await fleet.result(old.paymentId, machine: machine).reason == .unknownKey)
            let new = fleet.payment(machine, amount: 100)
            try await fleet.publish(new, kid: "pay-next", key: newKey)
            #expect(try await fleet.result(new.paymentId, machine: machine).status == .credited)
            // The rotation survives a restart.
            await unit.terminate()
            try unit.start()
            let again = fleet.payment(machine, amount: 100)
            try await fleet.publish(again, kid: "pay-next", key: newKey)
            #expect(try await fleet.result(again.paymentId, machine: machine).status == .credited)
        }
    }

    @Test func brokerAwayAtPowerUpAndRestartedLater() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "wash-07"
            let unit = try fleet.unit(machine)
            await fleet.server.close()
            await fleet.broker.stop()
            try unit.start()
            // Outputs are driven inactive at power-up, broker or not.
            let deadline = ContinuousClock.now + .seconds(10)
            while unit.edges.count < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
            #expect(unit.edges.count == 2)
            #expect(unit.edges.allSatisfy { !$0.active })
            #expect(unit.child?.isRunning == true)

            try await fleet.broker.restart()
            let server = try MQTTClient(MQTTConfiguration(host: fleet.broker.host, port: fleet.broker.port, clientID: "server-2"))
            try await server.connect()
            let inbox = Inbox(server)
            try await server.subscribe(["fleet/+/status", "fleet/+/payment/result"].map { MQTTSubscription($0) })
            _ = try await inbox.next("online") { $0.topic.hasSuffix("/status") && (try? WireCoding.decode(StatusMessage.self, from: $0.payload))?.state == .online }

            // And once more, with the agent connected: it reconnects by itself and pays.
            let states = server.connectionStates()
            try await fleet.broker.restart()
            for await state in states { if case .connected(let session, _) = state, session > 1 { break } }
            _ = try await inbox.next("online again") { $0.topic.hasSuffix("/status") && (try? WireCoding.decode(StatusMessage.self, from: $0.payload))?.state == .online }
            let payment = fleet.payment(machine, amount: 100)
            try await server.publish(
                topic: fleet.topics.topic(.paymentCompleted, for: machine),
                payload: SignedEnvelope.sign(payment, kid: fleet.paymentKid, key: fleet.paymentKey).encoded())
            let message = try await inbox.next("result") { $0.topic.hasSuffix("/payment/result") }
            #expect(try WireCoding.decode(PaymentResult.self, from: message.payload).status == .credited)
            await server.close()
        }
    }

    @Test func staleWillDoesNotLeaveTheMachineOffline() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "vend-04"
            let unit = try fleet.unit(machine)
            try unit.start()
            let online = try await fleet.status(machine, .online)
            // An older session's will, arriving late.
            var stale = online
            stale.state = .offline
            stale.session = online.session - 1
            try await fleet.server.publish(
                topic: fleet.topics.topic(.status, for: machine), payload: WireCoding.encode(stale), qos: .atLeastOnce, retain: true)
            _ = try await fleet.status(machine, .offline)
            let again = try await fleet.status(machine, .online, bootId: online.bootId)
            #expect(again.session == online.session)
            // The retained status a payment server reads first is online.
            let reader = try MQTTClient(MQTTConfiguration(host: fleet.broker.host, port: fleet.broker.port, clientID: "reader"))
            try await reader.connect()
            let inbox = Inbox(reader)
            try await reader.subscribe(fleet.topics.topic(.status, for: machine))
            let retained = try WireCoding.decode(StatusMessage.self, from: try await inbox.next().payload)
            #expect(retained.state == .online)
            await reader.close()
        }
    }

    @Test func crashLeavesTheWillAndARestartComesBackOnline() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "vend-05"
            let unit = try fleet.unit(machine)
            try unit.start()
            let online = try await fleet.status(machine, .online)
            await unit.kill()
            let will = try await fleet.status(machine, .offline, bootId: online.bootId)
            #expect(will.session == online.session)
            try unit.start()
            _ = try await fleet.status(machine, .online) { $0.bootId != online.bootId }
        }
    }

    @Test func gracefulStopPublishesOfflineAndExitsZero() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "vend-06"
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [Self.slowCoin]))
            try unit.start()
            let online = try await fleet.status(machine, .online)
            // A train in progress is allowed to finish.
            let payment = fleet.payment(machine, amount: 500)
            try await fleet.publish(payment)
            try await unit.waitForActivations(1)
            let status = await unit.terminate()
            #expect(status == .exited(0))
            #expect(try await fleet.result(payment.paymentId, machine: machine).status == .credited)
            #expect(unit.activations(line: 17) == 5)
            #expect(unit.edges.last?.active == false)
            let offline = try await fleet.status(machine, .offline, bootId: online.bootId)
            #expect(offline.session == online.session)
        }
    }

    @Test func heartbeatCarriesEveryFieldAndCountersSurviveARestart() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "laundry-13"
            let unit = try fleet.unit(machine)
            try unit.start()
            _ = try await fleet.status(machine, .online)
            let credited = fleet.payment(machine, amount: 1200)
            try await fleet.publish(credited)
            _ = try await fleet.result(credited.paymentId, machine: machine)
            let refused = fleet.payment(machine, amount: 450)
            try await fleet.publish(refused)
            _ = try await fleet.result(refused.paymentId, machine: machine)
            try await fleet.publish(credited)
            _ = try await fleet.result(credited.paymentId, machine: machine)

            let expected = PaymentCounters(credited: 1, rejected: 1, duplicate: 1, uncertain: 0, pulses: 3, creditedAmount: 1200)
            let beat = try await fleet.heartbeat(machine) { $0.counters == expected }
            #expect(beat.configVersion == 1)
            #expect(beat.relay == .ok)
            #expect(!beat.inhibited)
            #expect(beat.outboxDepth == 0)
            #expect(beat.firmware == AgentVersion.built)
            #expect(abs(beat.at - FleetHarness.nowMs()) < 5_000)

            try unit.simulator.setInhibit(true)
            _ = try await fleet.heartbeat(machine) { $0.inhibited }
            await unit.terminate()
            try unit.start()
            let after = try await fleet.heartbeat(machine) { $0.bootId != beat.bootId }
            #expect(after.counters == expected)
            #expect(after.seq == 1)
        }
    }

    /// One agent per state folder: a second one on a running agent's journal would fire what
    /// the first decided. It stops at once, says who holds it, and the first goes on paying.
    @Test func secondAgentOnTheSameStateFolderIsRefused() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "lock-01"
            let unit = try fleet.unit(machine)
            try unit.start()
            let online = try await fleet.status(machine, .online)
            let second = try ChildProcess.spawn(
                AgentUnit.binary, ["run", "--bundle", unit.bundlePath, "--state-dir", unit.stateDirectory, "--gpio", "sim:\(unit.directory)/edges-2"],
                outputPath: unit.directory + "/second.out")
            #expect(await second.waitForExit() == .exited(2))
            let output = second.output().trimmingCharacters(in: .whitespacesAndNewlines)
            #expect(output.split(separator: "\n").count == 1, "\(output)")
            #expect(output.contains("another edge-agent (pid \(unit.child?.pid ?? -1)) is using the state folder"), "\(output)")
            let payment = fleet.payment(machine, amount: 100)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: machine).status == .credited)
            // The first agent, the same boot, still runs.
            _ = try await fleet.heartbeat(machine) { $0.bootId == online.bootId }
            #expect(unit.child?.isRunning == true)
            await unit.terminate()
        }
    }

    @Test(arguments: [
        ("missing", nil, "no such file"),
        ("not json", "{{{", "not valid JSON"),
        ("wrong field", #"{"v":1,"machineId":"Bad_ID","brokerUrl":"mqtt://127.0.0.1:1","topicRoot":"fleet","trust":[]}"#, "machineId"),
        ("missing field", #"{"v":1,"machineId":"ok-1","topicRoot":"fleet","trust":[]}"#, "brokerUrl"),
        ("no fleet key", #"{"v":1,"machineId":"ok-1","brokerUrl":"mqtt://127.0.0.1:1","topicRoot":"fleet","trust":[]}"#, "fleet key"),
        ("bad url", #"{"v":1,"machineId":"ok-1","brokerUrl":"http://x","topicRoot":"fleet","trust":[]}"#, "brokerUrl"),
    ])
    func badBundleIsOneClearLineAndExitCode2(name: String, contents: String?, mentions: String) async throws {
        let dir = NSTemporaryDirectory() + "pb-bundle-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/bundle.json"
        if let contents { try contents.write(toFile: path, atomically: true, encoding: .utf8) }
        let child = try ChildProcess.spawn(
            AgentUnit.binary, ["run", "--bundle", path, "--state-dir", dir + "/state", "--gpio", "sim:\(dir)/edges"],
            outputPath: dir + "/out")
        #expect(await child.waitForExit() == .exited(2))
        let output = child.output().trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(output.split(separator: "\n").count == 1, "\(output)")
        #expect(output.hasPrefix("edge-agent: bundle \(path)"), "\(output)")
        #expect(output.contains(mentions), "\(output)")
    }
}
