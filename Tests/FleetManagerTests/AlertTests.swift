import EdgeAgent
import FleetManager
import Foundation
import LocalServices
import MQTT
import MessageSchema
import Testing
import TestSupport

/// Alerts: opened and resolved by what the fleet says, one per cause, none for revoked units,
/// suppressed for a planned firmware restart; delivered to webhooks (signed, retried with
/// backoff, dead after the attempts) and an exec hook, from an outbox that outlives `serve`.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct AlertTests {
    static func registry() throws -> Registry {
        let directory = NSTemporaryDirectory() + "pb-alerts-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return try Registry(path: directory + "/registry.sqlite")
    }

    static func status(_ machine: MachineID, online: Bool, boot: String = "b1", session: Int = 1) -> FleetEvent {
        .status(StatusMessage(machineId: machine, state: online ? .online : .offline, bootId: boot, session: session, firmware: "1", configVersion: 1, at: 0))
    }

    static func heartbeat(_ machine: MachineID, at: Int, boot: String = "b1") -> FleetEvent {
        .heartbeat(
            Heartbeat(
                machineId: machine, bootId: boot, seq: 1, at: at, uptimeS: 1, firmware: "1", configVersion: 1, inhibited: false, relay: .ok,
                outboxDepth: 0, counters: PaymentCounters()))
    }

    @Test func aLifeFromOpenToResolved() throws {
        let registry = try Self.registry()
        try registry.setAlertTargets(["webhook http://a", "exec b"])
        let unit: MachineID = "laundry-01"
        try registry.upsertMachine(unit)
        _ = try registry.apply([Self.status(unit, online: true)], now: 1_000)
        #expect(try registry.alerts().isEmpty)

        // Offline: one alert, one delivery per target.
        var changed = try registry.apply([Self.status(unit, online: false)], now: 2_000)
        #expect(changed.map(\.change) == [.open])
        // The same cause again (a second will, the timeout sweep) opens nothing more.
        changed = try registry.apply([Self.status(unit, online: false)], now: 3_000)
        #expect(changed.isEmpty)
        #expect(try registry.markSilentUnitsOffline(now: 1_000_000).isEmpty)
        var open = try registry.alerts()
        #expect(open.count == 1)
        #expect(open.first?.kind == .offline && open.first?.openedAt == 2_000)
        #expect(try registry.dueAlertDeliveries(now: 2_000).map(\.target).sorted() == ["exec b", "webhook http://a"])

        // Acknowledged, it stays open; back online, it is resolved and both targets are told.
        let acknowledged = try registry.acknowledgeAlert(open[0].id, by: "ana", now: 2_500)
        #expect(acknowledged.acknowledgedBy == "ana" && acknowledged.resolvedAt == nil)
        #expect(throws: FleetError.self) { try registry.acknowledgeAlert(9_999, by: "ana") }
        changed = try registry.apply([Self.status(unit, online: true, boot: "b2")], now: 4_000)
        #expect(changed.map(\.change) == [.resolve])
        #expect(try registry.alerts().isEmpty)
        let all = try registry.alerts(openOnly: false)
        #expect(all.first?.resolvedAt == 4_000 && all.first?.resolution == "back online")
        #expect(try registry.dueAlertDeliveries(now: 4_000).map(\.event.rawValue).sorted() == ["opened", "opened", "resolved", "resolved"])

        // Clock skew: opened over the limit, resolved when the clock is back.
        _ = try registry.apply([Self.heartbeat(unit, at: 10_000 + 9_000)], now: 10_000, skewLimitMs: 5_000)
        #expect(try registry.alerts().map(\.kind) == [.clockSkew])
        _ = try registry.apply([Self.heartbeat(unit, at: 11_000 + 9_000)], now: 11_000, skewLimitMs: 5_000)
        #expect(try registry.alerts().count == 1)
        _ = try registry.apply([Self.heartbeat(unit, at: 12_100)], now: 12_000, skewLimitMs: 5_000)
        #expect(try registry.alerts().isEmpty)

        // A configuration not applied: opened, then resolved once applied.
        #expect(try registry.syncConfigAlerts(pending: [unit], detail: "not applied", now: 13_000).map(\.change) == [.open])
        #expect(try registry.syncConfigAlerts(pending: [unit], detail: "not applied", now: 13_500).isEmpty)
        #expect(try registry.syncConfigAlerts(pending: [], detail: "not applied", now: 14_000).map(\.change) == [.resolve])

        // A removed target's pending deliveries are dead, not delivered later.
        try registry.setAlertTargets(["webhook http://a"])
        #expect(try registry.dueAlertDeliveries(now: 20_000).allSatisfy { $0.target == "webhook http://a" })
        #expect(try registry.alertDeliveries(state: .dead).allSatisfy { $0.target == "exec b" && $0.lastError == "target removed from serve" })
        open = try registry.alerts(openOnly: false)
        #expect(open.count == 3)
    }

    @Test func uncertainPaymentsAreAlertsEachUntilSettled() throws {
        let registry = try Self.registry()
        let unit: MachineID = "wash-01"
        try registry.upsertMachine(unit)
        func uncertain(_ id: String) -> FleetEvent {
            .result(
                PaymentResult(
                    paymentId: PaymentID(rawValue: id)!, machineId: unit, status: .uncertain, reason: .interrupted, amount: 0,
                    pulses: [], pulsesFired: 2, decidedAt: 1, bootId: "b1", seq: 1))
        }
        _ = try registry.apply([uncertain("p-1"), uncertain("p-2")], now: 1_000)
        #expect(try registry.alerts().map(\.subject).sorted() == ["p-1", "p-2"])
        #expect(try registry.settleByOperator(machine: unit, payment: "p-1", settlement: .void, operator: "ana", now: 2_000))
        let open = try registry.alerts()
        #expect(open.map(\.subject) == ["p-2"])
        #expect(try registry.alerts(openOnly: false).first { $0.subject == "p-1" }?.resolution == "settled (void) by operator:ana")
    }

    @Test func revokedUnitsRaiseNothingAndFirmwareRestartsAreSuppressed() throws {
        let registry = try Self.registry()
        try registry.setAlertTargets(["webhook http://a"])
        let revoked: MachineID = "vend-01"
        let updating: MachineID = "vend-02"
        for unit in [revoked, updating] {
            try registry.upsertMachine(unit)
            _ = try registry.apply([Self.status(unit, online: true)], now: 1_000)
        }
        // An open alert is resolved by the revocation; a revoked unit opens none.
        _ = try registry.apply([Self.status(revoked, online: false)], now: 2_000)
        #expect(try registry.alerts(machine: revoked).count == 1)
        try registry.markRevoked(revoked)
        #expect(try registry.alerts(machine: revoked).isEmpty)
        #expect(try registry.alerts(openOnly: false, machine: revoked).first?.resolution == "unit revoked")
        _ = try registry.apply([Self.status(revoked, online: true, boot: "b9"), Self.status(revoked, online: false, boot: "b9")], now: 3_000)
        #expect(try registry.alerts(machine: revoked).isEmpty)

        // A unit that says it installs firmware nobody rolled out to it: its offline is told.
        let now = Int(Date().timeIntervalSince1970 * 1000)
        let unplanned: MachineID = "vend-03"
        try registry.upsertMachine(unplanned)
        _ = try registry.apply(
            [
                Self.status(unplanned, online: true),
                .firmwareReported(FirmwareReported(machineId: unplanned, version: "2", state: .installing, reason: nil, at: now)),
                Self.status(unplanned, online: false),
            ], now: now)
        #expect(try registry.alerts(machine: unplanned).first?.suppressed == nil, "a unit's own word silences nothing")

        // A rollout published vend-02's update and it is installing it: its restart's offline is
        // kept, suppressed, and told to no one (opening or resolution).
        try registry.addRelease(FirmwareRelease(version: "2", sha256: String(repeating: "0", count: 64), size: 1, url: "http://x/2/edge-agent"))
        let rollout = try registry.beginRollout(version: "2", waves: [[updating, unplanned]], waveSize: 2, maxFailures: 1, timeoutS: 300, by: "ana", via: .cli)
        try registry.setRolloutUnits(rollout, [updating], .sent)
        let before = try registry.alertDeliveries().count
        _ = try registry.apply(
            [.firmwareReported(FirmwareReported(machineId: updating, version: "2", state: .installing, reason: nil, at: now)), Self.status(updating, online: false)],
            now: now)
        let alert = try #require(try registry.alerts(machine: updating).first)
        #expect(alert.suppressed == "firmware update")
        _ = try registry.apply([Self.status(updating, online: true, boot: "b2")], now: now + 5_000)
        #expect(try registry.alerts(machine: updating).isEmpty)
        #expect(try registry.alertDeliveries().count == before)
    }

    /// The webhook receiver (Tests/alert-receiver/receiver.py) on a free port.
    struct Receiver {
        let process: ChildProcess
        let url: String
        let record: String

        static func start() async throws -> Receiver {
            let port = try LoopbackPort.free()
            let directory = NSTemporaryDirectory() + "pb-receiver-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("alert-receiver/receiver.py").path
            let process = try ChildProcess.spawn("/usr/bin/python3", [script, "\(port)", directory + "/record.jsonl"], outputPath: directory + "/out")
            let deadline = ContinuousClock.now + .seconds(20)
            while !process.output().contains("ready") {
                guard ContinuousClock.now < deadline, process.isRunning else { throw FleetError("the receiver did not start: \(process.output())") }
                try await Task.sleep(for: .milliseconds(20))
            }
            return Receiver(process: process, url: "http://127.0.0.1:\(port)/alerts", record: directory + "/record.jsonl")
        }

        /// What it received, in order.
        func requests() -> [[String: Any]] {
            let text = (try? String(contentsOfFile: record, encoding: .utf8)) ?? ""
            return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
    }

    static func waitFor(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try await !condition() {
            guard ContinuousClock.now < deadline else { throw FleetError("timed out waiting for \(what)") }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    @Test func deliveredSignedRetriedAndDead() async throws {
        let receiver = try await Receiver.start()
        defer { receiver.process.send(SIGKILL) }
        let registry = try Self.registry()
        let hookOut = NSTemporaryDirectory() + "pb-hook-\(UUID().uuidString)"
        var options = AlertDispatcher.Options()
        options.targets = [
            .webhook(url: receiver.url, secret: "s3cret-for-alerts"),
            .exec(command: "test \"$PULSEBRIDGE_ALERT_KIND\" = offline && printf '%s %s\\n' \"$PULSEBRIDGE_ALERT_EVENT\" \"$PULSEBRIDGE_ALERT_MACHINE\" >> '\(hookOut)'"),
        ]
        options.maxAttempts = 3
        options.firstRetryDelay = .milliseconds(100)
        let dispatcher = AlertDispatcher(registry: registry, options: options)
        try registry.setAlertTargets(options.targets.map(\.name))
        for unit: MachineID in ["laundry-01", "dead-01"] {
            try registry.upsertMachine(unit)
            _ = try registry.apply([Self.status(unit, online: true)], now: 1_000)
            _ = try registry.apply([Self.status(unit, online: false)], now: 2_000)
        }
        _ = try registry.apply([Self.status("laundry-01", online: true, boot: "b2")], now: 3_000)
        // A clock-skew alert: the exec hook refuses it (exit 1) every time.
        _ = try registry.apply([Self.heartbeat("laundry-01", at: 60_000)], now: 4_000)

        try await Self.waitFor("every delivery delivered or dead") {
            await dispatcher.deliverDue()
            return try registry.alertDeliveries(state: .pending).isEmpty
        }
        let delivered = try registry.alertDeliveries(state: .delivered)
        let dead = try registry.alertDeliveries(state: .dead)
        // laundry-01: opened + resolved + clock skew to the webhook, each refused once then taken.
        let webhook = "webhook \(receiver.url)"
        #expect(Set(delivered.filter { $0.target == webhook }.map { "\($0.alert.machineId) \($0.event.rawValue) \($0.alert.kind.rawValue)" })
            == ["laundry-01 opened offline", "laundry-01 resolved offline", "laundry-01 opened clock_skew"])
        #expect(delivered.filter { $0.target == webhook }.allSatisfy { $0.attempts == 2 })
        // dead-01: refused every time: dead after 3 attempts, with the reason.
        #expect(dead.filter { $0.target == webhook }.map(\.alert.machineId) == ["dead-01"])
        #expect(dead.first { $0.target == webhook }?.attempts == 3)
        #expect(dead.first { $0.target == webhook }?.lastError == "HTTP 500")
        // The exec hook took the offline events at once and refused the clock skew 3 times.
        let hooked = (try? String(contentsOfFile: hookOut, encoding: .utf8)) ?? ""
        #expect(hooked.split(separator: "\n").sorted() == ["alert.opened dead-01", "alert.opened laundry-01", "alert.resolved laundry-01"], "\(hooked)")
        let execDead = try #require(dead.first { $0.target.hasPrefix("exec") })
        #expect(execDead.alert.kind == .clockSkew && execDead.attempts == 3 && execDead.lastError?.hasPrefix("exited with code 1") == true)

        // Every request is signed: HMAC-SHA256 over "t.body" with the shared secret.
        let requests = receiver.requests()
        #expect(requests.count == 3 * 2 + 3)
        for request in requests {
            let body = Data((request["body"] as? String ?? "").utf8)
            let signature = request["signature"] as? String ?? ""
            let t = Int(signature.split(separator: ",").first?.dropFirst(2) ?? "") ?? 0
            #expect(signature == AlertDispatcher.signature(body: body, secret: "s3cret-for-alerts", at: t))
            #expect(signature != AlertDispatcher.signature(body: body, secret: "another-secret", at: t))
            #expect(request["contentType"] as? String == "application/json")
            let event = try JSONSerialization.jsonObject(with: body) as? [String: Any]
            #expect(event?["type"] as? String == request["event"] as? String)
            #expect((event?["alert"] as? [String: Any])?["machineId"] != nil)
        }
        // Retries wait: each attempt of a delivery is signed at least the backoff after the one
        // before (100 ms, then 200 ms).
        let times = Dictionary(grouping: requests, by: { $0["delivery"] as? String ?? "" }).mapValues { attempts in
            attempts.compactMap { ($0["signature"] as? String)?.split(separator: ",").first.flatMap { Int($0.dropFirst(2)) } }
        }
        for (delivery, stamps) in times {
            for (attempt, (earlier, later)) in zip(stamps, stamps.dropFirst()).enumerated() {
                #expect(later - earlier >= 100 << attempt, "delivery \(delivery): \(stamps)")
            }
        }
    }

    /// Through real agents and `serve`'s monitor: a killed unit's offline reaches the webhook
    /// without anyone asking, and its return resolves it.
    @Test func aKilledUnitReachesTheWebhookAndItsReturnResolvesIt() async throws {
        let receiver = try await Receiver.start()
        defer { receiver.process.send(SIGKILL) }
        try await DynsecFleet.with { fleet in
            let unit: MachineID = "laundry-07"
            _ = try await fleet.provisioner.provision(unit, profile: OperationsTests.fastProfile)
            var options = AlertDispatcher.Options()
            options.targets = [.webhook(url: receiver.url, secret: "s3cret-for-alerts")]
            options.firstRetryDelay = .milliseconds(100)
            let dispatcher = AlertDispatcher(registry: fleet.home.registry, options: options)
            let monitor = try FleetMonitor(home: fleet.home, alertsChanged: { dispatcher.wake() })
            let serve = Task { try await monitor.run() }
            let delivering = Task { try await dispatcher.run() }
            defer {
                serve.cancel()
                delivering.cancel()
            }
            var agent = try OperationsTests.startAgent(fleet, unit)
            try await OperationsTests.eventually("online") { try OperationsTests.state(fleet.home, unit.rawValue)?.state == "online" }
            await agent.killAndWait()
            func delivered(_ event: String) -> Bool {
                receiver.requests().contains { $0["status"] as? Int == 200 && $0["event"] as? String == event && ($0["body"] as? String)?.contains(unit.rawValue) == true }
            }
            try await Self.waitFor("alert.opened delivered") { delivered("alert.opened") }
            agent = try OperationsTests.startAgent(fleet, unit)
            try await Self.waitFor("alert.resolved delivered") { delivered("alert.resolved") }
            #expect(try fleet.home.registry.alerts().isEmpty)
            await agent.killAndWait()
        }
    }
}
