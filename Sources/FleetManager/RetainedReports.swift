import Foundation
import MQTT
import MessageSchema

/// Reads the retained `config/reported` of the units into the registry (what `serve` keeps
/// up to date continuously), for commands that need it now.
public enum RetainedReports {
    /// Subscribes as `identity`, records every retained report, and returns when every unit of
    /// `machines` has reported or `timeout` passed (a unit may never have reported).
    public static func refresh(home: FleetHome, machines: [MachineID], timeout: Duration = .seconds(2)) async throws {
        try await home.settings.manager.withClient(clientID: "fleet-manager-reports-\(UUID().uuidString.prefix(8).lowercased())") { client in
            let reports = try await client.subscription(to: home.topics.filter(.configReported))
            let collector = Task {
                var missing = Set(machines)
                if missing.isEmpty { return }
                for await message in reports {
                    guard let report = try? WireCoding.decode(ConfigReported.self, from: message.payload) else { continue }
                    try? home.registry.recordConfigReport(report)
                    missing.remove(report.machineId)
                    if missing.isEmpty { return }
                }
            }
            let timer = Task {
                try? await Task.sleep(for: timeout)
                collector.cancel()
            }
            _ = await collector.result
            timer.cancel()
        }
    }
}
