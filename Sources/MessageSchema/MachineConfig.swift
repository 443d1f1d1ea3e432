/// One relay output: a line on a GPIO chip wired to the machine's coin or bill input.
public struct OutputConfig: Codable, Sendable, Hashable {
    /// Unique name, e.g. `coin`, `bill`.
    public var channel: String
    /// GPIO chip, e.g. `gpiochip0`.
    public var chip: String
    /// Line offset on the chip.
    public var line: Int
    /// The relay closes when the line is low.
    public var activeLow: Bool
    /// Money one pulse stands for, in minor units; ≥ 1.
    public var valuePerPulse: Int
    /// How long the contact closes, 10 to 2000 ms.
    public var pulseMs: Int
    /// Pause after each pulse, 10 to 2000 ms.
    public var gapMs: Int

    public init(
        channel: String, chip: String, line: Int, activeLow: Bool = false, valuePerPulse: Int, pulseMs: Int,
        gapMs: Int
    ) {
        self.channel = channel
        self.chip = chip
        self.line = line
        self.activeLow = activeLow
        self.valuePerPulse = valuePerPulse
        self.pulseMs = pulseMs
        self.gapMs = gapMs
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        channel = try c.field("channel")
        guard (1...32).contains(channel.utf8.count), NameRules.isUserID(channel) else {
            throw c.invalid("channel", "must be 1 to 32 characters without control characters")
        }
        chip = try c.field("chip")
        guard (1...64).contains(chip.utf8.count), !chip.contains("/") || chip.hasPrefix("/dev/") else {
            throw c.invalid("chip", "must name a GPIO chip, e.g. gpiochip0")
        }
        line = try c.int("line", in: 0...1023)
        activeLow = try c.field("activeLow")
        valuePerPulse = try c.int("valuePerPulse", in: 1...ProtocolLimits.amountRange.upperBound)
        pulseMs = try c.int("pulseMs", in: 10...2000)
        gapMs = try c.int("gapMs", in: 10...2000)
    }

    /// Time one pulse takes, contact plus pause.
    public var periodMs: Int { pulseMs + gapMs }
}

/// The machine's inhibit input: active while the machine refuses money (door open, busy).
public struct InhibitConfig: Codable, Sendable, Hashable {
    public var chip: String
    public var line: Int
    public var activeLow: Bool

    public init(chip: String, line: Int, activeLow: Bool) {
        self.chip = chip
        self.line = line
        self.activeLow = activeLow
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        chip = try c.field("chip")
        guard (1...64).contains(chip.utf8.count) else { throw c.invalid("chip", "must name a GPIO chip") }
        line = try c.int("line", in: 0...1023)
        activeLow = try c.field("activeLow")
    }
}

/// What a key may sign.
public enum KeyPurpose: String, Codable, Sendable, Hashable, CaseIterable {
    /// Payment servers: `payment.completed` only.
    case payment
    /// The fleet manager: `config` and `firmware` only.
    case fleet
}

/// A trusted public key, as configurations carry it.
public struct TrustEntry: Codable, Sendable, Hashable {
    public var kid: KeyID
    public var purpose: KeyPurpose
    /// Standard base64 of the 32 raw Ed25519 public-key bytes.
    public var publicKey: String

    public init(kid: KeyID, purpose: KeyPurpose, publicKey: String) {
        self.kid = kid
        self.purpose = purpose
        self.publicKey = publicKey
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        kid = try c.field("kid")
        purpose = try c.field("purpose")
        publicKey = try c.field("publicKey")
        guard (try? Ed25519PublicKey(base64: publicKey)) != nil else {
            throw c.invalid("publicKey", "must be base64 of 32 raw Ed25519 public-key bytes")
        }
    }
}

/// The body of a signed `config`: how a machine pays out and whom it trusts.
public struct MachineConfig: Codable, Sendable, Hashable, SignedBody {
    public static let messageType = "config"
    public static let signerPurpose = KeyPurpose.fleet

