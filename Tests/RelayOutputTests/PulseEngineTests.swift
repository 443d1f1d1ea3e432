import Foundation
import Testing

@testable import RelayOutput

/// The pulse engine on the simulated line driver: the very engine that drives libgpiod lines.
@Suite(.timeLimit(.minutes(3)))
struct PulseEngineTests {
    static let coin = OutputLine(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 30, gapMs: 30)
    static let bill = OutputLine(channel: "bill", chip: "gpiochip0", line: 27, valuePerPulse: 1000, pulseMs: 40, gapMs: 40)
    static let inhibit = InhibitLine(chip: "gpiochip0", line: 22, activeLow: true)

    let engine = PulseEngine(realtime: RealtimePolicy(fifoPriority: 50, lockMemory: false))
    let driver = SimulatedLineDriver(edgeLogPath: NSTemporaryDirectory() + "edges-\(UUID().uuidString).jsonl")

    func activations(_ edges: [SimulatedEdge], line: Int) -> Int {
        edges.filter { $0.line == line && $0.active }.count
    }

    /// Every line's last logged state is inactive.
    func allInactive(_ edges: [SimulatedEdge]) -> Bool {
        Dictionary(grouping: edges, by: \.line).values.allSatisfy { $0.last?.active == false }
    }

    @Test func firesExactPulsesPerChannelAndKeepsTheWidths() async throws {
        let lines = try driver.open(outputs: [Self.coin, Self.bill], inhibit: nil)
        let plan = try PulsePlan.make(amount: 2300, outputs: [Self.coin, Self.bill])
        #expect(plan.steps.map(\.channel) == ["coin", "bill"])
        #expect(plan.steps.map(\.count) == [3, 2])
        let report = await engine.fire(plan, on: lines)
        lines.close()

        #expect(report.outcome == .completed)
        #expect(report.pulsesFired == 5)
        #expect(report.firedPerStep == [3, 2])
        let edges = SimulatedEdge.read(driver.edgeLogPath)
        #expect(activations(edges, line: 17) == 3)
        #expect(activations(edges, line: 27) == 2)
        #expect(allInactive(edges))

        #expect(report.edges.count == 10)
        #expect(phasesKeepTheirWidths(edges: edges, report: report, outputs: [Self.coin, Self.bill]))
    }

    /// The engine's timing promise, from the edge log (when each line changed) beside the
    /// engine's report (when each edge was due, when its drive returned): every edge changed
    /// at or after its deadline and before its drive returned; every pulse and gap is at least
    /// its configured width less the catch-up (1 ms, at most a tenth); and a phase is longer
    /// than configured only by as much as its closing edge was late plus the drive time of its
    /// opening edge. Nothing here is a wall-clock bound: a loaded machine makes edges late, and
    /// how late is what `pulsebridge-bench pulses` measures.
    func phasesKeepTheirWidths(edges logged: [SimulatedEdge], report: TrainReport<some Error>, outputs: [OutputLine]) -> Bool {
        let steps = Dictionary(uniqueKeysWithValues: outputs.map { ($0.line, $0) })
        let changes = logged.drop { !$0.active }  // skip the opening all-inactive writes
        guard changes.count == report.edges.count else {
            Issue.record("edge log has \(changes.count) changes, the report \(report.edges.count)")
            return false
        }
        var ok = true
        let pairs = Array(zip(changes, report.edges))
        for (i, (change, edge)) in pairs.enumerated() {
            if change.active != edge.active || !(edge.scheduledNs <= change.tNs && change.tNs <= edge.actualNs) {
                Issue.record("edge \(i) changed at \(change.tNs), due \(edge.scheduledNs), drive returned \(edge.actualNs)")
                ok = false
            }
            guard i + 1 < pairs.count, let output = steps[change.line] else { continue }
            let (nextChange, nextEdge) = pairs[i + 1]
            // The phase that follows this edge on the same line: its pulse (after a rising
            // edge) or its gap (after a falling one, when the next pulse is on the same line).
            guard nextChange.line == change.line else { continue }
            let configured = UInt64(change.active ? output.pulseMs : output.gapMs) * 1_000_000
            let width = nextChange.tNs - change.tNs
            let floor = configured - min(1_000_000, configured / 10)
            let ceiling = configured + (nextEdge.actualNs - nextEdge.scheduledNs) + (edge.actualNs - change.tNs)
            if width < floor || width > ceiling {
                Issue.record("\(change.active ? "pulse" : "gap") after edge \(i) on line \(change.line) was \(width) ns: not within \(floor)…\(ceiling)")
                ok = false
            }
        }
        return ok
    }

