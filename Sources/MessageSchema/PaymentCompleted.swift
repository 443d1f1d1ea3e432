/// The body of a signed `payment.completed`: a payment server tells one machine to credit.
public struct PaymentCompleted: Codable, Sendable, Hashable, SignedBody {
    public static let messageType = "payment.completed"
    public static let signerPurpose = KeyPurpose.payment

    public var paymentId: PaymentID
    public var machineId: MachineID
    /// Minor units of `currency`, 1 to 10,000,000.
    public var amount: Int
    public var currency: CurrencyCode
    public var userId: UserID
    /// Milliseconds since the Unix epoch.
    public var issuedAt: Int
    /// Milliseconds since the Unix epoch; 1 s to 600 s after `issuedAt`.
    public var expiresAt: Int

    public init(
        paymentId: PaymentID, machineId: MachineID, amount: Int, currency: CurrencyCode, userId: UserID,
        issuedAt: Int, expiresAt: Int
    ) {
        self.paymentId = paymentId
        self.machineId = machineId
        self.amount = amount
        self.currency = currency
        self.userId = userId
        self.issuedAt = issuedAt
        self.expiresAt = expiresAt
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectType(Self.messageType)
        paymentId = try c.field("paymentId")
        machineId = try c.field("machineId")
        amount = try c.int("amount", in: ProtocolLimits.amountRange)
        currency = try c.field("currency")
        userId = try c.field("userId")
        issuedAt = try c.time("issuedAt")
        expiresAt = try c.time("expiresAt")
        let lifetime = expiresAt - issuedAt
        guard ProtocolLimits.paymentLifetimeMs.contains(lifetime) else {
            throw c.invalid("expiresAt", "expiresAt - issuedAt is \(lifetime) ms, must be 1 s to 600 s")
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(Self.messageType, forKey: "type")
        try c.encode(paymentId, forKey: "paymentId")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(amount, forKey: "amount")
        try c.encode(currency, forKey: "currency")
        try c.encode(userId, forKey: "userId")
        try c.encode(issuedAt, forKey: "issuedAt")
        try c.encode(expiresAt, forKey: "expiresAt")
    }

    /// The MQTT 5 message expiry the publisher sets: seconds left until `expiresAt`, rounded up.
    public func messageExpirySeconds(now: Int) -> UInt32 {
        UInt32(max(1, (expiresAt - now + 999) / 1000))
    }
}
