/// The body of a signed `firmware`: which version a machine should run and where to get it.
public struct FirmwareUpdate: Codable, Sendable, Hashable, SignedBody {
    public static let messageType = "firmware"
    public static let signerPurpose = KeyPurpose.fleet

    public var machineId: MachineID
    public var version: String
    /// `http://` or `https://` URL of the artifact.
    public var url: String
    /// Lower-case hex SHA-256 of the artifact.
    public var sha256: String
    /// Bytes; the download stops at this size.
    public var size: Int
    public var issuedAt: Int
    /// Extension (docs/protocol.md): the operator allows installing a version lower than the
    /// one running. Without it an agent refuses a downgrade (`downgrade_refused`).
    public var allowDowngrade = false

    public init(machineId: MachineID, version: String, url: String, sha256: String, size: Int, issuedAt: Int) {
        self.machineId = machineId
        self.version = version
        self.url = url
        self.sha256 = sha256
        self.size = size
        self.issuedAt = issuedAt
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectType(Self.messageType)
        machineId = try c.field("machineId")
        version = try c.field("version")
        guard NameRules.isFirmwareVersion(version) else {
            throw c.invalid("version", "must be 1 to 64 of A-Z a-z 0-9 . _ -")
        }
        url = try c.field("url")
        guard url.hasPrefix("http://") || url.hasPrefix("https://"), url.utf8.count <= 2048,
            !url.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F })
        else {
            throw c.invalid("url", "must be an http:// or https:// URL without spaces")
        }
        let hash: String = try c.field("sha256")
        guard hash.utf8.count == 64, hash.utf8.allSatisfy(NameRules.isHexDigit) else {
            throw c.invalid("sha256", "must be 64 hexadecimal digits")
        }
        sha256 = hash.lowercased()
        size = try c.int("size", in: 1...(4 << 30))
        issuedAt = try c.time("issuedAt")
        allowDowngrade = try c.optionalField("allowDowngrade") ?? false
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(Self.messageType, forKey: "type")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(version, forKey: "version")
        try c.encode(url, forKey: "url")
        try c.encode(sha256, forKey: "sha256")
        try c.encode(size, forKey: "size")
        try c.encode(issuedAt, forKey: "issuedAt")
        if allowDowngrade { try c.encode(true, forKey: "allowDowngrade") }
    }
}

/// Steps of a firmware update on the unit.
public enum FirmwareState: String, Codable, Sendable, Hashable {
    case downloading, verifying, installing, installed, failed
}

/// `firmware.reported`: retained progress of a firmware update.
public struct FirmwareReported: Codable, Sendable, Hashable {
    public static let messageType = "firmware.reported"

    public var machineId: MachineID
    public var version: String
    public var state: FirmwareState
    /// Why it failed (free text for humans, e.g. `sha256_mismatch`), or null.
    public var reason: String?
    public var at: Int

    public init(machineId: MachineID, version: String, state: FirmwareState, reason: String?, at: Int) {
        self.machineId = machineId
        self.version = version
        self.state = state
        self.reason = reason
        self.at = at
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: WireKey.self)
        try c.expectVersion1()
        try c.expectType(Self.messageType)
        machineId = try c.field("machineId")
        version = try c.field("version")
        state = try c.field("state")
        reason = try c.optionalField("reason")
        at = try c.time("at")
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: WireKey.self)
        try c.encode(1, forKey: "v")
        try c.encode(Self.messageType, forKey: "type")
        try c.encode(machineId, forKey: "machineId")
        try c.encode(version, forKey: "version")
        try c.encode(state, forKey: "state")
        try c.encodeOrNull(reason, forKey: "reason")
        try c.encode(at, forKey: "at")
    }
}

/// Orders firmware versions: dot-separated parts, numerically where both are numbers
/// (`1.10.0` > `1.9.2`), otherwise as text.
public enum FirmwareVersionOrder {
    public static func isLower(_ lhs: String, than rhs: String) -> Bool {
        let a = lhs.split(separator: ".", omittingEmptySubsequences: false)
        let b = rhs.split(separator: ".", omittingEmptySubsequences: false)
        for (x, y) in zip(a, b) where x != y {
            if let i = Int(x), let j = Int(y) { return i < j }
            return x < y
        }
        return a.count < b.count
    }
}