    /// A late edge (here: the after-pulse hook stalls the pulse thread 45 ms into a 30 ms gap,
    /// as a hypervisor that does not run the virtual CPU would) does not cut the next pulse short:
    /// the coin controller would take a 15 ms pulse for noise, and the customer would lose a coin.
    @Test func aLateEdgeDoesNotShortenThePulseAfterIt() async throws {
        let lines = try driver.open(outputs: [Self.coin], inhibit: nil)
        let plan = try PulsePlan.make(amount: 300, outputs: [Self.coin])
        let report = await engine.fire(plan, on: lines, afterPulse: { fired in
            if fired == 1 { Thread.sleep(forTimeInterval: 0.045) }
        })
        lines.close()
        #expect(report.outcome == .completed)
        #expect(report.pulsesFired == 3)
        let edges = SimulatedEdge.read(driver.edgeLogPath)
        #expect(report.edges[2].errorNs >= 14_000_000, "the second rising edge was late, as staged")
        #expect(phasesKeepTheirWidths(edges: edges, report: report, outputs: [Self.coin]))
        let highs = stride(from: 0, to: report.edges.count, by: 2).map { report.edges[$0 + 1].actualNs - report.edges[$0].actualNs }
        #expect(highs.allSatisfy { $0 >= 29_000_000 }, "pulse widths \(highs)")
    }

    /// The deadline rule itself: on schedule when the edge before was on time, never less than
    /// the phase less the catch-up (at most a tenth of the phase) after a late one.
    @Test(arguments: [
        // due, done, phase, catch-up → next deadline
        (1_000, 1_010, 30_000_000, 1_000_000, 30_001_000),  // on time: the schedule
        (1_000, 15_000_000, 30_000_000, 1_000_000, 44_000_000),  // 15 ms late: phase − 1 ms
        (1_000, 1_500_000, 30_000_000, 1_000_000, 30_500_000),  // 1.5 ms late: catches up 1 ms
        (1_000, 800_000, 30_000_000, 1_000_000, 30_001_000),  // within the catch-up: the schedule
        (0, 5_000_000, 5_000_000, 1_000_000, 9_500_000),  // a 5 ms phase catches up 0.5 ms at most
    ])
    func nextDeadline(due: UInt64, done: UInt64, phase: UInt64, catchUp: UInt64, expected: UInt64) {
        #expect(PulseEngine.nextDeadline(after: due, changedBy: done, phase: phase, catchUp: catchUp) == expected)
    }

    /// The pulse thread's sleep: kernel sleep, then a spin for the last stretch; it returns at
    /// the deadline or after, never before, whatever the deadline (past, inside the spin, far).
    @Test func spinningSleepNeverReturnsEarly() {
        for offset: UInt64 in [0, 1_000, 100_000, 249_000, 251_000, 1_000_000, 3_000_000] {
            let deadline = Clock.now() + offset
            Clock.sleep(until: deadline, spinningFor: 250_000)
            #expect(Clock.now() >= deadline, "returned early for an offset of \(offset) ns")
        }
        let past = Clock.now() - 1_000_000
        Clock.sleep(until: past, spinningFor: 250_000)
        Clock.sleep(until: 100, spinningFor: 250_000)  // a deadline smaller than the spin itself
    }

    @Test func openingDrivesEveryOutputInactiveFirst() throws {
        let lines = try driver.open(outputs: [Self.coin, Self.bill], inhibit: nil)
        let edges = SimulatedEdge.read(driver.edgeLogPath)
        #expect(edges.map(\.line) == [17, 27])
        #expect(edges.allSatisfy { !$0.active })
        lines.close()
    }

    @Test func inhibitActiveBeforeTheTrainFiresNothing() async throws {
        try driver.setInhibit(true)
        let lines = try driver.open(outputs: [Self.coin], inhibit: Self.inhibit)
        let report = await engine.fire(try PulsePlan.make(amount: 300, outputs: [Self.coin]), on: lines)
        lines.close()
        #expect(report.outcome == .inhibitedBeforeStart)
        #expect(report.pulsesFired == 0)
        #expect(activations(SimulatedEdge.read(driver.edgeLogPath), line: 17) == 0)
    }

    @Test func inhibitWithoutAnInhibitLineIsIgnored() async throws {
        try driver.setInhibit(true)
        let lines = try driver.open(outputs: [Self.coin], inhibit: nil)
        let report = await engine.fire(try PulsePlan.make(amount: 200, outputs: [Self.coin]), on: lines)
        lines.close()
        #expect(report.outcome == .completed)
    }

    @Test func inhibitAssertedMidTrainStopsWithAPartialCount() async throws {
        let lines = InhibitAfter(try driver.open(outputs: [Self.coin], inhibit: Self.inhibit), pulses: 2)
        let report = await engine.fire(try PulsePlan.make(amount: 500, outputs: [Self.coin]), on: lines)
        lines.close()
        #expect(report.outcome == .inhibitedDuringTrain)
        #expect(report.pulsesFired == 2)
        let edges = SimulatedEdge.read(driver.edgeLogPath)
        #expect(activations(edges, line: 17) == 2)
        #expect(allInactive(edges))
    }

