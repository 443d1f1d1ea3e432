
/// Why an amount cannot be paid out.
public enum PlanError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Zero or negative.
    case invalidAmount(Int)
    /// Above the configured `maxAmount`.
    case overLimit(amount: Int, maxAmount: Int)
    /// No combination of the outputs' pulse values sums exactly to the amount.
    case notPayable(amount: Int, values: [Int])
    /// Finding the least-time plan would need a table larger than ``PulsePlan/maxTableEntries``
    /// (pulse values that are large and have no common divisor). Refused rather than risk the
    /// unit's memory; the configuration is refused the same way when it is applied.
    case tooComplex(amount: Int, values: [Int], entries: Int)

    public var description: String {
        switch self {
        case .invalidAmount(let amount): "amount \(amount) is not a positive number of minor units"
        case .overLimit(let amount, let maxAmount): "amount \(amount) is over the configured maximum \(maxAmount)"
        case .notPayable(let amount, let values):
            "amount \(amount) cannot be made exactly from pulses worth \(values.map(String.init).joined(separator: ", "))"
        case .tooComplex(let amount, let values, let entries):
            "planning \(amount) from pulses worth \(values.map(String.init).joined(separator: ", ")) needs a \(entries)-entry table (limit \(PulsePlan.maxTableEntries)); choose pulse values with a larger common divisor"
        }
    }
}

/// The pulses that pay one amount: per output, how many, fired one output after another.
public struct PulsePlan: Sendable, Hashable {
    /// One output's share of the train.
    public struct Step: Sendable, Hashable {
        /// Index of the output in the configuration.
        public var output: Int
        public var channel: String
        public var count: Int
        public var pulseMs: Int
        public var gapMs: Int
        public var valuePerPulse: Int
    }

    /// Steps in firing order (configuration order), only outputs with pulses.
    public var steps: [Step]
    public var amount: Int

    /// Σ count × (pulseMs + gapMs).
    public var durationMs: Int { steps.reduce(0) { $0 + $1.count * ($1.pulseMs + $1.gapMs) } }
    public var totalPulses: Int { steps.reduce(0) { $0 + $1.count } }

    /// The combination of pulses that sums exactly to `amount` in the least total time
    /// (PROTOCOL.md, `config`). Ties go to fewer pulses, then to the earlier output.
    ///
    /// Method: let `b` be the output with the least time per unit of value. In some optimal
    /// plan every other output `j` fires fewer than `v_b / gcd(v_b, v_j)` pulses (otherwise
    /// swapping that many of `j`'s pulses for `v_j / gcd` of `b`'s would not be slower). So
    /// only a bounded amount, at most `Σ (v_b/gcd − 1)·v_j`, comes from outputs other than
    /// `b`: an exact-change dynamic programme over that bound, and `b` pays the rest.
    /// The largest planning table allowed (17 bytes an entry: about 17 MB). Ordinary coin and
    /// bill values need a few hundred entries.
    public static let maxTableEntries = 1 << 20

