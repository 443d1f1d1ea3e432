import RelayOutput
import ArgumentParser
import FleetManager
import Foundation
import LocalServices

/// `provision --from CSV` for many units against a real mosquitto with dynamic security.
struct BulkProvisioning: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "provision", abstract: "Bulk provisioning rate (units/s) against dynamic security.")
    @Option(help: "Units to provision.")
    var count = 1000
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(count: count))
    }

    static func measure(count: Int) async throws -> [Measurement] {
        let broker = try await LocalMosquitto.start(template: "dynsec")
        do {
            let dir = NSTemporaryDirectory() + "bench-provision-\(UUID().uuidString)"
            let home = try await FleetSetup.initialize(
                FleetSetup.Options(
                    home: dir, brokerHost: broker.host, brokerPort: broker.port, adminPassword: broker.adminPassword!,
                    deviceBrokerUrl: "mqtt://127.0.0.1:\(broker.port)"))
            let csv = dir + "/machines.csv"
            try (0..<count).map { "unit-\($0)" }.joined(separator: "\n").write(toFile: csv, atomically: true, encoding: .utf8)
            let backend = try await DynamicSecurityBackend.connect(home.settings.manager)
            let publisher = try await home.settings.manager.connect(clientID: "bench-provision")
            let start = monotonicNanoseconds()
            let report = try await Provisioner(home: home, backend: backend, publisher: publisher).provisionAll(csv: csv)
            let seconds = Double(monotonicNanoseconds() - start) / 1e9
            await publisher.close()
            await backend.close()
            await broker.stop()
            guard report.failed.isEmpty, report.provisioned.count == count else {
                throw ValidationError("provisioning failed: \(report.failed.prefix(3))")
            }
            return [
                Measurement(benchmark: "provision.bulk-\(count)", metric: "rate", value: (Double(count) / seconds).rounded(), unit: "units/s"),
                Measurement(benchmark: "provision.bulk-\(count)", metric: "total", value: seconds, unit: "s"),
            ]
        } catch {
            await broker.stop()
            throw error
        }
    }
}