    @Test func driverFailingMidTrainReportsThePartialCountAndLeavesLinesInactive() async throws {
        try driver.setFault("after:3")
        let lines = try driver.open(outputs: [Self.coin, Self.bill], inhibit: nil)
        let report = await engine.fire(try PulsePlan.make(amount: 1500, outputs: [Self.coin, Self.bill]), on: lines)
        try driver.setFault(nil)
        lines.close()
        guard case .faultDuringTrain(let error) = report.outcome else {
            Issue.record("expected a fault during the train, got \(report.outcome)")
            return
        }
        #expect(error.description.contains("gpiochip0"))
        #expect(report.pulsesFired == 3)
        let edges = SimulatedEdge.read(driver.edgeLogPath)
        #expect(edges.filter(\.active).count == 3)
        #expect(allInactive(edges))
    }

    @Test func lineThatCannotBeDrivenFiresNothing() async throws {
        let lines = try driver.open(outputs: [Self.coin], inhibit: nil)
        try driver.setFault("drive")
        let report = await engine.fire(try PulsePlan.make(amount: 300, outputs: [Self.coin]), on: lines)
        try driver.setFault(nil)
        lines.close()
        guard case .faultBeforeStart = report.outcome else {
            Issue.record("expected a fault before the train, got \(report.outcome)")
            return
        }
        #expect(report.pulsesFired == 0)
        #expect(activations(SimulatedEdge.read(driver.edgeLogPath), line: 17) == 0)
    }

    @Test func declinedHookFiresNothing() async throws {
        struct Expired: Error, Equatable { var by: Int }
        let lines = try driver.open(outputs: [Self.coin], inhibit: nil)
        let report = await engine.fire(try PulsePlan.make(amount: 300, outputs: [Self.coin]), on: lines) { () throws(Expired) in
            throw Expired(by: 7)
        }
        lines.close()
        #expect(report.outcome == .declined)
        #expect(!report.outcome.startedFiring)
        // The hook's own error, typed, comes back with the report.
        #expect(report.refusal == Expired(by: 7))
        #expect(activations(SimulatedEdge.read(driver.edgeLogPath), line: 17) == 0)
    }

    @Test func shutDownEngineFiresNothingAndSaysSo() async throws {
        let engine = PulseEngine(realtime: RealtimePolicy(fifoPriority: nil))
        engine.shutdown()
        let lines = try driver.open(outputs: [Self.coin], inhibit: nil)
        let report = await engine.fire(try PulsePlan.make(amount: 300, outputs: [Self.coin]), on: lines)
        lines.close()
        #expect(report.outcome == .shutDown)
        #expect(report.pulsesFired == 0)
        #expect(activations(SimulatedEdge.read(driver.edgeLogPath), line: 17) == 0)
    }

    @Test func hookRunsBeforeTheFirstEdge() async throws {
        let lines = try driver.open(outputs: [Self.coin], inhibit: nil)
        let path = driver.edgeLogPath
        let report = await engine.fire(try PulsePlan.make(amount: 100, outputs: [Self.coin]), on: lines) {
            // The hook sees no activation yet: it runs before the first pulse.
            if SimulatedEdge.read(path).contains(where: \.active) { throw CancellationError() }
        }
        lines.close()
        #expect(report.outcome == .completed)
    }

    @Test func cancelStopsBetweenPulses() async throws {
        let lines = try driver.open(outputs: [Self.coin], inhibit: nil)
        let engine = self.engine
        let report = await engine.fire(try PulsePlan.make(amount: 5000, outputs: [Self.coin]), on: lines) {
            engine.cancel()
        }
        lines.close()
        #expect(report.outcome == .cancelled)
        #expect(report.pulsesFired < 50)
        #expect(allInactive(SimulatedEdge.read(driver.edgeLogPath)))
    }

    @Test func libgpiodNamesTheMissingChip() {
        // This machine has no /dev/gpiochip*: opening fails, naming the chip.
        let error = #expect(throws: RelayError.self) {
            _ = try GPIODLineDriver().open(outputs: [Self.coin], inhibit: Self.inhibit)
        }
        guard case .chipUnavailable(let chip, let reason) = error else {
            Issue.record("expected the chip to be unavailable, got \(String(describing: error))")
            return
        }
        #expect(chip == "gpiochip0")
        #expect(reason.contains("No such file"))
        #expect(error?.description.contains("gpiochip0") == true)
        #expect(throws: RelayError.self) {
            _ = try GPIODLineDriver().open(outputs: [OutputLine(channel: "c", chip: "/dev/gpiochip9", line: 1, valuePerPulse: 1, pulseMs: 10, gapMs: 10)], inhibit: nil)
        }
    }
}

/// Wraps real simulated lines; reports the inhibit input active once `pulses` activations
/// have happened, so a test can assert inhibit at an exact point of a train.
final class InhibitAfter: RelayLines, @unchecked Sendable {
    let inner: any RelayLines
    let pulses: Int
    var activations = 0
    init(_ inner: any RelayLines, pulses: Int) {
        self.inner = inner
        self.pulses = pulses
    }
    var outputs: [OutputLine] { inner.outputs }
    func drive(_ index: Int, active: Bool) throws(RelayError) {
        try inner.drive(index, active: active)
        if active { activations += 1 }
    }
    func inhibitActive() throws(RelayError) -> Bool { activations >= pulses }
    func close() { inner.close() }
}
