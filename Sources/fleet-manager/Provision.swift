import ArgumentParser
import FleetManager
import Foundation
import MessageSchema

struct Provision: FleetCommand {
    static let configuration = CommandConfiguration(
        abstract: "Provision a unit (or many from a CSV): broker identity, signed initial configuration, device bundle.")

    @OptionGroup var options: HomeOptions
    @Argument(help: "The machine ID (lower-case letters, digits, '-').") var machineId: String?
    @Option(help: "Machine profile JSON (outputs, limits); default: one 100-unit coin output.") var config: String?
    @Option(help: "CSV of machineId[,profileFile] rows to provision in bulk.") var from: String?
    @Option(help: "Where to write the bundle (default: HOME/bundles/MACHINE-ID.json).") var out: String?
    @Flag(help: "Issue new credentials and a new bundle for an existing unit.") var rotateCredentials = false
    var audit: AuditAction? {
        if let from { return AuditAction(action: "provision", target: nil, detail: "--from \(from)") }
        return AuditAction(action: rotateCredentials ? "provision --rotate-credentials" : "provision", target: machineId, detail: config)
    }

    func run(home: FleetHome) async throws {
        try await home.withProvisioner(purpose: "provision") { provisioner in
            if let from {
                guard machineId == nil else { throw FleetError("give either a MACHINE-ID or --from, not both") }
                try await bulk(provisioner, csv: from)
            } else {
                guard let raw = machineId else {
                    throw FleetError("a MACHINE-ID or --from CSV is required", hint: "fleet-manager provision laundry-07")
                }
                guard let machine = MachineID(rawValue: raw) else {
                    throw FleetError("'\(raw)' is not a machine ID", hint: "use \(MachineID.rule), e.g. laundry-07")
                }
                let profile = try config.map(MachineProfile.load)
                let outcome = try await provisioner.provision(machine, profile: profile, rotateCredentials: rotateCredentials, bundlePath: out)
                if outcome.rotated {
                    print("\(machine): new credentials; bundle \(outcome.bundlePath) (0600) — install it on the unit, the old one no longer connects")
                } else {
                    print("\(machine): provisioned; configuration v\(outcome.configVersion ?? 0) published; bundle \(outcome.bundlePath) (0600)")
                }
            }
        }
    }

    func bulk(_ provisioner: Provisioner, csv: String) async throws {
        let terminal = isatty(STDERR_FILENO) == 1
        let report = try await provisioner.provisionAll(csv: csv) { done, total in
            guard terminal, total > 0 else { return }
            let width = 30
            let filled = width * done / total
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            FileHandle.standardError.write(Data("\r[\(bar)] \(done)/\(total)\(done == total ? "\n" : "")".utf8))
        }
        print("provisioned: \(report.provisioned.count), already provisioned (skipped): \(report.alreadyProvisioned.count), failed: \(report.failed.count)")
        for failure in report.failed {
            print("  line \(failure.line) (\(failure.text)): \(failure.reason)")
        }
        if !report.failed.isEmpty {
            throw FleetError("\(report.failed.count) row(s) failed", hint: "fix them and run the same command again; done rows are skipped", exitCode: 3)
        }
    }
}

struct Revoke: FleetCommand {
    static let configuration = CommandConfiguration(
        abstract: "Revoke a unit: delete its broker identity, clear its retained topics; its history stays.")

    @OptionGroup var options: HomeOptions
    @Argument(help: "The machine ID.") var machineId: String
    var audit: AuditAction? { AuditAction(action: "revoke", target: machineId) }

    func run(home: FleetHome) async throws {
        guard let machine = MachineID(rawValue: machineId) else {
            throw FleetError("'\(machineId)' is not a machine ID", hint: "use \(MachineID.rule)")
        }
        try await home.withProvisioner(purpose: "revoke") { try await $0.revoke(machine) }
        print("\(machine): revoked (broker identity deleted, retained topics cleared)")
    }
}
