import ArgumentParser
import FleetManager
import Foundation
import LocalServices
import TestSupport
import MessageSchema
import PaymentSDK
import UnitSimulator

/// The NATS cluster (broker-config/nats-cluster.sh) beside one mosquitto, in one run: per-unit
/// subscription setup with one and with three consumer replicas, the payment round trip on each
/// engine, and the pause a node's death (kill -9) causes in a steady payment stream.
struct ClusterScale: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cluster",
        abstract: "3-node NATS cluster beside mosquitto: subscription setup per unit (1 and 3 replicas), payment round trip, failover pause.")
    @Option(help: "Simulated units on each broker.") var units = 20
    @Option(help: "Payments for each round-trip measurement (sequential).") var payments = 100
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(units: units, payments: payments))
    }

    static func measure(units count: Int, payments: Int) async throws -> [Measurement] {
        var rows: [Measurement] = []
        let machines = (0..<count).map { MachineID(unchecked: String(format: "unit-%03d", $0)) }
        for replicas in [1, 3] {
            let cluster = try await LocalNATSCluster.start(consumerReplicas: replicas)
            do {
                let ports = cluster.mqttPorts
                let home = try await FleetSetup.initialize(.natsCluster(cluster, home: NSTemporaryDirectory() + "bench-cluster-\(UUID().uuidString)"))
                let (fleet, setup) = try await startUnits(home, machines: machines, host: cluster.host, ports: ports)
                let name = "cluster.nats-3-nodes"
                rows.append(Measurement(benchmark: name, metric: "subscription setup per unit, \(replicas) consumer replica\(replicas == 1 ? "" : "s")", value: setup * 1000 / Double(count), unit: "ms"))
                if replicas == 3 {
                    let client = try await paymentClient(home)
                    let trip = try await roundTrips(client, home: home, machines: machines, count: payments)
                    rows.append(Measurement(benchmark: name, metric: "payment round trip p50", value: trip.p50, unit: "ms"))
                    rows.append(Measurement(benchmark: name, metric: "payment round trip p99", value: trip.p99, unit: "ms"))
                    // A steady stream (10/s for 30 s); node 1, every client's first, killed at 5 s.
                    let currency = CurrencyCode(unchecked: home.settings.currency)
                    let stream = Task { try await FleetScale.payStream(client, machines: machines, currency: currency, rate: 10, for: .seconds(30)) }
                    try await Task.sleep(for: .seconds(5))
                    try await cluster.kill(node: 1)
                    let flowed = try await stream.value
                    let latencies = Distribution(flowed.latencies)
                    rows.append(Measurement(benchmark: name, metric: "node killed: payments captured", value: Double(flowed.credited), unit: "of \(flowed.sent)"))
                    rows.append(Measurement(benchmark: name, metric: "node killed: held as unknown", value: Double(flowed.noResult), unit: ""))
                    rows.append(Measurement(benchmark: name, metric: "node killed: longest payment (failover pause)", value: latencies.max / 1000, unit: "s"))
                    rows.append(Measurement(benchmark: name, metric: "node killed: payment p50", value: latencies.p50, unit: "ms"))
                    await client.close()
                }
                await fleet.stop()
                await cluster.stop()
            } catch {
                await cluster.stop()
                throw error
            }
        }

        // The same on one mosquitto (password file), for comparison.
        let broker = try await LocalMosquitto.start(template: "files")
        do {
            let home = try await FleetSetup.initialize(.passwordFile(broker, home: NSTemporaryDirectory() + "bench-cluster-mosquitto-\(UUID().uuidString)"))
            let (fleet, setup) = try await startUnits(home, machines: machines, host: broker.host, ports: [broker.port])
            let client = try await paymentClient(home)
            let trip = try await roundTrips(client, home: home, machines: machines, count: payments)
            let name = "cluster.mosquitto-1-node"
            rows.append(Measurement(benchmark: name, metric: "subscription setup per unit", value: setup * 1000 / Double(count), unit: "ms"))
            rows.append(Measurement(benchmark: name, metric: "payment round trip p50", value: trip.p50, unit: "ms"))
            rows.append(Measurement(benchmark: name, metric: "payment round trip p99", value: trip.p99, unit: "ms"))
            await client.close()
            await fleet.stop()
            await broker.stop()
            broker.removeFiles()
        } catch {
            await broker.stop()
            throw error
        }
        return rows
    }

    /// Provisions `machines` and starts them as simulated units; the seconds until all are
    /// online (connected and subscribed).
    static func startUnits(_ home: FleetHome, machines: [MachineID], host: String, ports: [Int]) async throws -> (UnitFleet, Double) {
        try await home.withProvisioner(purpose: "bench") { provisioner in
            for machine in machines { _ = try await provisioner.provision(machine) }
        }
        let bundles = try machines.map { try AgentBundle.load(from: home.bundlesDirectory + "/\($0.rawValue).json") }
        var options = UnitFleet.Options(host: host, port: ports[0])
        options.alternatePorts = Array(ports.dropFirst())
        options.realTrainTime = false
        options.maximumBackoff = 2
        let fleet = UnitFleet(options: options)
        let start = ContinuousClock.now
        try await fleet.start(bundles)
        try await fleet.waitUntil("every unit online", timeout: .seconds(600)) { $0.online == machines.count }
        return (fleet, (ContinuousClock.now - start).secondsDouble)
    }

    static func paymentClient(_ home: FleetHome) async throws -> PaymentClient {
        let (kid, key) = try home.signingKey(.payment)
        return try await PaymentClient.connect(home.settings.paymentServer, topics: home.topics, kid: kid, key: key)
    }

    /// `count` payments one after another to the units in turn: publish → result, ms.
    static func roundTrips(_ client: PaymentClient, home: FleetHome, machines: [MachineID], count: Int) async throws -> Distribution {
        let currency = CurrencyCode(unchecked: home.settings.currency)
        var samples: [Double] = []
        for i in 0..<count {
            let start = ContinuousClock.now
            let outcome = try await client.pay(machines[i % machines.count], amount: 100, currency: currency, userId: "bench-user")
            guard outcome.action == .capture else { throw ValidationError("payment \(i) was not captured: \(outcome.result.map { "\($0.status)" } ?? "no result")") }
            samples.append((ContinuousClock.now - start).secondsDouble * 1000)
        }
        return Distribution(samples)
    }
}
