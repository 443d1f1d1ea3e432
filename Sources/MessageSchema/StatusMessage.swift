/// Whether a machine can take payments.
public enum MachineState: String, Codable, Sendable, Hashable {
    case online, offline
}

/// `status`: retained on the machine's status topic, and the MQTT will (`offline`).
public struct StatusMessage: Codable, Sendable, Hashable {
    public static let messageType = "status"

    public var machineId: MachineID
    public var state: MachineState
    /// New at every start of the agent.
    public var bootId: String
    /// Counts connections within a boot.
    public var session: Int
    public var firmware: String
    /// The applied configuration's version; 0 before any.
    public var configVersion: Int
    public var at: Int
    /// Extension (docs/protocol.md): what keeps the unit from taking payments safely while it
    /// is connected, e.g. `journal_unwritable`; empty when healthy. See ``UnitProblem``.
    public var problems: [String] = []
    /// Extension: when this connection session's first `online` was published (agent clock).
    /// A payment server voids a payment without a result once it sees `online` for a session
    /// that began after the payment's `expiresAt`.
    public var sessionStartedAt: Int?

    public init(
        machineId: MachineID, state: MachineState, bootId: String, session: Int, firmware: String,
        configVersion: Int, at: Int
    ) {
        self.machineId = machineId
        self.state = state
        self.bootId = bootId
        self.session = session
        self.firmware = firmware
        self.configVersion = configVersion
        self.at = at
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectVersion1()
        try c.expectType(Self.messageType)
        machineId = try c.field("machineId")
        state = try c.field("state")
        bootId = try c.field("bootId")
        session = try c.int("session", in: 0...Int.max)
        firmware = try c.field("firmware")
        configVersion = try c.int("configVersion", in: 0...Int.max)
        at = try c.time("at")
        problems = try c.optionalField("problems") ?? []
        sessionStartedAt = try c.optionalField("sessionStartedAt")
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(1, forKey: "v")
        try c.encode(Self.messageType, forKey: "type")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(state, forKey: "state")
        try c.encode(bootId, forKey: "bootId")
        try c.encode(session, forKey: "session")
        try c.encode(firmware, forKey: "firmware")
        try c.encode(configVersion, forKey: "configVersion")
        try c.encode(at, forKey: "at")
        if !problems.isEmpty { try c.encode(problems, forKey: "problems") }
        if let sessionStartedAt { try c.encode(sessionStartedAt, forKey: "sessionStartedAt") }
    }
}

/// What a unit reports in `problems` (status and heartbeat; docs/protocol.md).
public enum UnitProblem {
    /// The journal cannot be written (disk full, I/O error): no train starts; results are
    /// published from memory.
    public static let journalUnwritable = "journal_unwritable"
    /// Free space is below the journal's working floor: no new train starts.
    public static let lowDiskSpace = "low_disk_space"
    /// The clock is not trusted (behind what the unit has seen, or not synchronised where
    /// synchronisation is required): payments are refused as `expired`.
    public static let clockUntrusted = "clock_untrusted"
}
