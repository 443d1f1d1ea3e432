/// One relay output as the pulse engine sees it: a GPIO line, its polarity, the value one
/// pulse stands for and how a pulse is timed. The agent builds it from the protocol's
/// `OutputConfig`; RelayOutput knows nothing of messages.
public struct OutputLine: Sendable, Hashable {
    /// Unique name, e.g. `coin`, `bill`.
    public var channel: String
    /// GPIO chip, e.g. `gpiochip0`.
    public var chip: String
    /// Line offset on the chip.
    public var line: Int
    /// The relay closes when the line is low.
    public var activeLow: Bool
    /// Money one pulse stands for, in minor units (≥ 1).
    public var valuePerPulse: Int
    /// How long the contact closes.
    public var pulseMs: Int
    /// Pause after each pulse.
    public var gapMs: Int

    public init(
        channel: String, chip: String, line: Int, activeLow: Bool = false, valuePerPulse: Int, pulseMs: Int, gapMs: Int
    ) {
        self.channel = channel
        self.chip = chip
        self.line = line
        self.activeLow = activeLow
        self.valuePerPulse = valuePerPulse
        self.pulseMs = pulseMs
        self.gapMs = gapMs
    }

    /// Time one pulse takes, contact plus pause.
    public var periodMs: Int { pulseMs + gapMs }
}

/// The machine's inhibit input: active while the machine refuses money (door open, busy).
public struct InhibitLine: Sendable, Hashable {
    public var chip: String
    public var line: Int
    public var activeLow: Bool

    public init(chip: String, line: Int, activeLow: Bool) {
        self.chip = chip
        self.line = line
        self.activeLow = activeLow
    }
}
