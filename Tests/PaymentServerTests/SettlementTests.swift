import FleetManager
import Foundation
import LocalServices
import MessageSchema
import RelayOutput
import Testing
import TestSupport

/// The money rules on the payment server's side, without a browser (TestSupport's
/// `WebCustomer` makes the same HTTP requests a phone does): a machine that is busy or not
/// ready, and a payment server that crashes while a machine is being credited.
@Suite(.serialized, .timeLimit(.minutes(10)))
struct SettlementTests {
    /// 100 per pulse, 100 ms on, 100 ms off: 2,000 is a 4 s train. An inhibit input on line 22.
    static let profile = MachineProfile(
        maxAmount: 5_000, heartbeatS: 2, postVendDelayMs: 0,
        outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 100, gapMs: 100)],
        inhibit: InhibitConfig(chip: "gpiochip0", line: 22, activeLow: true))
    static let machine: MachineID = "wash-07"

    static func with(_ body: (PaymentServerFleet, AgentUnit) async throws -> Void) async throws {
        try await PaymentServerFleet.with(
            [PaidMachine(id: machine, name: "Wash bay 7", place: "Test", menu: [("Quick", 300), ("Long", 2000)], profile: profile)]
        ) { fleet in
            try await body(fleet, fleet.agents[machine]!)
        }
    }

    @Test func aMachineThatIsNotReadyOrBusyTakesNoMoney() async throws {
        try await Self.with { fleet, agent in
            // The door is open: the payment is voided, nothing charged, and the page says so.
            try agent.simulator.setInhibit(true)
            var alice = WebCustomer(base: fleet.publicUrl)
            let refused = try await alice.pay(machine: Self.machine.rawValue, amount: 300, card: "4242424242424242")
            #expect(refused.state == "voided", "\(refused)")
            #expect(refused.text.contains("it is not ready") && refused.text.contains("not been charged"), "\(refused)")
            #expect(agent.activations(line: 17) == 0)
            var page = try await alice.request("GET", "/m/\(Self.machine)")
            #expect(page.body.contains("May be out of order"))
            // Closed again: it can be paid (the warning does not lock customers out).
            try agent.simulator.setInhibit(false)
            let paid = try await alice.pay(machine: Self.machine.rawValue, amount: 300, card: "4242424242424242")
            #expect(paid.state == "captured", "\(paid)")
            #expect(agent.activations(line: 17) == 3)

            // Busy while a train runs: a second customer is refused, not charged.
            let long = Task {
                var bob = WebCustomer(base: fleet.publicUrl)
                return try await bob.pay(machine: Self.machine.rawValue, amount: 2000, card: "4242424242424242")
            }
            try await fleet.waitUntil("the long train started") { agent.activations(line: 17) >= 3 + 2 }
            var carol = WebCustomer(base: fleet.publicUrl)
            page = try await carol.request("GET", "/m/\(Self.machine)")
            #expect(page.body.contains("Busy"), "\(page.body.prefix(800))")
            #expect(page.body.contains(" disabled"), "the buttons are disabled")
            let csrf = try #require(WebCustomer.field("csrf", in: page.body)), key = try #require(WebCustomer.field("key", in: page.body))
            let forced = try await carol.request("POST", "/m/\(Self.machine)/pay", form: ["csrf": csrf, "key": key, "amount": "300"])
            #expect(forced.status == 409 && forced.body.contains("Machine busy"), "\(forced.status)")
            let done = try await long.value
            #expect(done.state == "captured", "\(done)")
            #expect(agent.activations(line: 17) == 3 + 20)
            let payments = try await fleet.serverPayments()
            #expect(payments.count == 3, "carol's refused press made no payment: \(payments.keys)")
        }
    }

    @Test func aPaymentServerCrashMidTrainLosesNothing() async throws {
        try await Self.with { fleet, agent in
            let paying = Task {
                var dave = WebCustomer(base: fleet.publicUrl)
                return try? await dave.pay(machine: Self.machine.rawValue, amount: 2000, card: "4242424242424242")
            }
            try await fleet.waitUntil("the train started") { agent.activations(line: 17) >= 2 }
            // The server dies while the machine is being credited, and comes back.
            try await fleet.crashAndRestartServer()
            _ = await paying.value  // its connection died with the server
            try await fleet.waitUntil("the train finished") { agent.activations(line: 17) == 20 }
            var payments = try await fleet.serverPayments()
            #expect(payments.count == 1)
            let (id, payment) = try #require(payments.first)
            // Its waiter died with the process: the payment is kept as unknown (no result is
            // not a void), the authorisation is not released, and the operator is told.
            #expect(payment["state"] as? String == "unknown", "\(payment)")
            #expect(payment["providerState"] as? String == "authorized")
            #expect(readTextFile(fleet.directory + "/payment-server-restarted.log").contains("ALERT"))
            #expect(fleet.completions.withLock { $0[id] } == 1, "one completion, not re-sent")
            // The machine credited it (fleet-manager payments has the result): capture.
            try await fleet.waitUntil("serve recorded the result") {
                try fleet.home.registry.payments().contains { $0.paymentId == id && $0.status == .credited }
            }
            let settle = try ChildProcess.spawn(
                PaymentServerFleet.binary("payment-server"), ["settle", id, "--action", "capture", "--config", fleet.configPath],
                outputPath: fleet.directory + "/settle.out")
            #expect(await settle.waitForExit() == .exited(0), "\(settle.output())")
            payments = try await fleet.serverPayments()
            #expect(payments[id]?["state"] as? String == "captured")
            #expect(payments[id]?["providerState"] as? String == "captured")
        }
    }
}
