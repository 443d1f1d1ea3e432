import FleetManager
import Foundation
import LocalServices
import MQTT
import MessageSchema
import PaymentSDK
import Testing
import TestSupport
import UnitSimulator

/// The unit simulator against a real broker with provisioned identities: every simulated unit
/// is its own session with its own credentials, decides payments with the agent's
/// `DecisionCore`, and comes back after the broker restarts.
@Suite(.serialized, .timeLimit(.minutes(5)))
struct UnitSimulatorTests {
    @Test func aSimulatedFleetConnectsPaysAndReturnsAfterABrokerRestart() async throws {
        try await DynsecFleet.with(.passwordFile) { fleet in
            let count = 300
            let csv = NSTemporaryDirectory() + "pb-sim-\(UUID().uuidString).csv"
            try (0..<count).map { "sim-\($0)" }.joined(separator: "\n").write(toFile: csv, atomically: true, encoding: .utf8)
            let report = try await fleet.provisioner.provisionAll(csv: csv)
            #expect(report.provisioned.count == count && report.failed.isEmpty)
            let bundles = try (0..<count).map { try fleet.bundle(MachineID(unchecked: "sim-\($0)")) }

            // The manager sees each unit's own retained `online`.
            let watcher = try await fleet.home.settings.manager.connect(clientID: "sim-watcher")
            let statuses = Inbox(watcher)
            try await watcher.subscribe(fleet.home.topics.filter(.status))

            var options = UnitFleet.Options(host: fleet.broker!.host, port: fleet.broker!.port)
            options.heartbeatSeconds = 1
            let units = UnitFleet(options: options)
            try await units.start(bundles)
            try await units.waitUntil("every unit online", timeout: .seconds(60)) { $0.online == count }
            var online = Set<String>()
            while online.count < count {
                let message = try await statuses.next("online statuses", timeout: .seconds(20)) { _ in true }
                if let status = try? WireCoding.decode(StatusMessage.self, from: message.payload), status.state == .online,
                    message.topic == fleet.home.topics.topic(.status, for: status.machineId)
                {
                    online.insert(status.machineId.rawValue)
                }
            }
            #expect(units.current.refusedConnects == 0 && units.current.refusedSubscriptions == 0)

            // Payments through the SDK: credited after the train; again → the first decision;
            // an unknown key → refused before any decision.
            let (kid, key) = try fleet.home.signingKey(.payment)
            let payments = try await PaymentClient.connect(fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: kid, key: key)
            let currency = CurrencyCode(unchecked: fleet.home.settings.currency)
            let machines = (0..<20).map { MachineID(unchecked: "sim-\($0 * 15)") }
            let outcomes = try await withThrowingTaskGroup(of: PaymentOutcome.self) { group in
                for machine in machines {
                    group.addTask { try await payments.pay(machine, amount: 300, currency: currency, userId: UserID(unchecked: "user-\(machine)")) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            #expect(outcomes.allSatisfy { $0.result?.status == .credited && $0.result?.amount == 300 && $0.result?.pulsesFired == 3 })
            let first = try #require(outcomes.first)
            let again = try await payments.publishAndWait(
                first.payment, envelope: SignedEnvelope.sign(first.payment, kid: kid, key: key).encoded())
            #expect(again.result?.status == .duplicate)
            #expect(again.result?.original?.status == .credited)
            // One payment server identity, one connection at a time: its client ID is its
            // username, so a second connection would take the first one's session.
            await payments.close()
            let stranger = try Ed25519PrivateKey()
            let forged = try await PaymentClient.connect(
                fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: KeyID(unchecked: "pay-stranger"), key: stranger,
                clientID: "payment-server")
            let refused = try await forged.pay("sim-7", amount: 300, currency: currency, userId: "user-forger")
            #expect(refused.result?.status == .rejected && refused.result?.reason == .unknownKey)
            await forged.close()

            // The broker restarts: every unit reconnects with its own session.
            let before = units.current.online
            #expect(before == count)
            try await fleet.broker!.restart()
            try await units.waitUntil("every unit back online", timeout: .seconds(90)) {
                $0.connacks >= 2 * count && $0.online == count && $0.connected == count
            }
            #expect(units.current.everConnected == count)
            let back = try await PaymentClient.connect(fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: kid, key: key)
            let after = try await back.pay("sim-299", amount: 200, currency: currency, userId: "user-after")
            #expect(after.result?.status == .credited)

            // The broker dies (kill -9) while completions wait for their PUBACK: the SDK sends
            // each again when it is back (the units' sessions were saved by the restart above),
            // and every one is settled by the units' own answers, none left unknown.
            let frozen = try #require(fleet.broker!.processForTesting)
            frozen.send(SIGSTOP)
            let inFlight = Task {
                try await withThrowingTaskGroup(of: PaymentOutcome.self) { group in
                    for i in 0..<30 {
                        group.addTask { try await back.pay(MachineID(unchecked: "sim-\(i * 7)"), amount: 100, currency: currency, userId: "user-crash") }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
            }
            // Killed at once: each publish is on its way to the frozen broker, or starts once it
            // is gone; either way it is lost with the connection.
            await fleet.broker!.kill()
            try await fleet.broker!.restart()
            let settled = try await inFlight.value
            #expect(settled.count == 30)
            #expect(settled.allSatisfy { $0.action == .capture }, "\(settled.map { "\($0.result?.status.rawValue ?? "none")" })")
            await back.close()
            await watcher.close()
            await units.stop()
        }
    }
}