    public var machineId: MachineID
    /// Strictly increasing; an agent ignores a version ≤ the one applied.
    public var version: Int
    public var issuedAt: Int
    public var currency: CurrencyCode
    /// 1 to 10,000,000.
    public var maxAmount: Int
    /// 1 to 3600.
    public var heartbeatS: Int
    /// Quiet time after a train before the next starts, 0 to 60000 ms.
    public var postVendDelayMs: Int
    /// 1 to 8 outputs, channel names unique.
    public var outputs: [OutputConfig]
    public var inhibit: InhibitConfig?
    /// When present, replaces the trusted keys; keeps at least one `fleet` key.
    public var trust: [TrustEntry]?

    public init(
        machineId: MachineID, version: Int, issuedAt: Int, currency: CurrencyCode, maxAmount: Int,
        heartbeatS: Int, postVendDelayMs: Int, outputs: [OutputConfig], inhibit: InhibitConfig?,
        trust: [TrustEntry]?
    ) {
        self.machineId = machineId
        self.version = version
        self.issuedAt = issuedAt
        self.currency = currency
        self.maxAmount = maxAmount
        self.heartbeatS = heartbeatS
        self.postVendDelayMs = postVendDelayMs
        self.outputs = outputs
        self.inhibit = inhibit
        self.trust = trust
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectType(Self.messageType)
        machineId = try c.field("machineId")
        version = try c.int("version", in: 0...Int(Int64.max / 2))
        issuedAt = try c.time("issuedAt")
        currency = try c.field("currency")
        maxAmount = try c.int("maxAmount", in: ProtocolLimits.amountRange)
        heartbeatS = try c.int("heartbeatS", in: 1...3600)
        postVendDelayMs = try c.int("postVendDelayMs", in: 0...60_000)
        outputs = try c.field("outputs")
        guard (1...8).contains(outputs.count) else {
            throw c.invalid("outputs", "has \(outputs.count) outputs, must have 1 to 8")
        }
        guard Set(outputs.map(\.channel)).count == outputs.count else {
            throw c.invalid("outputs", "channel names must be unique")
        }
        inhibit = try c.optionalField("inhibit")
        trust = try c.optionalField("trust")
        if let trust {
            guard trust.contains(where: { $0.purpose == .fleet }) else {
                throw c.invalid("trust", "must keep at least one fleet key")
            }
            guard Set(trust.map(\.kid)).count == trust.count else {
                throw c.invalid("trust", "key IDs must be unique")
            }
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(Self.messageType, forKey: "type")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(version, forKey: "version")
        try c.encode(issuedAt, forKey: "issuedAt")
        try c.encode(currency, forKey: "currency")
        try c.encode(maxAmount, forKey: "maxAmount")
        try c.encode(heartbeatS, forKey: "heartbeatS")
        try c.encode(postVendDelayMs, forKey: "postVendDelayMs")
        try c.encode(outputs, forKey: "outputs")
        try c.encodeOrNull(inhibit, forKey: "inhibit")
        if let trust { try c.encode(trust, forKey: "trust") }
    }
}

/// Whether a configuration was applied.
public enum ConfigApplyStatus: String, Codable, Sendable, Hashable {
    case applied, rejected
}

/// `config.reported`: retained answer to a `config/desired`.
public struct ConfigReported: Codable, Sendable, Hashable {
    public static let messageType = "config.reported"

    public var machineId: MachineID
    public var version: Int
    public var status: ConfigApplyStatus
    public var reason: RejectionReason?
    public var at: Int

    public init(machineId: MachineID, version: Int, status: ConfigApplyStatus, reason: RejectionReason?, at: Int) {
        self.machineId = machineId
        self.version = version
        self.status = status
        self.reason = reason
        self.at = at
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectVersion1()
        try c.expectType(Self.messageType)
        machineId = try c.field("machineId")
        version = try c.int("version", in: 0...Int(Int64.max / 2))
        status = try c.field("status")
        reason = try c.optionalField("reason")
        at = try c.time("at")
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(1, forKey: "v")
        try c.encode(Self.messageType, forKey: "type")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(version, forKey: "version")
        try c.encode(status, forKey: "status")
        try c.encodeOrNull(reason, forKey: "reason")
        try c.encode(at, forKey: "at")
    }
}
