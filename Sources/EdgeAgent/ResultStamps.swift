import Locking
import MessageSchema

/// The identity of every result this agent publishes, stamped here and nowhere else:
/// `bootId` (new at every start) and `seq` (1, 2, 3… in this boot, in publishing order).
///
/// Results are journalled without it (`seq` 0) and stamped as they go out. An outbox entry
/// published again in the same boot (a reconnect before its PUBACK) keeps its `seq`, so a
/// consumer sees the very same message twice and de-duplicates it; after a restart it gets a
/// new identity, as the protocol allows (consumers de-duplicate by machine and payment ID).
final class ResultStamps: Sendable {
    let bootId: String
    private let seqs = Locked<(last: Int, byOutboxId: [Int64: Int])>((0, [:]))

    init(bootId: String) {
        self.bootId = bootId
    }

    /// `result` with this boot's identity: the seq already given to outbox entry `outboxId`,
    /// or the next one.
    func stamp(_ result: PaymentResult, outboxId: Int64? = nil) -> PaymentResult {
        var stamped = result
        stamped.bootId = bootId
        stamped.seq = seqs.withLock { s in
            if let outboxId, let seq = s.byOutboxId[outboxId] { return seq }
            s.last += 1
            if let outboxId { s.byOutboxId[outboxId] = s.last }
            return s.last
        }
        return stamped
    }

    /// Outbox entry `outboxId` is acknowledged: its seq is not needed again.
    func acknowledged(outboxId: Int64) {
        _ = seqs.withLock { $0.byOutboxId.removeValue(forKey: outboxId) }
    }
}
