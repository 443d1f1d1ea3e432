import MessageSchema
import RelayOutput

/// PROTOCOL.md's decision table for `payment.completed`, as pure functions: what the agent
/// knows goes in (`Facts`), the answer comes out. No journal, no clock, no lines, no logging:
/// the agent gathers the facts, calls `decide`, and acts on the answer. The rows after the plan
/// (inhibit input, relay fault, every pulse fired, stopped part-way) belong to the lines;
/// `outcome(of:refusal:)` maps what the engine reports onto them.
public enum DecisionCore {
    /// Everything the table reads.
    public struct Facts: Sendable {
        /// The envelope opened with the trusted keys, or why not.
        public var opened: Result<Verified<PaymentCompleted>, Refusal>
        /// This unit's machine.
        public var machine: MachineID
        /// The first decision for this payment ID (journal, or kept in memory while the journal
        /// cannot take it); nil if there is none.
        public var first: OriginalDecision?
        /// The agent's clock (ms since the epoch).
        public var now: Int
        /// Whether that clock can be trusted (ClockGuard).
        public var clock: ClockGuard.Verdict
        /// When this journal was created: a payment issued before it may have been decided by
        /// a journal that is gone.
        public var journalCreatedAt: Int?
        /// The applied configuration, if any.
        public var config: MachineConfig?
        /// Quiet time left after the previous train before a new one may start (ms).
        public var waitMs: Int

        public init(
            opened: Result<Verified<PaymentCompleted>, Refusal>, machine: MachineID, first: OriginalDecision?, now: Int,
            clock: ClockGuard.Verdict, journalCreatedAt: Int?, config: MachineConfig?, waitMs: Int
        ) {
            self.opened = opened
            self.machine = machine
            self.first = first
            self.now = now
            self.clock = clock
            self.journalCreatedAt = journalCreatedAt
            self.config = config
            self.waitMs = waitMs
        }
    }

    /// What the table says.
    public enum Answer: Sendable, Hashable {
        /// Refused before a signature held (`malformed`, `unknown_key`, `bad_signature`): an
        /// answer, not a decision; the ID, if any, was never verified.
        case refused(RejectionReason, paymentId: PaymentID?)
        /// Signed, but for another machine: an answer, not a decision.
        case wrongMachine(PaymentCompleted)
        /// Decided before: the first decision, again.
        case duplicate(PaymentCompleted, original: OriginalDecision)
        /// A decision: rejected, with the plan when one was made.
        case rejected(PaymentCompleted, RejectionReason, plan: [PulseCount])
        /// Payable: fire this plan (after `waitMs`); the lines decide the rest.
        case fire(PaymentCompleted, PulsePlan)
    }

    /// The first row that applies, in PROTOCOL.md's order.
    public static func decide(_ facts: Facts) -> Answer {
        let payment: PaymentCompleted
        switch facts.opened {
        case .failure(let refusal):
            return .refused(refusal.reason, paymentId: refusal.paymentId)
        case .success(let verified):
            payment = verified.body
        }
        guard payment.machineId == facts.machine else { return .wrongMachine(payment) }
        if let first = facts.first { return .duplicate(payment, original: first) }
        // A clock that cannot be trusted cannot tell that the payment has not expired.
        guard facts.clock == .trusted else { return .rejected(payment, .expired, plan: []) }
        if facts.now > payment.expiresAt { return .rejected(payment, .expired, plan: []) }
        if payment.issuedAt > facts.now + ProtocolLimits.maxClockLeadMs { return .rejected(payment, .notYetValid, plan: []) }
        if let created = facts.journalCreatedAt, payment.issuedAt < created { return .rejected(payment, .expired, plan: []) }
        guard let config = facts.config else { return .rejected(payment, .notConfigured, plan: []) }
        if payment.currency != config.currency { return .rejected(payment, .currencyMismatch, plan: []) }
        let plan: PulsePlan
        do {
            plan = try PulsePlan.make(amount: payment.amount, outputs: config.outputs, maxAmount: config.maxAmount)
        } catch {
            return .rejected(payment, error.reason, plan: [])
        }
        // The train must end by expiresAt − 2 s if it starts after the quiet time: the payment
        // server voids at expiresAt + 5 s.
        guard trainMayStart(at: facts.now + facts.waitMs, durationMs: plan.durationMs, expiresAt: payment.expiresAt) else {
            return .rejected(payment, .expired, plan: plan.pulseCounts)
        }
        return .fire(payment, plan)
    }

    /// Whether a train of `durationMs` starting at `start` ends by `expiresAt` − 2 s. Checked
    /// when deciding, and again on the pulse thread just before the first pulse.
    public static func trainMayStart(at start: Int, durationMs: Int, expiresAt: Int) -> Bool {
        start + durationMs <= expiresAt - ProtocolLimits.trainEndMarginMs
    }

    /// The first decision as a duplicate reports it: a train that started and has no
    /// decision yet is `uncertain` / `interrupted`.
    public static func original(of stored: StoredDecision) -> OriginalDecision {
        OriginalDecision(
            status: stored.status ?? .uncertain, reason: stored.status == nil ? .interrupted : stored.reason, amount: stored.amount)
    }

    /// The table's last rows, from what the engine reports: status and reason of the result.
    /// `refusal` is why the start hook refused the train.
    public static func outcome(of train: TrainOutcome, refusal: StartRefusal?) -> (PaymentStatus, RejectionReason?) {
        switch train {
        case .completed: (.credited, nil)
        case .inhibitedBeforeStart: (.rejected, .machineInhibited)
        case .faultBeforeStart, .shutDown: (.rejected, .relayFault)
        case .declined: (.rejected, refusal?.reason ?? .relayFault)
        case .inhibitedDuringTrain: (.uncertain, .inhibitedDuringTrain)
        case .faultDuringTrain: (.uncertain, .relayFault)
        case .cancelled: (.uncertain, .interrupted)
        }
    }
}

/// Why the agent's start hook, on the pulse thread just before the first edge, refused a train.
public enum StartRefusal: Error {
    /// The last-moment check: the train would now end after `expiresAt` − 2 s.
    case expired
    /// The "train started" record could not be committed: no pulse without it.
    case journal(any Error)

    public var reason: RejectionReason {
        switch self {
        case .expired: .expired
        case .journal: .relayFault
        }
    }
}
