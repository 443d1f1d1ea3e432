import Foundation
import MessageSchema

/// The part of a machine's configuration an operator chooses (`provision --config FILE`,
/// `config apply FILE`): everything but `machineId`, `version`, `issuedAt` and `trust`, which
/// the manager fills in.
public struct MachineProfile: Codable, Sendable, Hashable {
    public var currency: String?
    public var maxAmount: Int
    public var heartbeatS: Int
    public var postVendDelayMs: Int
    public var outputs: [OutputConfig]
    public var inhibit: InhibitConfig?

    public init(currency: String? = nil, maxAmount: Int, heartbeatS: Int, postVendDelayMs: Int, outputs: [OutputConfig], inhibit: InhibitConfig?) {
        self.currency = currency
        self.maxAmount = maxAmount
        self.heartbeatS = heartbeatS
        self.postVendDelayMs = postVendDelayMs
        self.outputs = outputs
        self.inhibit = inhibit
    }

    /// A coin machine taking 100-unit coins on gpiochip0 line 17.
    public static let standardCoin = MachineProfile(
        maxAmount: 10_000, heartbeatS: 30, postVendDelayMs: 2_000,
        outputs: [OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50)],
        inhibit: nil)

    /// Reads a profile file; errors name the file and the field.
    public static func load(_ path: String) throws -> MachineProfile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FleetError("cannot read the configuration file \(path)", hint: "check the path")
        }
        do {
            return try JSONDecoder().decode(MachineProfile.self, from: data)
        } catch let error as DecodingError {
            throw FleetError("configuration file \(path): \(WireCodingErrors.describe(error))", hint: "see docs/operations.md for the fields")
        }
    }

    /// A complete configuration for `machine`; validated exactly as a unit will validate it.
    public func config(for machine: MachineID, version: Int, currency fallback: String, trust: [TrustEntry]?) throws -> MachineConfig {
        guard let currency = CurrencyCode(rawValue: currency ?? fallback) else {
            throw FleetError("currency '\(currency ?? fallback)' is not three upper-case letters")
        }
        let config = MachineConfig(
            machineId: machine, version: version, issuedAt: Registry.now(), currency: currency,
            maxAmount: maxAmount, heartbeatS: heartbeatS, postVendDelayMs: postVendDelayMs, outputs: outputs, inhibit: inhibit,
            trust: trust)
        do {
            return try WireCoding.decode(MachineConfig.self, from: WireCoding.encode(config))
        } catch {
            throw FleetError("the configuration for \(machine) is invalid: \(error)", hint: "a unit would reject it; fix the value")
        }
    }

    public init(_ config: MachineConfig) {
        self.init(
            currency: config.currency.rawValue, maxAmount: config.maxAmount, heartbeatS: config.heartbeatS,
            postVendDelayMs: config.postVendDelayMs, outputs: config.outputs, inhibit: config.inhibit)
    }
}

enum WireCodingErrors {
    static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [any CodingKey]) -> String {
            keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .keyNotFound(let key, let context): return "field '\(path(context.codingPath + [key]))' is missing"
        case .typeMismatch(_, let context): return "field '\(path(context.codingPath))' has the wrong type"
        case .valueNotFound(_, let context): return "field '\(path(context.codingPath))' is null"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "not valid JSON" : "field '\(path(context.codingPath))': \(context.debugDescription)"
        @unknown default: return "\(error)"
        }
    }
}

extension MachineProfile {
    /// Sets one `KEY=VALUE` (`config set`, the console): maxAmount, heartbeatS, postVendDelayMs,
    /// currency, or CHANNEL.FIELD (pulseMs, gapMs, valuePerPulse, line, chip, activeLow).
    public mutating func set(_ pair: String) throws {
        let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
        guard parts.count == 2 else { throw FleetError("'\(pair)' is not KEY=VALUE") }
        let (key, value) = (parts[0], parts[1])
        func int() throws -> Int {
            guard let number = Int(value) else { throw FleetError("\(key) needs a whole number, not '\(value)'") }
            return number
        }
        switch key {
        case "maxAmount": self.maxAmount = try int()
        case "heartbeatS": self.heartbeatS = try int()
        case "postVendDelayMs": self.postVendDelayMs = try int()
        case "currency": self.currency = value
        default:
            let field = key.split(separator: ".", maxSplits: 1).map(String.init)
            guard field.count == 2, let index = self.outputs.firstIndex(where: { $0.channel == field[0] }) else {
                throw FleetError(
                    "unknown key '\(key)'",
                    hint: "keys: maxAmount, heartbeatS, postVendDelayMs, currency, or CHANNEL.FIELD for channels \(self.outputs.map(\.channel).joined(separator: ", "))")
            }
            switch field[1] {
            case "pulseMs": self.outputs[index].pulseMs = try int()
            case "gapMs": self.outputs[index].gapMs = try int()
            case "valuePerPulse": self.outputs[index].valuePerPulse = try int()
            case "line": self.outputs[index].line = try int()
            case "chip": self.outputs[index].chip = value
            case "activeLow":
                guard let flag = Bool(value) else { throw FleetError("\(key) needs true or false") }
                self.outputs[index].activeLow = flag
            default: throw FleetError("unknown output field '\(field[1])'", hint: "pulseMs, gapMs, valuePerPulse, line, chip, activeLow")
            }
        }
    }
}
