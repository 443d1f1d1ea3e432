import ArgumentParser
import DaemonSupport
import FleetConsole
import FleetManager
import Foundation
import Logging
import PulseBridgeVersion
import MessageSchema
import PaymentSDK
import ServiceLifecycle

struct Devices: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "The fleet at a glance (kept by `serve`).")
    @OptionGroup var options: HomeOptions
    @Flag(help: "Machine-readable output.") var json = false

    func run(home: FleetHome) async throws {
        let units = try home.registry.overviews(now: Registry.now())
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(units), as: UTF8.self))
            return
        }
        let rows = units.map { unit in
            [
                unit.machineId, unit.state, formatTime(unit.lastSeen), unit.firmware ?? "-",
                "\(unit.desiredConfigVersion.map(String.init) ?? "-")/\(unit.appliedConfigVersion.map(String.init) ?? "-")",
                unit.clockSkewMs.map { "\($0) ms" } ?? "-", "\(unit.counters?.credited ?? 0)", "\(unit.counters?.creditedAmount ?? 0)",
                unit.alerts.isEmpty ? "-" : unit.alerts.joined(separator: "; "),
            ]
        }
        print(FleetReports.render(
            headers: ["MACHINE", "STATE", "LAST SEEN", "FIRMWARE", "CONFIG D/A", "SKEW", "CREDITED", "AMOUNT", "ALERTS"],
            rows: rows, format: "table"), terminator: "")
    }
}

struct Device: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "One unit in detail.")
    @OptionGroup var options: HomeOptions
    @Argument(help: "The machine ID.") var machineId: String
    @Flag(help: "JSON instead of text.") var json = false

    func run(home: FleetHome) async throws {
        guard let unit = try home.registry.overviews(now: Registry.now()).first(where: { $0.machineId == machineId }) else {
            throw FleetError("no unit '\(machineId)' in the registry", hint: "`fleet-manager devices` lists the fleet")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(unit), as: UTF8.self))
            return
        }
        let counters = unit.counters ?? PaymentCounters()
        print("""
            machine        \(unit.machineId) (\(unit.provisioning))
            state          \(unit.state)\(unit.offlineReason.map { " (\($0))" } ?? "")
            last seen      \(formatTime(unit.lastSeen))
            firmware       \(unit.firmware ?? "-")
            config         desired v\(unit.desiredConfigVersion.map(String.init) ?? "-"), applied v\(unit.appliedConfigVersion.map(String.init) ?? "-")\(unit.configReport.map { ", last report: \($0)" } ?? "")
            clock skew     \(unit.clockSkewMs.map { "\($0) ms" } ?? "-")
            relay          \(unit.relay ?? "-")\(unit.inhibited == true ? ", inhibited" : "")
            outbox         \(unit.outboxDepth.map(String.init) ?? "-")
            payments       credited \(counters.credited) (\(counters.creditedAmount)), rejected \(counters.rejected), duplicate \(counters.duplicate), uncertain \(counters.uncertain), pulses \(counters.pulses)
            alerts         \(unit.alerts.isEmpty ? "none" : unit.alerts.joined(separator: "; "))
            """)
    }
}

