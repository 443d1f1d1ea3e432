/// Validation of the protocol's names (PROTOCOL.md, "Names"). Checked over UTF-8 bytes:
/// no regular-expression engine, linear time, no allocation.
public enum NameRules {
    public static func isLowerAlnum(_ b: UInt8) -> Bool { (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) }
    static func isAlnum(_ b: UInt8) -> Bool { isLowerAlnum(b) || (b >= 0x41 && b <= 0x5A) }

    static func isLowerHexDigit(_ b: UInt8) -> Bool { (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x66) }

    /// Names a machine may never have: they are (or could become) service identities on the
    /// broker (PROTOCOL.md, "Topics": identities are bound to client IDs). Exact names, and
    /// every name under a service prefix.
    public static let reservedMachineNames: Set<String> = [
        "admin", "fleet-manager", "fleet-admin", "payment-server", "pulsebridge", "mosquitto", "root", "broker",
    ]
    public static let reservedMachinePrefixes = ["fleet-manager-", "payment-server-", "pulsebridge-", "admin-"]

    /// Whether `name` is reserved for a service identity.
    public static func isReservedMachineName(_ name: String) -> Bool {
        reservedMachineNames.contains(name) || reservedMachinePrefixes.contains { name.hasPrefix($0) }
    }

    static func isHexDigit(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x61 && b <= 0x66) || (b >= 0x41 && b <= 0x46)
    }

    /// `^[a-z0-9][a-z0-9-]{1,62}$`
    static func isMachineID(_ s: String) -> Bool {
        let u = s.utf8
        guard (2...63).contains(u.count), let first = u.first, isLowerAlnum(first) else { return false }
        return u.dropFirst().allSatisfy { isLowerAlnum($0) || $0 == 0x2D }
    }

    /// `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`
    static func isPaymentID(_ s: String) -> Bool {
        let u = s.utf8
        guard (1...128).contains(u.count), let first = u.first, isAlnum(first) else { return false }
        return u.dropFirst().allSatisfy { isAlnum($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x3A || $0 == 0x2D }
    }

    /// `^[A-Za-z0-9._-]{1,64}$`
    static func isKeyID(_ s: String) -> Bool {
        let u = s.utf8
        guard (1...64).contains(u.count) else { return false }
        return u.allSatisfy { isAlnum($0) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D }
    }

    /// 1 to 128 characters, no control characters.
    static func isUserID(_ s: String) -> Bool {
        guard !s.isEmpty, s.unicodeScalars.count <= 512, s.count <= 128 else { return false }
        return !s.unicodeScalars.contains { $0.properties.generalCategory == .control }
    }

    /// A firmware version: `^[A-Za-z0-9._-]{1,64}$` (it names an install folder).
    public static func isFirmwareVersion(_ s: String) -> Bool { isKeyID(s) && s != "." && s != ".." }

    /// ISO 4217: three upper-case letters.
    static func isCurrency(_ s: String) -> Bool {
        s.utf8.count == 3 && s.utf8.allSatisfy { $0 >= 0x41 && $0 <= 0x5A }
    }
}

/// A string identifier that validates itself when made and when decoded.
public protocol ValidatedIdentifier: RawRepresentable, Codable, Hashable, Sendable, Comparable,
    CustomStringConvertible, ExpressibleByStringLiteral where RawValue == String
{
    /// The rule, for error messages.
    static var rule: String { get }
    static func isValid(_ raw: String) -> Bool
    init(unchecked raw: String)
}

extension ValidatedIdentifier {
    public init?(rawValue: String) {
        guard Self.isValid(rawValue) else { return nil }
        self.init(unchecked: rawValue)
    }

    /// For literals in code and tests; traps on an invalid literal (a programming error).
    public init(stringLiteral value: String) {
        precondition(Self.isValid(value), "'\(value)' breaks the rule \(Self.rule)")
        self.init(unchecked: value)
    }

    public init(from decoder: any Decoder) throws {
        let raw = try decoder.singleValueContainer().decode(String.self)
        guard Self.isValid(raw) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "must match \(Self.rule)"))
        }
        self.init(unchecked: raw)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }

    public var description: String { rawValue }
    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A machine's ID; also its MQTT client ID and username. `^[a-z0-9][a-z0-9-]{1,62}$`.
public struct MachineID: ValidatedIdentifier {
    public let rawValue: String
    public init(unchecked raw: String) { rawValue = raw }
    public static let rule = "^[a-z0-9][a-z0-9-]{1,62}$"
    public static func isValid(_ raw: String) -> Bool { NameRules.isMachineID(raw) }
    /// A service identity's name (`admin`, `fleet-manager`, `payment-server-…`): never a
    /// machine's. Provisioning refuses it.
    public var isReserved: Bool { NameRules.isReservedMachineName(rawValue) }
}

/// A payment's ID, unique for all time. `^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`.
public struct PaymentID: ValidatedIdentifier {
    public let rawValue: String
    public init(unchecked raw: String) { rawValue = raw }
    public static let rule = "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
    public static func isValid(_ raw: String) -> Bool { NameRules.isPaymentID(raw) }
}

/// The paying user's ID, as the operator's payment page knows it: 1 to 128 characters, no
/// control characters.
public struct UserID: ValidatedIdentifier {
    public let rawValue: String
    public init(unchecked raw: String) { rawValue = raw }
    public static let rule = "1 to 128 characters, no control characters"
    public static func isValid(_ raw: String) -> Bool { NameRules.isUserID(raw) }
}

/// A signing key's ID. `^[A-Za-z0-9._-]{1,64}$`.
public struct KeyID: ValidatedIdentifier {
    public let rawValue: String
    public init(unchecked raw: String) { rawValue = raw }
    public static let rule = "^[A-Za-z0-9._-]{1,64}$"
    public static func isValid(_ raw: String) -> Bool { NameRules.isKeyID(raw) }
}

/// An ISO 4217 currency code: three upper-case letters.
public struct CurrencyCode: ValidatedIdentifier {
    public let rawValue: String
    public init(unchecked raw: String) { rawValue = raw }
    public static let rule = "three upper-case letters (ISO 4217)"
    public static func isValid(_ raw: String) -> Bool { NameRules.isCurrency(raw) }
}

/// Limits of the protocol.
public enum ProtocolLimits {
    /// Largest payload, in bytes.
    public static let maxPayloadBytes = 8 * 1024
    /// Amounts are minor units, 1 to 10,000,000.
    public static let amountRange = 1...10_000_000
    /// `expiresAt - issuedAt` of a payment, in milliseconds.
    public static let paymentLifetimeMs = 1_000...600_000
    /// How far `issuedAt` may be ahead of the agent's clock.
    public static let maxClockLeadMs = 30_000
    /// A train must be able to end this long before `expiresAt` (PROTOCOL.md, the expiry row).
    public static let trainEndMarginMs = 2_000
}
