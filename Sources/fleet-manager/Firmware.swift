import ArgumentParser
import FleetManager
import Foundation
import MessageSchema
import PulseBridgeVersion

struct Firmware: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Firmware releases and staged rollouts.", subcommands: [Stamp.self, Publish.self, Rollout.self, Status.self])

    struct Stamp: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a copy of an edge-agent binary that reports VERSION (what `firmware publish` then records).")
        @Option(help: "The edge-agent binary (e.g. .build/release/edge-agent).") var artifact: String
        @Option(help: "The version to stamp.") var version: String
        @Option(help: "Where to write the stamped copy.") var out: String

        func run() async throws {
            try await operatorErrors {
                do {
                    try VersionStamp.stamp(artifact, version: version, to: out)
                } catch let failure as VersionStamp.Failure {
                    throw FleetError(failure.description, hint: "pass an edge-agent binary built from this source")
                }
                print("\(out): edge-agent \(VersionStamp.version(ofBinaryAt: out) ?? "?")")
            }
        }
    }

    struct Publish: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Record an artifact as a version (hash, size, download URL).")
        @OptionGroup var options: HomeOptions
        @Option(help: "The version the artifact reports.") var version: String
        @Option(help: "The edge-agent binary.") var artifact: String
        @Option(help: "URL base units download from (default: the fleet's firmwareUrlBase).") var urlBase: String?

        var audit: AuditAction? { AuditAction(action: "firmware publish", target: version, detail: artifact) }

        func run(home: FleetHome) async throws {
            let release = try FirmwareManager(home: home).publish(version: version, artifact: artifact, urlBase: urlBase)
            print("firmware \(release.version): \(release.size) bytes, sha256 \(release.sha256), \(release.url)")
        }
    }

    struct Rollout: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "Roll a version out in waves; abort when failures reach --max-failures.",
            discussion: "Exit code 0 when every unit installed it, 3 when some failed, 4 when the rollout aborted.")
        @OptionGroup var options: HomeOptions
        @Option(help: "The version (published before).") var version: String
        @Option(help: "Comma-separated machine IDs.") var machines: String?
        @Flag(help: "Every provisioned unit.") var all = false
        @Option(help: "Share of the units per wave, e.g. 10%.") var wave = "10%"
        @Option(help: "Abort when this many units failed.") var maxFailures = 1
        @Option(help: "Seconds a unit has to report installed or failed.") var timeout = 300

        var audit: AuditAction? {
            AuditAction(action: "firmware rollout", target: version, detail: "\(all ? "--all" : machines ?? "") wave \(wave) max-failures \(maxFailures)")
        }

        func run(home: FleetHome) async throws {
            let targets: [MachineID]
            if all {
                targets = try home.registry.machines().map(\.id)
            } else if let machines {
                targets = try machines.split(separator: ",").map { raw in
                    guard let id = MachineID(rawValue: String(raw)) else { throw FleetError("'\(raw)' is not a machine ID") }
                    return id
                }
            } else {
                throw FleetError("name --machines or pass --all")
            }
            guard let percent = Double(wave.trimmingCharacters(in: CharacterSet(charactersIn: "%"))), percent > 0, percent <= 100 else {
                throw FleetError("--wave must be a percentage such as 10%")
            }
            let report = try await home.withManagerClient(purpose: "rollout") { client in
                try await FirmwareManager(home: home).rollout(
                    version: version, machines: targets, wave: percent / 100, maxFailures: maxFailures, timeout: .seconds(timeout),
                    client: client, progress: { print($0) })
            }
            print("installed \(report.installed.count), failed \(report.failed.count), untouched \(report.untouched.count)")
            for failure in report.failed { print("  \(failure.machine): \(failure.reason)") }
            if report.aborted { throw ExitCode(4) }
            if !report.failed.isEmpty { throw ExitCode(3) }
        }
    }

    struct Status: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Each unit's firmware and last update report (kept by serve).")
        @OptionGroup var options: HomeOptions

        func run(home: FleetHome) async throws {
            let rows = try home.registry.firmwareStatus()
            print(FleetReports.render(
                headers: ["MACHINE", "RUNNING", "LAST REPORT"],
                rows: rows.map { row in
                    [row.machineId, row.running ?? "-",
                     row.state.map { "\(row.reportedVersion ?? "?") \($0)\(row.reason.map { " (\($0))" } ?? "")" } ?? "-"]
                }, format: "table"), terminator: "")
        }
    }
}
