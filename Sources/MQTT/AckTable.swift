/// An acknowledgement from the broker, keyed by message ID.
enum Ack: Sendable {
    case publish(reasonCode: Int32)
    case subscribe(codes: [Int32])
    case unsubscribe
}

/// Who waits for an acknowledgement.
enum PendingAck: Sendable {
    case publish(topic: String, CheckedContinuation<Ack, any Error>)
    case subscribe(filter: String, CheckedContinuation<Ack, any Error>)
    case unsubscribe(CheckedContinuation<Ack, any Error>)
    /// A subscription the client restores by itself after a reconnect.
    case restore(String)
    /// A QoS 0 publish: libmosquitto reports it sent, nobody waits.
    case ignored

    /// Resumes a waiting caller with `error`, or with `CancellationError` when nil.
    func fail(_ error: MQTTError?) {
        let failure: any Error = error ?? CancellationError()
        switch self {
        case .publish(_, let c), .subscribe(_, let c), .unsubscribe(let c): c.resume(throwing: failure)
        case .restore, .ignored: break
        }
    }
}

/// Reconciles message IDs with acknowledgements. libmosquitto hands out the ID inside the
/// publish call and its network thread can receive the acknowledgement before the caller
/// records the ID, so either side may come first; each ID is matched exactly once.
struct AckTable {
    private var waiting: [Int32: PendingAck] = [:]
    private var early: [Int32: Ack] = [:]

    /// Records who waits for `mid`; returns the acknowledgement if it already came.
    mutating func register(mid: Int32, _ waiter: PendingAck) -> Ack? {
        if let ack = early.removeValue(forKey: mid) { return ack }
        waiting[mid] = waiter
        return nil
    }

    /// Records the acknowledgement of `mid`; returns who waits for it, if known yet.
    mutating func acknowledge(mid: Int32, _ ack: Ack) -> PendingAck? {
        if let waiter = waiting.removeValue(forKey: mid) { return waiter }
        early[mid] = ack
        return nil
    }

    /// Forgets a waiter whose task was cancelled; its acknowledgement, if it comes, is dropped.
    mutating func cancel(mid: Int32) -> PendingAck? {
        guard let waiter = waiting[mid] else { return nil }
        waiting[mid] = .ignored
        return waiter
    }

    /// Every caller still waiting, for `close()` to fail.
    func drainWaiters() -> [PendingAck] { Array(waiting.values) }
}
