import ArgumentParser
import Foundation
import MessageSchema
import UnitSimulator

/// `pulsebridge-bench simulate`: the unit simulator as a process of its own, so its thousands of
/// sockets do not push the benchmark's own libmosquitto clients past descriptor 1,023 (where
/// libmosquitto's select() loop fails). Prints the fleet's counters as one JSON line every
/// 200 ms; SIGTERM ends it as a power cut would (no DISCONNECT: the wills fire).
struct Simulate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run simulated units from a folder of bundles (one MQTT session each); print counters as JSON lines.")
    @Option(help: "Folder of device bundles (*.json), e.g. a fleet home's bundles/.") var bundles: String
    @Option(help: "Broker host (default: each bundle's).") var host = "127.0.0.1"
    @Option(help: "Broker port.") var port: Int
    @Option(help: "Seconds between heartbeats.") var heartbeat = 60
    @Flag(help: "Answer payments at once instead of after the pulse train's duration.") var instantTrains = false
    @Option(help: "At most this many units (0: every bundle).") var limit = 0

    func run() async throws {
        UnitFleet.raiseFileLimit()
        var files = try FileManager.default.contentsOfDirectory(atPath: bundles).filter { $0.hasSuffix(".json") && !$0.hasPrefix(".") }.sorted()
        if limit > 0 { files = Array(files.prefix(limit)) }
        let loaded = try files.map { try AgentBundle.load(from: bundles + "/" + $0) }
        var options = UnitFleet.Options(host: host, port: port)
        options.heartbeatSeconds = heartbeat
        options.realTrainTime = !instantTrains
        let fleet = UnitFleet(options: options)
        let reporter = Task {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            while !Task.isCancelled {
                if let line = try? encoder.encode(fleet.current) {
                    FileHandle.standardOutput.write(line + Data("\n".utf8))
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        try await fleet.start(loaded)
        // Runs until the parent ends it.
        while true { try await Task.sleep(for: .seconds(3600)) }
        _ = reporter
    }
}
