/// The outcome of a payment on the agent.
public enum PaymentStatus: String, Codable, Sendable, Hashable, CaseIterable {
    case credited, rejected, duplicate, uncertain
}

/// How many pulses one output fires (the plan), in `payment.result`.
public struct PulseCount: Codable, Sendable, Hashable {
    public var channel: String
    public var count: Int
    public init(channel: String, count: Int) {
        self.channel = channel
        self.count = count
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        channel = try c.field("channel")
        count = try c.int("count", in: 0...ProtocolLimits.amountRange.upperBound)
    }
}

/// The first decision on a payment, carried by a `duplicate` result.
public struct OriginalDecision: Codable, Sendable, Hashable {
    public var status: PaymentStatus
    public var reason: RejectionReason?
    public var amount: Int

    public init(status: PaymentStatus, reason: RejectionReason?, amount: Int) {
        self.status = status
        self.reason = reason
        self.amount = amount
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        status = try c.field("status")
        reason = try c.optionalField("reason")
        amount = try c.int("amount", in: 0...ProtocolLimits.amountRange.upperBound)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(status, forKey: "status")
        try c.encodeOrNull(reason, forKey: "reason")
        try c.encode(amount, forKey: "amount")
    }
}

/// `payment.result`: what the agent decided, published from its durable outbox.
public struct PaymentResult: Codable, Sendable, Hashable {
    public static let messageType = "payment.result"

    /// Null for a malformed message whose payment ID could not be read.
    public var paymentId: PaymentID?
    public var machineId: MachineID
    public var status: PaymentStatus
    /// Set for `rejected` and `uncertain`.
    public var reason: RejectionReason?
    /// What was credited: 0 unless `credited`.
    public var amount: Int
    /// The plan.
    public var pulses: [PulseCount]
    /// Pulses that actually completed.
    public var pulsesFired: Int
    public var decidedAt: Int
    public var bootId: String
    /// Increases by one for every result a boot publishes.
    public var seq: Int
    /// For `duplicate`: the first decision.
    public var original: OriginalDecision?
    /// For the refusals made before a signature holds (`malformed`, `unknown_key`,
    /// `bad_signature`): lower-case hex SHA-256 of the payload bytes refused. A payment server
    /// counts such a refusal only if it is the hash of what it sent.
    public var payloadSha256: String?

    /// The refusals made before a signature holds: their `paymentId` was never verified.
    public var isRefusalBeforeSignature: Bool {
        status == .rejected && (reason == .malformed || reason == .unknownKey || reason == .badSignature)
    }

    public init(
        paymentId: PaymentID?, machineId: MachineID, status: PaymentStatus, reason: RejectionReason?,
        amount: Int, pulses: [PulseCount], pulsesFired: Int, decidedAt: Int, bootId: String, seq: Int,
        original: OriginalDecision? = nil, payloadSha256: String? = nil
    ) {
        self.paymentId = paymentId
        self.machineId = machineId
        self.status = status
        self.reason = reason
        self.amount = amount
        self.pulses = pulses
        self.pulsesFired = pulsesFired
        self.decidedAt = decidedAt
        self.bootId = bootId
        self.seq = seq
        self.original = original
        self.payloadSha256 = payloadSha256
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectVersion1()
        try c.expectType(Self.messageType)
        paymentId = try c.optionalField("paymentId")
        machineId = try c.field("machineId")
        status = try c.field("status")
        reason = try c.optionalField("reason")
        amount = try c.int("amount", in: 0...ProtocolLimits.amountRange.upperBound)
        pulses = try c.field("pulses")
        pulsesFired = try c.int("pulsesFired", in: 0...ProtocolLimits.amountRange.upperBound)
        decidedAt = try c.time("decidedAt")
        bootId = try c.field("bootId")
        seq = try c.int("seq", in: 0...Int.max)
        original = try c.optionalField("original")
        payloadSha256 = try c.optionalField("payloadSha256")
        if let sha = payloadSha256, !(sha.utf8.count == 64 && sha.utf8.allSatisfy(NameRules.isLowerHexDigit)) {
            throw c.invalid("payloadSha256", "must be 64 lower-case hex digits")
        }
        if (status == .rejected || status == .uncertain) && reason == nil {
            throw c.invalid("reason", "is required when status is \(status.rawValue)")
        }
        if status == .duplicate && original == nil {
            throw c.invalid("original", "is required when status is duplicate")
        }
        if status != .credited && amount != 0 {
            throw c.invalid("amount", "must be 0 unless status is credited")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(1, forKey: "v")
        try c.encode(Self.messageType, forKey: "type")
        try c.encodeOrNull(paymentId, forKey: "paymentId")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(status, forKey: "status")
        try c.encodeOrNull(reason, forKey: "reason")
        try c.encode(amount, forKey: "amount")
        try c.encode(pulses, forKey: "pulses")
        try c.encode(pulsesFired, forKey: "pulsesFired")
        try c.encode(decidedAt, forKey: "decidedAt")
        try c.encode(bootId, forKey: "bootId")
        try c.encode(seq, forKey: "seq")
        if let original { try c.encode(original, forKey: "original") }
        if let payloadSha256 { try c.encode(payloadSha256, forKey: "payloadSha256") }
    }
}
