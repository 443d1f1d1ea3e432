import ArgumentParser
import FleetManager
import Foundation

/// `fleet-manager audit`: who changed what in the fleet, when, from where.
struct Audit: FleetCommand {
    static let configuration = CommandConfiguration(
        abstract: "The audit trail: every command that changed the fleet, who ran it, from where, and how it ended.")
    @OptionGroup var options: HomeOptions
    @Option(help: "Only actions on this target (a machine ID, key ID, firmware version, payment ID).") var target: String?
    @Option(help: "At most this many, newest first.") var limit = 200
    @Flag(help: "JSON instead of a table.") var json = false

    func run(home: FleetHome) async throws {
        let trail = try home.registry.auditTrail(target: target, limit: limit)
        if json {
            printJSON(trail)
            return
        }
        if trail.isEmpty {
            print("nothing in the audit trail\(target.map { " for \($0)" } ?? "")")
            return
        }
        printTable(
            ["WHEN", "WHO", "FROM", "ACTION", "TARGET", "DETAIL", "OUTCOME"],
            trail.map { record in
                [
                    formatTime(record.at), "\(record.actor) (\(record.via.rawValue))", record.origin, record.action, record.target ?? "-",
                    record.detail ?? "-", record.outcome == .ok ? "ok" : "failed: \(record.error ?? "?")",
                ]
            })
    }
}
