import MessageSchema
import Testing

@testable import EdgeAgent

/// A result's identity (bootId, seq) comes from one place: a republished outbox entry keeps its
/// seq, everything else gets the next one.
struct ResultStampsTests {
    static let result = PaymentResult(
        paymentId: "p-1", machineId: "unit-1", status: .credited, reason: nil, amount: 100,
        pulses: [], pulsesFired: 1, decidedAt: 1_000, bootId: "journalled", seq: 0)

    @Test func seqsFollowThePublishingOrderAndARepublishedEntryKeepsItsOwn() {
        let stamps = ResultStamps(bootId: "boot-a")
        let first = stamps.stamp(Self.result, outboxId: 10)
        let fromMemory = stamps.stamp(Self.result)
        let again = stamps.stamp(Self.result, outboxId: 10)
        let second = stamps.stamp(Self.result, outboxId: 11)
        #expect([first.seq, fromMemory.seq, again.seq, second.seq] == [1, 2, 1, 3])
        #expect([first, fromMemory, again, second].allSatisfy { $0.bootId == "boot-a" })
        // Acknowledged: the entry's seq is forgotten (it is not published again in this boot).
        stamps.acknowledged(outboxId: 10)
        #expect(stamps.stamp(Self.result, outboxId: 10).seq == 4)
    }
}
