/// Why an agent rejected a payment or a configuration, or why a payment ended uncertain, as
/// the wire spells it (`reason` in `payment.result` and `config.reported`).
public enum RejectionReason: String, Codable, Sendable, Hashable, CaseIterable {
    case malformed
    case unknownKey = "unknown_key"
    case badSignature = "bad_signature"
    case wrongMachine = "wrong_machine"
    case expired
    case notYetValid = "not_yet_valid"
    case notConfigured = "not_configured"
    case currencyMismatch = "currency_mismatch"
    case overLimit = "over_limit"
    case amountNotPayable = "amount_not_payable"
    case machineInhibited = "machine_inhibited"
    case relayFault = "relay_fault"
    /// `uncertain`: the inhibit input went active between pulses.
    case inhibitedDuringTrain = "inhibited_during_train"
    /// `uncertain`: a train was found started but not finished after a restart.
    case interrupted
    /// `config.reported` (extension, docs/protocol.md): version not above the applied one.
    case staleVersion = "stale_version"
    /// `config.reported` (extension): a line named by the configuration cannot be opened.
    case lineUnavailable = "line_unavailable"
}

/// Why a message was refused, with enough detail for a human; each maps onto one wire reason.
public enum ProtocolError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Not parseable, over 8 KiB, a missing or wrong-typed field, or a value outside the rules.
    case malformed(field: String?, problem: String)
    /// The `kid` is not trusted, or is trusted for another purpose.
    case unknownKey(KeyID?, detail: String)
    /// The signature does not verify against the key named by `kid`.
    case badSignature(KeyID)

    /// The reason as the wire spells it.
    public var reason: RejectionReason {
        switch self {
        case .malformed: .malformed
        case .unknownKey: .unknownKey
        case .badSignature: .badSignature
        }
    }

    public var description: String {
        switch self {
        case .malformed(let field?, let problem): "malformed: \(field): \(problem)"
        case .malformed(nil, let problem): "malformed: \(problem)"
        case .unknownKey(let kid, let detail): "unknown_key: \(kid?.rawValue ?? "?"): \(detail)"
        case .badSignature(let kid): "bad_signature: the signature does not verify with key \(kid)"
        }
    }
}
