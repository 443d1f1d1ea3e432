import Foundation
import MQTT
import MessageSchema

/// Reads the retained `config/reported` of the units into the registry (what `serve` keeps
/// up to date continuously), for commands that need it now.
public enum RetainedReports {
    /// Subscribes as `identity`, records every retained report, and returns when every unit of
    /// `machines` has reported or `timeout` passed (a unit may never have reported).
    public static func refresh(home: FleetHome, machines: [MachineID], timeout: Duration = .seconds(2)) async throws {
        let client = try await home.settings.manager.connect(clientID: "fleet-manager-reports-\(UUID().uuidString.prefix(8).lowercased())")
        defer { Task { await client.close() } }
        var missing = Set(machines)
        let messages = client.messages
        try await client.subscribe(home.topics.filter(.configReported))
        let deadline = ContinuousClock.now + timeout
        let collector = Task {
            var iterator = messages.makeAsyncIterator()
            while !missing.isEmpty, let message = await iterator.next() {
                guard let report = try? WireCoding.decode(ConfigReported.self, from: message.payload) else { continue }
                try? home.registry.recordConfigReport(report)
                missing.remove(report.machineId)
            }
        }
        let timer = Task {
            try? await Task.sleep(until: deadline, clock: .continuous)
            collector.cancel()
        }
        _ = await collector.result
        timer.cancel()
        await client.close()
    }
}
