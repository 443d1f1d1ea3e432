import EdgeAgent
import Foundation
import MessageSchema
import Testing

/// The agent's journal directly: what survives reopening, retention, the outbox.
@Suite struct AgentStoreTests {
    let path = NSTemporaryDirectory() + "store-\(UUID().uuidString).sqlite"

    func payment(_ id: String, amount: Int = 300) -> PaymentCompleted {
        PaymentCompleted(
            paymentId: PaymentID(rawValue: id)!, machineId: "m-1", amount: amount, currency: "JPY", userId: "u",
            issuedAt: 1_000, expiresAt: 31_000)
    }

    func result(_ id: String, _ status: PaymentStatus, amount: Int = 0, decidedAt: Int = 2_000) -> PaymentResult {
        PaymentResult(
            paymentId: PaymentID(rawValue: id)!, machineId: "m-1", status: status, reason: status == .rejected ? .expired : nil,
            amount: amount, pulses: [PulseCount(channel: "coin", count: amount / 100)], pulsesFired: amount / 100,
            decidedAt: decidedAt, bootId: "", seq: 0)
    }

    @Test func decisionsSurviveACheckpointAndReopening() throws {
        do {
            let store = try AgentStore(path: path)
            for i in 0..<200 {
                try store.recordDecision(result("p-\(i)", .credited, amount: 300), payment: payment("p-\(i)"))
            }
            try store.recordTrainStarted(payment("p-open"), plan: [PulseCount(channel: "coin", count: 3)], at: 5_000)
            try store.checkpoint()
        }
        let reopened = try AgentStore(path: path)
        #expect(try reopened.decision("p-199")?.status == .credited)
        #expect(try reopened.decision("p-199")?.amount == 300)
        #expect(try reopened.decision("p-nope") == nil)
        #expect(try reopened.counters() == PaymentCounters(credited: 200, pulses: 600, creditedAmount: 60_000))
        // The train that started but never finished is found again.
        let open = try reopened.interruptedTrains()
        #expect(open.map(\.paymentId) == ["p-open"])
        #expect(open.first?.plan == [PulseCount(channel: "coin", count: 3)])
        #expect(try reopened.outboxDepth() == 200)
    }

    /// The look-up on a payment's way answers from memory for an ID never decided, and every
    /// decided or started ID (written in this process or found at open) still reads the file.
    @Test func everyDecidedIdIsFoundWithOrWithoutReopening() throws {
        let store = try AgentStore(path: path)
        for i in 0..<500 {
            #expect(try store.decision(PaymentID(rawValue: "q-\(i)")!) == nil)
            if i.isMultiple(of: 2) {
                try store.recordDecision(result("q-\(i)", .credited, amount: 100), payment: payment("q-\(i)", amount: 100))
            } else {
                try store.recordTrainStarted(payment("q-\(i)"), plan: [], at: 5_000)
            }
        }
        let reopened = try AgentStore(path: path)
        for i in 0..<500 {
            let id = PaymentID(rawValue: "q-\(i)")!
            let expected: PaymentStatus? = i.isMultiple(of: 2) ? .credited : nil
            #expect(try store.decision(id)?.status == expected)
            #expect(try store.decision(id) != nil)
            #expect(try reopened.decision(id)?.status == expected)
            #expect(try reopened.decision(id) != nil)
        }
        #expect(try reopened.decision("q-500") == nil)
    }

    @Test func outboxKeepsOrderUntilRemoved() throws {
        let store = try AgentStore(path: path)
        try store.recordDecision(result("p-a", .rejected), payment: payment("p-a"))
        var duplicate = result("p-b", .duplicate)
        duplicate.original = OriginalDecision(status: .credited, reason: nil, amount: 300)
        try store.recordResultOnly(duplicate)
        let entries = try store.outbox()
        #expect(entries.map { $0.result.paymentId } == ["p-a", "p-b"])
        store.acknowledge(entries[0].id)
        #expect(try store.outbox().map { $0.result.paymentId } == ["p-b"])
        // A duplicate is an answer, not a decision.
        #expect(try store.decision("p-b") == nil)
        #expect(try store.counters().duplicate == 1)
    }

    /// An acknowledged result is gone at once for the publisher and the depth, and deleted from
    /// the file with the next decision (never in a commit of its own); one whose deletion a
    /// crash lost is published again, never lost.
    @Test func acknowledgedResultsAreDeletedWithTheNextDecision() throws {
        do {
            let store = try AgentStore(path: path)
            try store.recordDecision(result("p-a", .rejected), payment: payment("p-a"))
            try store.recordDecision(result("p-b", .rejected), payment: payment("p-b"))
            let entries = try store.outbox()
            store.acknowledge(entries[0].id)
            #expect(try store.outbox().map { $0.result.paymentId } == ["p-b"])
            #expect(try store.outboxDepth() == 1)
            #expect(store.hasAcknowledged)
        }
        // A crash before any other write: the acknowledged result comes back, to be sent again.
        do {
            let store = try AgentStore(path: path)
            #expect(try store.outbox().map { $0.result.paymentId } == ["p-a", "p-b"])
            let entries = try store.outbox()
            store.acknowledge(entries[0].id)
            store.acknowledge(entries[1].id)
            #expect(try store.outboxDepth() == 0)
            // The next decision takes the deletions along in its transaction.
            try store.recordDecision(result("p-c", .rejected), payment: payment("p-c"))
            #expect(!store.hasAcknowledged)
        }
        do {
            let store = try AgentStore(path: path)
            #expect(try store.outbox().map { $0.result.paymentId } == ["p-c"])
            store.acknowledge(try store.outbox()[0].id)
            // Between payments (the heartbeat's turn), without a decision.
            try store.flushAcknowledged()
            #expect(!store.hasAcknowledged)
        }
        #expect(try AgentStore(path: path).outboxDepth() == 0)
    }

    @Test func retentionForgetsOnlyOldFinishedDecisions() throws {
        let store = try AgentStore(path: path)
        try store.recordDecision(result("p-old", .credited, amount: 100, decidedAt: 1_000), payment: payment("p-old", amount: 100))
        try store.recordDecision(result("p-new", .credited, amount: 100, decidedAt: 9_000), payment: payment("p-new", amount: 100))
        try store.recordTrainStarted(payment("p-running"), plan: [], at: 500)
        #expect(try store.purgeDecisions(decidedBefore: 5_000) == 1)
        #expect(try store.decision("p-old") == nil)
        #expect(try store.decision("p-new") != nil)
        // An unfinished train is never forgotten: it must still be reported.
        #expect(try store.interruptedTrains().map(\.paymentId) == ["p-running"])
    }
}
