/// The relay outputs' health, in heartbeats.
public enum RelayHealth: String, Codable, Sendable, Hashable {
    case ok
    /// A line could not be driven (see the agent's log).
    case fault
}

/// Running totals an agent keeps across restarts.
public struct PaymentCounters: Codable, Sendable, Hashable {
    public var credited = 0
    public var rejected = 0
    public var duplicate = 0
    public var uncertain = 0
    public var pulses = 0
    public var creditedAmount = 0

    public init(
        credited: Int = 0, rejected: Int = 0, duplicate: Int = 0, uncertain: Int = 0, pulses: Int = 0,
        creditedAmount: Int = 0
    ) {
        self.credited = credited
        self.rejected = rejected
        self.duplicate = duplicate
        self.uncertain = uncertain
        self.pulses = pulses
        self.creditedAmount = creditedAmount
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        credited = try c.int("credited", in: 0...Int.max)
        rejected = try c.int("rejected", in: 0...Int.max)
        duplicate = try c.int("duplicate", in: 0...Int.max)
        uncertain = try c.int("uncertain", in: 0...Int.max)
        pulses = try c.int("pulses", in: 0...Int.max)
        creditedAmount = try c.int("creditedAmount", in: 0...Int.max)
    }
}

/// Extension `metrics` of a heartbeat (docs/protocol.md): what the agent measured of itself
/// since its previous heartbeat. Absent from agents that predate it; a receiver ignores it.
public struct AgentMetrics: Codable, Sendable, Hashable {
    /// Pulse trains fired since the previous heartbeat.
    public var trains: Int
    /// The largest |actual − scheduled| of a relay edge in those trains, in microseconds.
    public var edgeErrorMaxUs: Int?
    /// The 99th percentile of those edge errors, in microseconds.
    public var edgeErrorP99Us: Int?
    /// The longest journal commit of a train start (SQLite, synchronous=FULL: an fsync), in
    /// microseconds.
    public var journalCommitMaxUs: Int?

    public init(trains: Int, edgeErrorMaxUs: Int? = nil, edgeErrorP99Us: Int? = nil, journalCommitMaxUs: Int? = nil) {
        self.trains = trains
        self.edgeErrorMaxUs = edgeErrorMaxUs
        self.edgeErrorP99Us = edgeErrorP99Us
        self.journalCommitMaxUs = journalCommitMaxUs
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        trains = try c.int("trains", in: 0...Int.max)
        edgeErrorMaxUs = try c.optionalField("edgeErrorMaxUs")
        edgeErrorP99Us = try c.optionalField("edgeErrorP99Us")
        journalCommitMaxUs = try c.optionalField("journalCommitMaxUs")
        for (name, value) in [("edgeErrorMaxUs", edgeErrorMaxUs), ("edgeErrorP99Us", edgeErrorP99Us), ("journalCommitMaxUs", journalCommitMaxUs)] {
            if let value, value < 0 { throw ProtocolError.malformed(field: "metrics.\(name)", problem: "a duration below 0") }
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(trains, forKey: "trains")
        try c.encodeIfPresent(edgeErrorMaxUs, forKey: "edgeErrorMaxUs")
        try c.encodeIfPresent(edgeErrorP99Us, forKey: "edgeErrorP99Us")
        try c.encodeIfPresent(journalCommitMaxUs, forKey: "journalCommitMaxUs")
    }
}

/// `heartbeat`: every `heartbeatS` seconds, QoS 0.
public struct Heartbeat: Codable, Sendable, Hashable {
    public static let messageType = "heartbeat"

    public var machineId: MachineID
    public var bootId: String
    public var seq: Int
    /// The agent's clock; the manager compares it with its own.
    public var at: Int
    public var uptimeS: Int
    public var firmware: String
    public var configVersion: Int
    public var inhibited: Bool
    public var relay: RelayHealth
    public var outboxDepth: Int
    public var counters: PaymentCounters
    /// Extension: as in `status` (``UnitProblem``); always present, empty when healthy.
    public var problems: [String] = []
    /// Extension: the agent's own measurements since its previous heartbeat.
    public var metrics: AgentMetrics?

    public init(
        machineId: MachineID, bootId: String, seq: Int, at: Int, uptimeS: Int, firmware: String,
        configVersion: Int, inhibited: Bool, relay: RelayHealth, outboxDepth: Int, counters: PaymentCounters
    ) {
        self.machineId = machineId
        self.bootId = bootId
        self.seq = seq
        self.at = at
        self.uptimeS = uptimeS
        self.firmware = firmware
        self.configVersion = configVersion
        self.inhibited = inhibited
        self.relay = relay
        self.outboxDepth = outboxDepth
        self.counters = counters
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectVersion1()
        try c.expectType(Self.messageType)
        machineId = try c.field("machineId")
        bootId = try c.field("bootId")
        seq = try c.int("seq", in: 0...Int.max)
        at = try c.time("at")
        uptimeS = try c.int("uptimeS", in: 0...Int.max)
        firmware = try c.field("firmware")
        configVersion = try c.int("configVersion", in: 0...Int.max)
        inhibited = try c.field("inhibited")
        relay = try c.field("relay")
        problems = try c.optionalField("problems") ?? []
        outboxDepth = try c.int("outboxDepth", in: 0...Int.max)
        counters = try c.field("counters")
        metrics = try c.optionalField("metrics")
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(1, forKey: "v")
        try c.encode(Self.messageType, forKey: "type")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(bootId, forKey: "bootId")
        try c.encode(seq, forKey: "seq")
        try c.encode(at, forKey: "at")
        try c.encode(uptimeS, forKey: "uptimeS")
        try c.encode(firmware, forKey: "firmware")
        try c.encode(configVersion, forKey: "configVersion")
        try c.encode(inhibited, forKey: "inhibited")
        try c.encode(relay, forKey: "relay")
        try c.encode(problems, forKey: "problems")
        try c.encode(outboxDepth, forKey: "outboxDepth")
        try c.encode(counters, forKey: "counters")
        try c.encodeIfPresent(metrics, forKey: "metrics")
    }
}
