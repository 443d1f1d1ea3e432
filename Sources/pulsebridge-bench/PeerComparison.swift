import ArgumentParser
import EdgeAgent
import Foundation
import LocalServices
import MessageSchema
import RelayOutput
import TestSupport

/// `edge-agent` (release) against the naive peer (`../shared/bench/peer_agent.py`: paho-mqtt +
/// cryptography, de-duplication in memory, nothing synced), alternately in one run, on one
/// broker, with one publisher: one payment = one 10 ms pulse; quiet, then with both cores busy
/// (`stress-ng --cpu 2`). Prints both and their ratio.
struct PeerComparison: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peer", abstract: "edge-agent vs the naive Python peer: publish → first edge, → result, pulse width error; quiet and busy.")
    @Option(help: "Payments per agent per round.") var count = 400
    @Option(help: "Alternating rounds.") var rounds = 3
    @Option(help: "The peer's script.") var peer = "../shared/bench/peer_agent.py"
    @OptionGroup var output: OutputOptions

    func run() async throws {
        guard FileManager.default.fileExists(atPath: peer) else { throw ValidationError("no peer at \(peer) (--peer PATH)") }
        try output.print(try await Self.measure(count: count, rounds: rounds, peer: peer))
    }

    enum Kind: String, CaseIterable { case peer, edgeAgent = "edge-agent" }

    struct Samples {
        var toEdge: [Double] = []
        var toResult: [Double] = []
        var widthError: [Double] = []
        /// edge-agent only: publish → first edge in pieces (`--trace-hot-path`), µs.
        var stages: [String: [Double]] = [:]
    }

    /// The pieces of publish → first edge, in order, from `HotPathMarks`.
    static let stages: [(name: String, span: @Sendable (UInt64, HotPathMarks) -> Double)] = [
        ("broker → agent callback", { t0, m in Double(Int64(bitPattern: m.arrived &- t0)) / 1e3 }),
        ("hand-off to pipeline", { _, m in Double(m.pipeline - m.arrived) / 1e3 }),
        ("open + verify", { _, m in Double(m.verified - m.pipeline) / 1e3 }),
        ("look-up, checks, plan", { _, m in Double(m.decided - m.verified) / 1e3 }),
        ("to the pulse thread, lines ready", { _, m in Double(m.trainBegan - m.decided) / 1e3 }),
        ("start record (synced)", { _, m in Double(m.committed - m.trainBegan) / 1e3 }),
        ("→ first edge", { _, m in Double(m.firstEdge - m.committed) / 1e3 }),
    ]

    static func measure(count: Int, rounds: Int, peer: String) async throws -> [Measurement] {
        var samples: [String: Samples] = [:]
        let fleet = try await FleetHarness.start()
        do {
            for busy in [false, true] {
                let stress = busy ? try ChildProcess.spawn("/usr/bin/stress-ng", ["--cpu", "2", "--quiet"], outputPath: fleet.directory + "/stress.out") : nil
                for round in 0..<rounds {
                    for kind in Kind.allCases {
                        let key = "\(kind.rawValue)\(busy ? " busy" : " quiet")"
                        var s = samples[key] ?? Samples()
                        try await Self.round(kind, fleet: fleet, count: count, peer: peer, tag: "\(busy ? "b" : "q")\(round)", into: &s)
                        samples[key] = s
                    }
                }
                await stress?.terminate()
            }
        } catch {
            await fleet.stop()
            throw error
        }
        await fleet.stop()

        var measurements: [Measurement] = []
        for load in ["quiet", "busy"] {
            let ours = samples["edge-agent \(load)"] ?? Samples(), theirs = samples["peer \(load)"] ?? Samples()
            func add(_ metric: String, _ pick: (Samples) -> [Double], _ percentile: Double, unit: String) {
                let a = Distribution(pick(ours)).percentile(percentile), b = Distribution(pick(theirs)).percentile(percentile)
                let name = "peer-comparison (\(load))"
                measurements.append(Measurement(benchmark: name, metric: "\(metric) edge-agent", value: a.rounded(), unit: unit))
                measurements.append(Measurement(benchmark: name, metric: "\(metric) peer", value: b.rounded(), unit: unit))
                measurements.append(Measurement(benchmark: name, metric: "\(metric) edge-agent/peer", value: (a / b * 100).rounded() / 100, unit: "×"))
            }
            add("first edge p50", \.toEdge, 0.5, unit: "µs")
            add("first edge p99", \.toEdge, 0.99, unit: "µs")
            add("result p50", \.toResult, 0.5, unit: "µs")
            add("width error p99", \.widthError, 0.99, unit: "µs")
            for stage in stages {
                let values = Distribution(ours.stages[stage.name] ?? [])
                let name = "edge-agent pieces (\(load))"
                measurements.append(Measurement(benchmark: name, metric: "\(stage.name) p50", value: values.percentile(0.5).rounded(), unit: "µs"))
                measurements.append(Measurement(benchmark: name, metric: "\(stage.name) p99", value: values.percentile(0.99).rounded(), unit: "µs"))
            }
        }
        return measurements
    }

    /// One agent of `kind` started, `count` payments timed, the agent stopped.
    static func round(_ kind: Kind, fleet: FleetHarness, count: Int, peer: String, tag: String, into samples: inout Samples) async throws {
        let machine = MachineID(unchecked: "bench-\(kind == .peer ? "peer" : "agent")-\(tag)")
        let pulse = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 10, gapMs: 10)
        let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [pulse], maxAmount: 100_000, heartbeatS: 30))
        var child: ChildProcess?
        switch kind {
        case .edgeAgent:
            try unit.start(binary: productsDirectory() + "/edge-agent", arguments: ["--trace-hot-path", unit.directory + "/hot-path.jsonl"])
            _ = try await fleet.status(machine, .online)
            child = unit.child
        case .peer:
            let process = try ChildProcess.spawn(
                "/usr/bin/env",
                ["python3", peer, fleet.broker.host, "\(fleet.broker.port)", machine.rawValue, fleet.paymentKey.publicKey.base64, unit.edgeLogPath, "nodelay"],
                outputPath: unit.directory + "/peer.out")
            let ready = ContinuousClock.now + .seconds(20)
            while !process.output().contains("ready") {
                guard ContinuousClock.now < ready, process.isRunning else { throw ValidationError("the peer did not start: \(process.output())") }
                try await Task.sleep(for: .milliseconds(20))
            }
            child = process
        }
        var offset = 0
        func newEdges() -> [SimulatedEdge] {
            guard let data = FileManager.default.contents(atPath: unit.edgeLogPath), data.count > offset else { return [] }
            let fresh = data[offset...]
            offset = data.count
            return fresh.split(separator: UInt8(ascii: "\n")).compactMap { try? JSONDecoder().decode(SimulatedEdge.self, from: $0) }
        }
        let resultTopic = fleet.topics.topic(.paymentResult, for: machine)
        var published: [String: UInt64] = [:]
        for i in 0..<(count + 20) {
            let payment = fleet.payment(machine, amount: 100)
            let envelope = SignedEnvelope.sign(payment, kid: fleet.paymentKid, key: fleet.paymentKey).encoded()
            let id = payment.paymentId.rawValue
            let t0 = monotonicNanoseconds()
            try await fleet.publishRaw(envelope, to: machine, expiry: 30)
            _ = try await fleet.inbox.next("result of \(id)", timeout: .seconds(10)) { message in
                message.topic == resultTopic && String(decoding: message.payload, as: UTF8.self).contains(id)
            }
            let t1 = monotonicNanoseconds()
            var edges = newEdges()
            // The peer writes its last edge after it published the result: wait for it.
            let deadline = ContinuousClock.now + .seconds(2)
            while edges.filter({ !$0.active }).isEmpty, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(1))
                edges += newEdges()
            }
            guard let rise = edges.first(where: \.active), let fall = edges.first(where: { !$0.active && $0.tNs > rise.tNs }) else {
                throw ValidationError("\(kind.rawValue): no pulse for payment \(i)")
            }
            if i >= 20 {  // warm-up
                published[id] = t0
                samples.toEdge.append(Double(rise.tNs - t0) / 1e3)
                samples.toResult.append(Double(t1 - t0) / 1e3)
                samples.widthError.append(abs(Double(fall.tNs - rise.tNs) / 1e3 - 10_000))
            }
        }
        await child?.terminate(grace: .seconds(10))
        if kind == .edgeAgent {
            let trace = FileManager.default.contents(atPath: unit.directory + "/hot-path.jsonl") ?? Data()
            let marks = trace.split(separator: UInt8(ascii: "\n")).compactMap { try? JSONDecoder().decode(HotPathMarks.self, from: $0) }
            for mark in marks {
                guard let t0 = published[mark.paymentId] else { continue }
                for stage in stages { samples.stages[stage.name, default: []].append(stage.span(t0, mark)) }
            }
        }
    }
}
