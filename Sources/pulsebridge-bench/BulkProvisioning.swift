import RelayOutput
import MessageSchema
import PaymentSDK
import ArgumentParser
import FleetManager
import Foundation
import LocalServices
import TestSupport

/// `provision --from CSV` for many units against a real mosquitto with dynamic security.
struct BulkProvisioning: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "provision",
        abstract: "Bulk provisioning rate (units/s), `provision --from CSV` as the CLI runs it, per broker administration.")
    @Option(help: "Units to provision.")
    var count = 1000
    @Option(help: "Broker administrations to measure, side by side: dynamic-security, password-file.")
    var administration: [BrokerAdministration.Kind] = [.passwordFile, .dynamicSecurity]
    @OptionGroup var output: OutputOptions

    func run() async throws {
        var rows: [Measurement] = []
        for kind in administration { rows += try await Self.measure(count: count, administration: kind) }
        try output.print(rows)
    }

    static func measure(count: Int, administration: BrokerAdministration.Kind = .passwordFile) async throws -> [Measurement] {
        let broker = try await LocalMosquitto.start(template: administration == .passwordFile ? "files" : "dynsec")
        do {
            let dir = NSTemporaryDirectory() + "bench-provision-\(UUID().uuidString)"
            let home = try await FleetSetup.initialize(
                administration == .passwordFile
                    ? .passwordFile(broker, home: dir)
                    : FleetSetup.Options(
                        home: dir, brokerHost: broker.host, brokerPort: broker.port, adminPassword: broker.adminPassword!,
                        deviceBrokerUrl: "mqtt://127.0.0.1:\(broker.port)"))
            let csv = dir + "/machines.csv"
            try (0..<count).map { "unit-\($0)" }.joined(separator: "\n").write(toFile: csv, atomically: true, encoding: .utf8)
            let backend = try await home.provisioningBackend()
            let publisher = try await home.settings.manager.connect(clientID: "bench-provision")
            let start = monotonicNanoseconds()
            let report = try await Provisioner(home: home, backend: backend, publisher: publisher).provisionAll(csv: csv)
            let seconds = Double(monotonicNanoseconds() - start) / 1e9
            await publisher.close()
            await backend.close()
            guard report.failed.isEmpty, report.provisioned.count == count else {
                throw ValidationError("provisioning failed: \(report.failed.prefix(3))")
            }
            // Every unit really has its identity: the last one connects with its bundle.
            let last = try AgentBundle.load(from: home.bundlesDirectory + "/unit-\(count - 1).json")
            let probe = BrokerIdentity(host: broker.host, port: broker.port, username: last.username ?? "", password: last.password ?? "")
            try await probe.withClient(clientID: last.machineId.rawValue) { _ in }
            await broker.stop()
            broker.removeFiles()
            let name = "provision.\(administration.rawValue)-\(count)"
            return [
                Measurement(benchmark: name, metric: "rate", value: (Double(count) / seconds).rounded(), unit: "units/s"),
                Measurement(benchmark: name, metric: "total", value: seconds, unit: "s"),
            ]
        } catch {
            await broker.stop()
            throw error
        }
    }
}
extension BrokerAdministration.Kind: ExpressibleByArgument {}
