@testable import EdgeAgent
import Foundation
import MessageSchema
import Testing

/// How a completion is durable between its arrival and its first write (PaymentReceipt): the
/// network thread's wait, the pipeline's write, and the take-over when the wait runs out. Each
/// test checks the journal, not the receipt's word.
@Suite struct PaymentReceiptTests {
    let path = NSTemporaryDirectory() + "receipt-\(UUID().uuidString).sqlite"
    let payload = Data(#"{"a completion":1}"#.utf8)

    func payment(_ id: String) -> PaymentCompleted {
        PaymentCompleted(
            paymentId: PaymentID(rawValue: id)!, machineId: "m-1", amount: 300, currency: "JPY", userId: "u",
            issuedAt: 1_000, expiresAt: 31_000)
    }

    @Test func theStartRecordReleasesTheNetworkThreadAndNoReceivedRowIsLeft() async throws {
        let store = try AgentStore(path: path)
        let receipt = PaymentReceipt.fresh()
        #expect(!receipt.waitUntilReleased(timeout: .milliseconds(1)))
        try receipt.write { row in
            #expect(row == nil)
            try store.recordTrainStarted(payment("p-1"), plan: [PulseCount(channel: "coin", count: 3)], at: 5_000, received: row)
        }
        #expect(receipt.waitUntilReleased(timeout: .milliseconds(1)))
        #expect(try store.interruptedTrains().map(\.paymentId) == ["p-1"])
        #expect(try store.pendingReceived().isEmpty)
        // Released and durable: the network thread's take-over writes nothing more.
        try receipt.ensureDurable { Issue.record("recorded twice"); return try store.recordReceived(payload, at: 1) }
        #expect(try store.pendingReceived().isEmpty)
    }

    @Test func aWaitThatRunsOutRecordsItAndTheDecisionForgetsThatRow() async throws {
        let store = try AgentStore(path: path)
        let receipt = PaymentReceipt.fresh()
        #expect(!receipt.waitUntilReleased(timeout: .milliseconds(5)))
        try receipt.ensureDurable { try store.recordReceived(payload, at: 1) }
        #expect(try store.pendingReceived().map(\.payload) == [payload])
        #expect(receipt.row != nil)
        // The pipeline's decision comes later, and deletes the row in its own transaction.
        let rejected = PaymentResult(
            paymentId: "p-2", machineId: "m-1", status: .rejected, reason: .expired, amount: 0, pulses: [], pulsesFired: 0,
            decidedAt: 2_000, bootId: "", seq: 0)
        try receipt.write { row in
            #expect(row != nil)
            try store.recordDecision(rejected, payment: payment("p-2"), received: row)
        }
        #expect(try store.pendingReceived().isEmpty)
        #expect(try store.decision("p-2")?.status == .rejected)
        #expect(receipt.row == nil)
    }

    @Test func aFailedWriteReleasesTheWaitAndKeepsTheReceivedRow() async throws {
        let store = try AgentStore(path: path)
        let id = try store.recordReceived(payload, at: 1)
        let receipt = PaymentReceipt.recorded(id)
        struct Refused: Error {}
        #expect(throws: Refused.self) { try receipt.write { _ in throw Refused() } }
        #expect(receipt.waitUntilReleased(timeout: .milliseconds(1)))
        // The row stays for the retry (and for a restart, which decides it first).
        #expect(receipt.row == id)
        #expect(try store.pendingReceived().count == 1)
    }

    @Test func theNetworkThreadIsReleasedByAWriteOnAnotherThread() async throws {
        let store = try AgentStore(path: path)
        let receipt = PaymentReceipt.fresh()
        let pipeline = Thread {
            try? receipt.write { row in try store.recordResultOnly(
                PaymentResult(paymentId: nil, machineId: "m-1", status: .rejected, reason: .malformed, amount: 0, pulses: [],
                              pulsesFired: 0, decidedAt: 1, bootId: "", seq: 0), received: row) }
        }
        pipeline.start()
        #expect(receipt.waitUntilReleased(timeout: .seconds(10)))
        #expect(try store.outboxDepth() == 1)
    }
}
