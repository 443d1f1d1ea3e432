import Dispatch
import Locking

/// How a received completion is durable, from its arrival until its first write.
///
/// PROTOCOL.md: a completion is recorded as received before the agent takes the next message.
/// When the pipeline is idle, the network thread does not write a *received* row of its own:
/// it hands the completion over and waits, and the pipeline's first write for it (the train's
/// start, a decision, an answer) makes it durable and releases the network thread. One sync
/// before the first pulse instead of two. When the pipeline is busy (a train running), the
/// network thread records it as received itself, as before; a payment that must wait (the
/// quiet time after a train) is recorded as received before it waits.
///
/// Every write for the payment goes through `write(_:)`, under the receipt's lock, so the
/// network thread taking over after its wait (`ensureDurable`) and the pipeline's write never
/// both happen, and the received row, if there is one, is forgotten in the same transaction.
final class PaymentReceipt: Sendable {
    private struct State {
        /// The received row, while there is one.
        var row: Int64?
        /// Whether the payment is in the journal (received, or decided/answered).
        var durable: Bool
        /// Whether the network thread may stop waiting.
        var released: Bool
    }
    private let state: Locked<State>
    private let releasedSignal = DispatchSemaphore(value: 0)
    /// CLOCK_MONOTONIC when the network thread got it (0: found in the journal at power-up).
    let arrivedNs: UInt64

    private init(_ state: State, arrivedNs: UInt64) {
        self.state = Locked(state)
        self.arrivedNs = arrivedNs
    }

    /// Handed to an idle pipeline; nothing written yet. The network thread waits on it.
    static func fresh(arrivedNs: UInt64 = 0) -> PaymentReceipt {
        PaymentReceipt(State(row: nil, durable: false, released: false), arrivedNs: arrivedNs)
    }

    /// Recorded as received by the network thread (or found so at power-up); nil: the journal
    /// refused the record (the payment lives in memory only, as the unit reports).
    static func recorded(_ row: Int64?, arrivedNs: UInt64 = 0) -> PaymentReceipt {
        PaymentReceipt(State(row: row, durable: row != nil, released: true), arrivedNs: arrivedNs)
    }

    /// The received row, for the results kept in memory when the journal refuses them.
    var row: Int64? { state.withLock { $0.row } }

    /// Runs a journal write for this payment, given its received row (forget it in the same
    /// transaction). After it, whether it succeeded or threw, the network thread is released.
    func write<T>(_ body: (Int64?) throws -> T) throws -> T {
        try state.withLock { s in
            defer { release(&s) }
            let value = try body(s.row)
            s.row = nil
            s.durable = true
            return value
        }
    }

    /// Records the payment as received if nothing has made it durable yet (before the pipeline
    /// waits, or when the network thread stops waiting). A failed record is the journal's
    /// failure to report; the payment goes on in memory.
    func ensureDurable(_ record: () throws -> Int64) rethrows {
        try state.withLock { s in
            defer { release(&s) }
            guard !s.durable else { return }
            s.row = try record()
            s.durable = true
        }
    }

    /// Waits until the pipeline has written the payment (or given up on the journal); false
    /// after `timeout` without that.
    func waitUntilReleased(timeout: DispatchTimeInterval) -> Bool {
        if state.withLock({ $0.released }) { return true }
        return releasedSignal.wait(timeout: .now() + timeout) == .success
    }

    private func release(_ s: inout State) {
        guard !s.released else { return }
        s.released = true
        releasedSignal.signal()
    }
}