    public static func make(amount: Int, outputs: [OutputLine], maxAmount: Int? = nil) throws(PlanError) -> PulsePlan {
        guard amount > 0 else { throw .invalidAmount(amount) }
        if let maxAmount, amount > maxAmount { throw .overLimit(amount: amount, maxAmount: maxAmount) }
        let values = outputs.map(\.valuePerPulse)
        guard !outputs.isEmpty, values.allSatisfy({ $0 > 0 }) else { throw .notPayable(amount: amount, values: values) }

        let unit = values.reduce(0, gcd)
        guard amount % unit == 0 else { throw .notPayable(amount: amount, values: values) }

        let best = fastestOutput(outputs)
        let vb = outputs[best].valuePerPulse
        let bound = otherOutputsBound(amount: amount, outputs: outputs, best: best)

        // time[x] / pulses[x]: the fastest way to make x·unit from the other outputs.
        let size = bound / unit + 1
        guard size <= maxTableEntries else { throw .tooComplex(amount: amount, values: values, entries: size) }
        var time = [Int](repeating: .max, count: size)
        var pulses = [Int](repeating: .max, count: size)
        var choice = [Int8](repeating: -1, count: size)
        time[0] = 0
        pulses[0] = 0
        let others = outputs.indices.filter { $0 != best }
        if !others.isEmpty {
            for x in 1..<size {
                for j in others {
                    let step = outputs[j].valuePerPulse / unit
                    guard step <= x, time[x - step] != .max else { continue }
                    let t = time[x - step] + outputs[j].periodMs
                    let p = pulses[x - step] + 1
                    if t < time[x] || (t == time[x] && p < pulses[x]) {
                        time[x] = t
                        pulses[x] = p
                        choice[x] = Int8(j)
                    }
                }
            }
        }

        var bestX: Int? = nil
        var bestTime = Int.max
        var bestPulses = Int.max
        for x in 0..<size where time[x] != .max {
            let rest = amount - x * unit
            guard rest >= 0, rest % vb == 0 else { continue }
            let t = time[x] + rest / vb * outputs[best].periodMs
            let p = pulses[x] + rest / vb
            if t < bestTime || (t == bestTime && p < bestPulses) {
                bestX = x
                bestTime = t
                bestPulses = p
            }
        }
        guard let bestX else { throw .notPayable(amount: amount, values: values) }

        var counts = [Int](repeating: 0, count: outputs.count)
        counts[best] = (amount - bestX * unit) / vb
        var x = bestX
        while x > 0 {
            let j = Int(choice[x])
            counts[j] += 1
            x -= outputs[j].valuePerPulse / unit
        }
        let steps = outputs.indices.compactMap { i -> Step? in
            guard counts[i] > 0 else { return nil }
            let o = outputs[i]
            return Step(output: i, channel: o.channel, count: counts[i], pulseMs: o.pulseMs, gapMs: o.gapMs, valuePerPulse: o.valuePerPulse)
        }
        return PulsePlan(steps: steps, amount: amount)
    }

    /// The most time-efficient output: least (pulseMs + gapMs) / valuePerPulse; on a tie the
    /// larger value (fewer pulses), then the earlier output.
    static func fastestOutput(_ outputs: [OutputLine]) -> Int {
        var best = 0
        for j in outputs.indices.dropFirst() {
            let lhs = outputs[j].periodMs * outputs[best].valuePerPulse
            let rhs = outputs[best].periodMs * outputs[j].valuePerPulse
            if lhs < rhs || (lhs == rhs && outputs[j].valuePerPulse > outputs[best].valuePerPulse) { best = j }
        }
        return best
    }

    /// The most value the other outputs pay in some optimal plan (see ``make(amount:outputs:maxAmount:)``).
    static func otherOutputsBound(amount: Int, outputs: [OutputLine], best: Int) -> Int {
        let vb = outputs[best].valuePerPulse
        var bound = 0
        for j in outputs.indices where j != best {
            let limit = vb / gcd(vb, outputs[j].valuePerPulse) - 1
            bound += limit * outputs[j].valuePerPulse
            if bound >= amount { break }
        }
        return min(bound, amount)
    }

    /// Throws ``PlanError/tooComplex(amount:values:entries:)`` when some amount up to
    /// `maxAmount` would need a planning table over the limit: checked when a configuration
    /// is applied, so such a configuration is refused rather than found out at a payment.
    public static func checkPlannable(outputs: [OutputLine], maxAmount: Int) throws(PlanError) {
        let values = outputs.map(\.valuePerPulse)
        guard !outputs.isEmpty, values.allSatisfy({ $0 > 0 }) else { return }
        let unit = values.reduce(0, gcd)
        let entries = otherOutputsBound(amount: maxAmount, outputs: outputs, best: fastestOutput(outputs)) / unit + 1
        guard entries <= maxTableEntries else { throw .tooComplex(amount: maxAmount, values: values, entries: entries) }
    }
}

func gcd(_ a: Int, _ b: Int) -> Int {
    var (a, b) = (abs(a), abs(b))
    while b != 0 { (a, b) = (b, a % b) }
    return a
}
