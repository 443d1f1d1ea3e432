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

struct Config: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change unit configuration (new version, signed, retained).", subcommands: [Set.self, Apply.self, Status.self])

    static func targets(_ home: FleetHome, machineId: String?, all: Bool) throws -> [MachineID] {
        if all { return try home.registry.machines().map(\.id) }
        guard let raw = machineId, let machine = MachineID(rawValue: raw) else {
            throw FleetError("name a MACHINE-ID or pass --all")
        }
        return [machine]
    }

    struct Set: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set configuration values: maxAmount=, heartbeatS=, postVendDelayMs=, currency=, CHANNEL.pulseMs= (gapMs, valuePerPulse, line, chip, activeLow).")
        @OptionGroup var options: HomeOptions
        @Flag(help: "Every provisioned unit.") var all = false
        @Argument(help: "MACHINE-ID (unless --all), then KEY=VALUE pairs.") var arguments: [String]
        var audit: AuditAction? {
            all ? AuditAction(action: "config set", target: "--all", detail: arguments.joined(separator: " "))
                : AuditAction(action: "config set", target: arguments.first, detail: arguments.dropFirst().joined(separator: " "))
        }

        func run(home: FleetHome) async throws {
            var pairs = arguments
            var machineId: String?
            if !all, let first = pairs.first, !first.contains("=") { machineId = pairs.removeFirst() }
            guard !pairs.isEmpty else { throw FleetError("nothing to set", hint: "e.g. fleet-manager config set laundry-07 maxAmount=3000") }
            let targets = try Config.targets(home, machineId: machineId, all: all)
            try await home.withManagerClient(purpose: "config") { client in
                for machine in targets {
                    let config = try await ConfigPublisher(home: home, client: client).publish(machine) { profile in
                        for pair in pairs { try profile.set(pair) }
                    }
                    print("\(machine): configuration v\(config.version) published")
                }
            }
        }
    }

    struct Apply: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Replace units' configuration with a profile file.")
        @OptionGroup var options: HomeOptions
        @Argument(help: "Profile JSON (currency, maxAmount, heartbeatS, postVendDelayMs, outputs, inhibit).") var file: String
        @Argument(help: "The machine ID (or --all).") var machineId: String?
        @Flag(help: "Every provisioned unit.") var all = false
        var audit: AuditAction? { AuditAction(action: "config apply", target: all ? "--all" : machineId, detail: file) }

        func run(home: FleetHome) async throws {
            let profile = try MachineProfile.load(file)
            let targets = try Config.targets(home, machineId: machineId, all: all)
            try await home.withManagerClient(purpose: "config") { client in
                for machine in targets {
                    let config = try await ConfigPublisher(home: home, client: client).publish(machine) { $0 = profile }
                    print("\(machine): configuration v\(config.version) published")
                }
            }
        }
    }

    struct Status: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Which units applied which configuration version.")
        @OptionGroup var options: HomeOptions

        func run(home: FleetHome) async throws {
            let machines = try home.registry.machines()
            try await RetainedReports.refresh(home: home, machines: machines.map(\.id))
            let rows = try home.registry.machines().map { machine -> [String] in
                let desired = machine.desiredConfig?.version
                let state: String
                switch (machine.reportedStatus, machine.reportedVersion) {
                case ("applied", let v?) where v == desired: state = "applied"
                case ("rejected", let v?) where v == desired: state = "rejected (\(machine.reportedReason ?? "?"))"
                case (_, let v?): state = "pending (unit reports v\(v) \(machine.reportedStatus ?? ""))"
                default: state = "pending (no report yet)"
                }
                return [machine.id.rawValue, desired.map { "v\($0)" } ?? "-", state]
            }
            print(FleetReports.render(headers: ["MACHINE", "DESIRED", "STATUS"], rows: rows, format: "table"), terminator: "")
        }
    }
}

