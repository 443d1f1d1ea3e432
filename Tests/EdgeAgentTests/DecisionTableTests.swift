import EdgeAgent
import Foundation
import LocalServices
import MQTT
import MessageSchema
import RelayOutput
import Testing
import TestSupport

/// Every row of PROTOCOL.md's decision table, against the real `edge-agent` binary and a real
/// broker, published by a test payment server.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct DecisionTableTests {
    /// Starts one configured unit and waits until it is online.
    func withUnit(
        configured: Bool = true, config: ((FleetHarness, MachineID) -> MachineConfig)? = nil,
        _ body: (FleetHarness, AgentUnit) async throws -> Void
    ) async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "laundry-07"
            let unit = try fleet.unit(machine, initialConfig: config?(fleet, machine), configured: configured)
            try unit.start()
            _ = try await fleet.status(machine, .online)
            try await body(fleet, unit)
        }
    }

    @Test func credited() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 1300)
            try await fleet.publish(payment)
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .credited)
            #expect(result.reason == nil)
            #expect(result.amount == 1300)
            #expect(result.pulses == [PulseCount(channel: "coin", count: 3), PulseCount(channel: "bill", count: 1)])
            #expect(result.pulsesFired == 4)
            #expect(result.seq >= 1)
            #expect(unit.activations(line: 17) == 3)
            #expect(unit.activations(line: 27) == 1)
        }
    }

    @Test func malformed() async throws {
        try await withUnit { fleet, unit in
            try await fleet.publishRaw(Data("{not json".utf8), to: unit.machine)
            let result = try await fleet.result(nil, machine: unit.machine)
            #expect(result.status == .rejected)
            #expect(result.reason == .malformed)
            #expect(result.paymentId == nil)
            // A malformed body whose payment ID can be read names it.
            var payment = fleet.payment(unit.machine, amount: 400)
            payment.amount = 0
            let body = String(decoding: WireCoding.encode(payment), as: UTF8.self)
            try await fleet.publishRaw(SignedEnvelope.sign(body: body, kid: fleet.paymentKid, key: fleet.paymentKey).encoded(), to: unit.machine)
            let named = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(named.reason == .malformed)
            #expect(unit.edges.filter(\.active).isEmpty)
        }
    }

    @Test func unknownKey() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 400)
            try await fleet.publish(payment, kid: "stranger", key: try Ed25519PrivateKey())
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .rejected)
            #expect(result.reason == .unknownKey)
            // A fleet key may not sign payments.
            let second = fleet.payment(unit.machine, amount: 400)
            try await fleet.publish(second, kid: fleet.fleetKid, key: fleet.fleetKey)
            #expect(try await fleet.result(second.paymentId, machine: unit.machine).reason == .unknownKey)
            #expect(unit.edges.filter(\.active).isEmpty)
        }
    }

    @Test func badSignature() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 400)
            try await fleet.publish(payment, kid: fleet.paymentKid, key: try Ed25519PrivateKey())
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .rejected)
            #expect(result.reason == .badSignature)
            // A forged message does not decide the payment ID: the real one still credits.
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: unit.machine).status == .credited)
        }
    }

    @Test func wrongMachine() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment("vending-99", amount: 400)
            try await fleet.publish(payment, to: unit.machine)
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .rejected)
            #expect(result.reason == .wrongMachine)
            #expect(unit.edges.filter(\.active).isEmpty)
        }
    }

    @Test func duplicatesGetTheFirstDecision() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 200)
            for _ in 0..<10 { try await fleet.publish(payment) }
            var results: [PaymentResult] = []
            for _ in 0..<10 { results.append(try await fleet.result(payment.paymentId, machine: unit.machine)) }
            #expect(results.filter { $0.status == .credited }.count == 1)
            let duplicates = results.filter { $0.status == .duplicate }
            #expect(duplicates.count == 9)
            #expect(duplicates.allSatisfy { $0.original == OriginalDecision(status: .credited, reason: nil, amount: 200) && $0.amount == 0 })
            #expect(unit.activations(line: 17) == 2)
            // seq increases by one per result within the boot.
            let seqs = results.map(\.seq).sorted()
            #expect(seqs == Array(seqs[0]..<(seqs[0] + 10)))
        }
    }

    @Test func expired() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 400, issuedAt: FleetHarness.nowMs() - 60_000, ttlMs: 30_000)
            try await fleet.publish(payment, withExpiry: false)
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.reason == .expired)
            #expect(unit.edges.filter(\.active).isEmpty)
        }
    }

    @Test func notYetValid() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 400, issuedAt: FleetHarness.nowMs() + 120_000, ttlMs: 60_000)
            try await fleet.publish(payment, withExpiry: false)
            #expect(try await fleet.result(payment.paymentId, machine: unit.machine).reason == .notYetValid)
        }
    }

    @Test func notConfigured() async throws {
        try await withUnit(configured: false) { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 400)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: unit.machine).reason == .notConfigured)
        }
    }

    @Test func currencyMismatch() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 400, currency: "EUR")
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: unit.machine).reason == .currencyMismatch)
        }
    }

    @Test func overLimit() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 5100)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: unit.machine).reason == .overLimit)
        }
    }

    @Test func amountNotPayable() async throws {
        try await withUnit { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 450)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: unit.machine).reason == .amountNotPayable)
        }
    }

    @Test func machineInhibited() async throws {
        try await withUnit { fleet, unit in
            try unit.simulator.setInhibit(true)
            let payment = fleet.payment(unit.machine, amount: 400)
            try await fleet.publish(payment)
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .rejected)
            #expect(result.reason == .machineInhibited)
            #expect(unit.edges.filter(\.active).isEmpty)
        }
    }

    @Test func relayFaultBeforeTheFirstPulse() async throws {
        try await withUnit { fleet, unit in
            try unit.simulator.setFault("drive")
            let payment = fleet.payment(unit.machine, amount: 400)
            try await fleet.publish(payment)
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .rejected)
            #expect(result.reason == .relayFault)
            #expect(unit.edges.filter(\.active).isEmpty)
            // The heartbeat says the relay is at fault.
            _ = try await fleet.heartbeat(unit.machine) { $0.relay == .fault }
        }
    }

    @Test func uncertainWhenTheRelayFailsPartWay() async throws {
        try await withUnit { fleet, unit in
            try unit.simulator.setFault("after:2")
            let payment = fleet.payment(unit.machine, amount: 500)
            try await fleet.publish(payment)
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .uncertain)
            #expect(result.reason == .relayFault)
            #expect(result.pulsesFired == 2)
            #expect(result.amount == 0)
            #expect(unit.activations(line: 17) == 2)
            #expect(unit.edges.last?.active == false)
        }
    }

    @Test func uncertainWhenInhibitedDuringTheTrain() async throws {
        try await withUnit(config: { fleet, machine in
            fleet.config(machine, outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 100, gapMs: 100)])
        }) { fleet, unit in
            let payment = fleet.payment(unit.machine, amount: 1000)
            try await fleet.publish(payment)
            try await unit.waitForActivations(2)
            try unit.simulator.setInhibit(true)
            let result = try await fleet.result(payment.paymentId, machine: unit.machine)
            #expect(result.status == .uncertain)
            #expect(result.reason == .inhibitedDuringTrain)
            #expect((2..<10).contains(result.pulsesFired))
            #expect(unit.activations(line: 17) == result.pulsesFired)
        }
    }
}
