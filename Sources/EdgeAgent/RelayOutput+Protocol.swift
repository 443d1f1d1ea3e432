import MessageSchema
import RelayOutput

// Where the protocol's configuration meets the relay layer: RelayOutput has its own line
// types and knows nothing of messages; the agent translates here, in one place.

extension OutputLine {
    public init(_ config: OutputConfig) {
        self.init(
            channel: config.channel, chip: config.chip, line: config.line, activeLow: config.activeLow,
            valuePerPulse: config.valuePerPulse, pulseMs: config.pulseMs, gapMs: config.gapMs)
    }
}

extension InhibitLine {
    public init(_ config: InhibitConfig) {
        self.init(chip: config.chip, line: config.line, activeLow: config.activeLow)
    }
}

extension LineDriver {
    /// Opens the lines a configuration names.
    public func open(outputs: [OutputConfig], inhibit: InhibitConfig?) throws(RelayError) -> any RelayLines {
        try open(outputs: outputs.map(OutputLine.init), inhibit: inhibit.map(InhibitLine.init))
    }
}

extension PulsePlan {
    /// The plan for `amount` on a configuration's outputs.
    public static func make(amount: Int, outputs: [OutputConfig], maxAmount: Int? = nil) throws(PlanError) -> PulsePlan {
        try make(amount: amount, outputs: outputs.map(OutputLine.init), maxAmount: maxAmount)
    }

    /// Whether every amount up to `maxAmount` can be planned on a configuration's outputs.
    public static func checkPlannable(outputs: [OutputConfig], maxAmount: Int) throws(PlanError) {
        try checkPlannable(outputs: outputs.map(OutputLine.init), maxAmount: maxAmount)
    }

    /// The plan as `payment.result` carries it.
    public var pulseCounts: [PulseCount] { steps.map { PulseCount(channel: $0.channel, count: $0.count) } }
}

extension PlanError {
    /// The wire reason (`over_limit`, `amount_not_payable`; an invalid amount never passes
    /// message validation, so it maps to `malformed`).
    public var reason: RejectionReason {
        switch self {
        case .invalidAmount: .malformed
        case .overLimit: .overLimit
        case .notPayable, .tooComplex: .amountNotPayable
        }
    }
}
