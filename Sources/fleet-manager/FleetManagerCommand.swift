import ArgumentParser
import FleetManager
import Foundation
import DaemonSupport
import Logging
import PulseBridgeVersion
import MQTT

@main
struct FleetManagerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fleet-manager",
        abstract: "PulseBridge fleet manager: provision units, watch them, configure them, take payments.",
        version: PulseBridgeVersion.current,
        subcommands: [
            Init.self, Provision.self, Revoke.self, Keys.self, Serve.self, Devices.self, Device.self, Config.self, Pay.self,
            Report.self, Code.self, Firmware.self, PaymentServers.self, Payments.self, Alerts.self, Audit.self, Operators.self, Wait.self,
        ])

    /// `serve` takes its settings from `--config FILE` (TOML) and `PULSEBRIDGE_SERVE_*` too.
    static func main() async {
        await mainWithSettings([
            "serve": { LayeredSettings(command: Serve.self, commandName: "fleet-manager serve", environmentPrefix: "PULSEBRIDGE_SERVE_") }
        ])
    }
}

/// Options every command that works on a fleet takes.
struct HomeOptions: ParsableArguments {
    @Option(help: "The fleet home (default: $PULSEBRIDGE_HOME or ~/.pulsebridge).")
    var home: String = FleetHome.defaultPath

    @Option(help: "Log level for diagnostics on standard error: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "warning"

    @Option(help: LogFormat.help)
    var logFormat = LogFormat.text

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
    }

    func bootstrapLogging() {
        LogFormat.bootstrap(logFormat, level: Logger.Level(rawValue: logLevel) ?? .warning)
    }

    func open() throws -> FleetHome { try FleetHome.open(at: home) }
}

/// What an acting command did, for the audit trail.
struct AuditAction {
    var action: String
    var target: String?
    var detail: String?
}

/// A command on a fleet home. `run()` sets up logging, opens the home, prints an expected
/// failure for humans (no stack trace), and for a command that changes the fleet (`audit`
/// not nil) records who did what, from where, and how it ended.
protocol FleetCommand: AsyncParsableCommand {
    var options: HomeOptions { get }
    /// What the audit trail records; nil for a command that only reads.
    var audit: AuditAction? { get }
    func run(home: FleetHome) async throws
}

extension FleetCommand {
    var audit: AuditAction? { nil }

    func run() async throws {
        options.bootstrapLogging()
        try await operatorErrors {
            let home = try options.open()
            guard let audit else { return try await run(home: home) }
            do {
                try await run(home: home)
                record(audit, in: home, error: nil)
            } catch {
                record(audit, in: home, error: error)
                throw error
            }
        }
    }

    private func record(_ audit: AuditAction, in home: FleetHome, error: (any Error)?) {
        let (actor, origin) = AuditRecord.cliActor()
        let outcome: AuditRecord.Outcome = error == nil ? .ok : .failed
        let message = error.map { ($0 as? FleetError)?.problem ?? "\($0)" }
        do {
            try home.registry.recordAudit(
                AuditRecord(
                    actor: actor, via: .cli, origin: origin, action: audit.action, target: audit.target, detail: audit.detail,
                    outcome: outcome, error: message))
        } catch {
            FileHandle.standardError.write(Data("fleet-manager: warning: the audit trail did not take this action: \(error)\n".utf8))
        }
    }
}

/// Runs a command body; expected failures print what went wrong and what to do, and exit
/// non-zero, without a stack trace.
func operatorErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as FleetError {
        FileHandle.standardError.write(Data("fleet-manager: \(error)\n".utf8))
        throw ExitCode(error.exitCode)
    } catch let error as ExitCode {
        throw error
    } catch is CancellationError {
        throw ExitCode(130)
    } catch {
        FileHandle.standardError.write(Data("fleet-manager: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

func readSecret(file: String?, value: String?, name: String) throws -> String {
    if let value { return value }
    if file == "-" {
        // `-`: standard input, so a root-only secret can be piped to the command run as the
        // service user (`sudo cat FILE | sudo -u pulsebridge-fleet fleet-manager … --…-file -`).
        let data = FileHandle.standardInput.readDataToEndOfFile()
        guard let text = String(data: data, encoding: .utf8), !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw FleetError("no \(name) on standard input", hint: "pipe the secret in, or pass --\(name)-file FILE")
        }
        return text.trimmingCharacters(in: .whitespacesAndNewlines)
    }
    if let file {
        do {
            return try SecretFile.read(file, what: "the \(name) file")
        } catch {
            throw FleetError(error.message, hint: error.hint)
        }
    }
    throw FleetError("\(name) is required", hint: "pass --\(name)-file FILE (or --\(name) for development)")
}

