import Testing

@testable import RelayOutput

@Suite struct PulsePlanTests {
    static func output(_ channel: String, value: Int, pulse: Int, gap: Int, line: Int = 17) -> OutputLine {
        OutputLine(channel: channel, chip: "gpiochip0", line: line, valuePerPulse: value, pulseMs: pulse, gapMs: gap)
    }
    static let coin = output("coin", value: 100, pulse: 50, gap: 50, line: 17)
    static let bill = output("bill", value: 1000, pulse: 100, gap: 150, line: 27)
    static let slowBill = output("bill", value: 1000, pulse: 2000, gap: 2000, line: 27)

    struct Row: Sendable, CustomStringConvertible {
        var name: String
        var amount: Int
        var outputs: [OutputLine]
        var maxAmount: Int?
        var expected: Result<[String: Int], PlanError>
        var description: String { name }
    }

    static let rows: [Row] = [
        Row(name: "single channel", amount: 400, outputs: [coin], expected: .success(["coin": 4])),
        Row(name: "one bill and five coins beat fifteen coins", amount: 1500, outputs: [coin, bill],
            expected: .success(["bill": 1, "coin": 5])),
        Row(name: "fifteen coins beat a slow bill", amount: 1500, outputs: [coin, slowBill],
            expected: .success(["coin": 15])),
        Row(name: "bill alone when exact", amount: 3000, outputs: [coin, bill], expected: .success(["bill": 3])),
        Row(name: "fewer pulses on equal time", amount: 6,
            outputs: [output("a", value: 1, pulse: 50, gap: 50), output("b", value: 3, pulse: 150, gap: 150),
                      output("c", value: 4, pulse: 200, gap: 200)],
            expected: .success(["b": 2])),
        Row(name: "greedy would be wrong", amount: 6,
            outputs: [output("a", value: 1, pulse: 10, gap: 10), output("b", value: 3, pulse: 10, gap: 10),
                      output("c", value: 4, pulse: 10, gap: 10)],
            expected: .success(["b": 2])),
        Row(name: "coprime values", amount: 8,
            outputs: [output("three", value: 3, pulse: 50, gap: 50), output("five", value: 5, pulse: 50, gap: 50)],
            expected: .success(["three": 1, "five": 1])),
        Row(name: "not a multiple of the coin", amount: 150, outputs: [coin],
            expected: .failure(.notPayable(amount: 150, values: [100]))),
        Row(name: "coprime gap", amount: 7,
            outputs: [output("three", value: 3, pulse: 50, gap: 50), output("five", value: 5, pulse: 50, gap: 50)],
            expected: .failure(.notPayable(amount: 7, values: [3, 5]))),
        Row(name: "over the limit", amount: 5100, outputs: [coin, bill], maxAmount: 5000,
            expected: .failure(.overLimit(amount: 5100, maxAmount: 5000))),
        Row(name: "at the limit", amount: 5000, outputs: [coin, bill], maxAmount: 5000, expected: .success(["bill": 5])),
        Row(name: "zero", amount: 0, outputs: [coin], expected: .failure(.invalidAmount(0))),
        Row(name: "negative", amount: -100, outputs: [coin], expected: .failure(.invalidAmount(-100))),
        Row(name: "largest amount, one-unit coin", amount: 10_000_000,
            outputs: [output("unit", value: 1, pulse: 10, gap: 10), output("big", value: 1_000_000, pulse: 10, gap: 10)],
            expected: .success(["big": 10])),
    ]

    @Test(arguments: rows)
    func plan(_ row: Row) {
        let result = Result { () throws(PlanError) in try PulsePlan.make(amount: row.amount, outputs: row.outputs, maxAmount: row.maxAmount) }
        switch (result, row.expected) {
        case (.success(let plan), .success(let counts)):
            #expect(Dictionary(uniqueKeysWithValues: plan.steps.map { ($0.channel, $0.count) }) == counts)
            #expect(plan.steps.reduce(0) { $0 + $1.count * $1.valuePerPulse } == row.amount)
            // Steps fire in configuration order.
            #expect(plan.steps.map(\.output) == plan.steps.map(\.output).sorted())
        case (.failure(let error), .failure(let expected)):
            #expect(error == expected)
        default:
            Issue.record("got \(result), expected \(row.expected)")
        }
    }

    /// Against brute force over every combination, on small random configurations.
    @Test func matchesBruteForce() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let count = Int.random(in: 1...3, using: &generator)
            let outputs = (0..<count).map { i in
                Self.output("o\(i)", value: Int.random(in: 1...12, using: &generator), pulse: Int.random(in: 10...60, using: &generator),
                            gap: Int.random(in: 10...60, using: &generator), line: i)
            }
            let amount = Int.random(in: 1...60, using: &generator)
            let fastest = bruteForce(amount: amount, outputs: outputs)
            let plan = try? PulsePlan.make(amount: amount, outputs: outputs)
            #expect(plan?.durationMs == fastest, "amount \(amount), outputs \(outputs.map { ($0.valuePerPulse, $0.periodMs) })")
        }
    }

    func bruteForce(amount: Int, outputs: [OutputLine]) -> Int? {
        var best: Int? = nil
        func search(_ i: Int, _ left: Int, _ time: Int) {
            if i == outputs.count {
                if left == 0, time < best ?? .max { best = time }
                return
            }
            for c in 0...(left / outputs[i].valuePerPulse) {
                search(i + 1, left - c * outputs[i].valuePerPulse, time + c * outputs[i].periodMs)
            }
        }
        search(0, amount, 0)
        return best
    }
}

/// Finding 9: large pulse values with no common divisor made the planner allocate ~170 MB.
@Suite struct PulsePlanMemoryTests {
    static let coprime = [
        OutputLine(channel: "a", chip: "gpiochip0", line: 1, valuePerPulse: 9_999_991, pulseMs: 10, gapMs: 10),
        OutputLine(channel: "b", chip: "gpiochip0", line: 2, valuePerPulse: 9_999_989, pulseMs: 10, gapMs: 10),
    ]

    @Test func coprimeLargeValuesAreRefusedWithoutTheTable() {
        #expect(throws: PlanError.self) { try PulsePlan.make(amount: 9_999_990, outputs: Self.coprime) }
        do {
            _ = try PulsePlan.make(amount: 9_999_990, outputs: Self.coprime)
        } catch {
            guard case .tooComplex = error else {
                Issue.record("expected tooComplex, got \(error)")
                return
            }
            #expect("\(error)".contains("larger common divisor"))
        }
        #expect(throws: PlanError.self) { try PulsePlan.checkPlannable(outputs: Self.coprime, maxAmount: 10_000_000) }
    }

    @Test func ordinaryValuesStayPlannable() throws {
        let coinAndBill = [
            OutputLine(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50),
            OutputLine(channel: "bill", chip: "gpiochip0", line: 27, valuePerPulse: 1000, pulseMs: 100, gapMs: 150),
        ]
        try PulsePlan.checkPlannable(outputs: coinAndBill, maxAmount: 10_000_000)
        #expect(try PulsePlan.make(amount: 1500, outputs: coinAndBill).totalPulses == 6)
    }
}
