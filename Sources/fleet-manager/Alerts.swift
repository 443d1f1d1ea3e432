import ArgumentParser
import FleetManager
import Foundation
import MessageSchema

/// `fleet-manager alerts`: what `serve` opened and resolved, acknowledging, and where the
/// events went.
struct Alerts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Alerts: open ones (a unit offline, clock skew, an uncertain payment, a configuration not applied), acknowledging, deliveries.",
        discussion: """
            `serve` opens an alert when something goes wrong and resolves it when it is undone (the
            unit is back online, the payment settled). Each opening and resolution is delivered to
            serve's --alert-webhook and --alert-exec targets (docs/operations.md, "Alerts").
            """,
        subcommands: [List.self, Ack.self, Deliveries.self], defaultSubcommand: List.self)

    struct List: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Open alerts (or all with --all), newest first.")
        @OptionGroup var options: HomeOptions
        @Flag(help: "Resolved ones too.") var all = false
        @Option(help: "Only this machine's.") var machine: String?
        @Option(help: "At most this many.") var limit = 200
        @Flag(help: "JSON instead of a table.") var json = false

        func run(home: FleetHome) async throws {
            let machineId = try machine.map { try machineID($0) }
            let alerts = try home.registry.alerts(openOnly: !all, machine: machineId, limit: limit)
            if json {
                printJSON(alerts)
                return
            }
            if alerts.isEmpty {
                print(all ? "no alerts" : "no open alerts")
                return
            }
            printTable(
                ["ID", "MACHINE", "KIND", "OPENED", "RESOLVED", "ACK", "DETAIL"],
                alerts.map { alert in
                    [
                        "\(alert.id)", alert.machineId, alert.kind.rawValue + (alert.suppressed.map { " (\($0))" } ?? ""),
                        formatTime(alert.openedAt), alert.resolvedAt.map { formatTime($0) + " " + (alert.resolution ?? "") } ?? "open",
                        alert.acknowledgedBy ?? "-", alert.detail,
                    ]
                })
        }
    }

    struct Ack: FleetCommand {
        static let configuration = CommandConfiguration(
            commandName: "ack", abstract: "Acknowledge an alert: you have seen it (it stays open until what raised it is undone).")
        @OptionGroup var options: HomeOptions
        @Argument(help: "The alert's ID (fleet-manager alerts).") var id: Int
        @Option(help: "Who acknowledges it (default: who runs the command, through sudo too).") var by = AuditRecord.cliActor().actor
        var audit: AuditAction? { AuditAction(action: "alerts ack", target: "alert \(id)", detail: "by \(by)") }

        func run(home: FleetHome) async throws {
            let alert = try home.registry.acknowledgeAlert(id, by: by)
            print("alert \(alert.id) (\(alert.machineId) \(alert.kind.rawValue)): acknowledged by \(alert.acknowledgedBy ?? by)")
        }
    }

    struct Deliveries: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "Alert events and their delivery to each target: pending (with the next attempt), delivered, dead.")
        @OptionGroup var options: HomeOptions
        @Option(help: "Only these: pending, delivered or dead.") var state: String?
        @Option(help: "At most this many.") var limit = 200
        @Flag(help: "JSON instead of a table.") var json = false

        func run(home: FleetHome) async throws {
            let wanted: AlertDelivery.State? = try state.map {
                guard let parsed = AlertDelivery.State(rawValue: $0) else { throw FleetError("--state must be pending, delivered or dead") }
                return parsed
            }
            let deliveries = try home.registry.alertDeliveries(state: wanted, limit: limit)
            if json {
                printJSON(deliveries)
                return
            }
            printTable(
                ["ID", "EVENT", "MACHINE", "KIND", "TARGET", "STATE", "ATTEMPTS", "NEXT / LAST ERROR"],
                deliveries.map { d in
                    [
                        "\(d.id)", d.event.rawValue, d.alert.machineId, d.alert.kind.rawValue, d.target, d.state.rawValue, "\(d.attempts)",
                        d.state == .pending ? formatTime(d.nextAttemptAt) + (d.lastError.map { " / \($0)" } ?? "") : d.lastError ?? "-",
                    ]
                })
        }
    }
}

func printJSON(_ value: some Encodable) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: (try? encoder.encode(value)) ?? Data(), as: UTF8.self))
}

func printTable(_ header: [String], _ rows: [[String]]) {
    print(FleetReports.render(headers: header, rows: rows, format: "table"), terminator: "")
}

/// A machine ID from the command line, or an error that says what one looks like.
func machineID(_ raw: String) throws -> MachineID {
    guard let machine = MachineID(rawValue: raw) else {
        throw FleetError("'\(raw)' is not a machine ID", hint: "a machine ID is 2 to 63 lower-case letters, digits and '-', starting with a letter or digit (fleet-manager devices lists them)")
    }
    return machine
}
