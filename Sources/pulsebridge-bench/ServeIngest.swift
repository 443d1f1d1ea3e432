import ArgumentParser
import FleetManager
import Foundation
import LocalServices
@_spi(Testing) import MQTT
import MessageSchema
import PaymentSDK

/// `fleet-manager serve` (the release binary, as a child process) ingesting heartbeats from
/// many simulated units; its memory; and how fast a dead unit shows offline.
struct ServeIngest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve", abstract: "serve: heartbeats/s sustained for 1,000 and 5,000 units, RSS, death → offline.")
    @Option(help: "Fleet sizes to simulate.")
    var units: [Int] = [1000, 5000]
    @OptionGroup var output: OutputOptions

    func run() async throws {
        var results: [Measurement] = []
        for count in units { results += try await Self.measure(units: count) }
        try output.print(results)
    }

    static func measure(units count: Int, rounds: Int = 10, connections: Int = 20) async throws -> [Measurement] {
        let broker = try await LocalMosquitto.start()
        let dir = NSTemporaryDirectory() + "bench-serve-\(UUID().uuidString)"
        var serve: ChildProcess?
        do {
            let home = try simulatedFleetHome(at: dir, broker: broker)
            let machines = (0..<count).map { MachineID(unchecked: "sim-\($0)") }
            for machine in machines { try home.registry.upsertMachine(machine) }
            serve = try ChildProcess.spawn(productsDirectory() + "/fleet-manager", ["serve", "--home", dir], outputPath: dir + "/serve.log")

            var publishers: [MQTTClient] = []
            for i in 0..<connections {
                let client = try MQTTClient(MQTTConfiguration(host: broker.host, port: broker.port, clientID: "sim-publisher-\(i)"))
                try await client.connect()
                publishers.append(client)
            }
            // Wait until serve is subscribed: a first heartbeat, sent until it is recorded.
            let ready = ContinuousClock.now + .seconds(30)
            while try markedCount(home, marker: 1) == 0 {
                guard ContinuousClock.now < ready else { throw ValidationError("serve never recorded a heartbeat:\n\(serve!.output())") }
                try await publish(machines.prefix(1), round: 0, marker: 1, publishers)
                try await Task.sleep(for: .milliseconds(100))
            }

            // One heartbeat per unit per second (heartbeatS = 1), `rounds` seconds.
            let start = ContinuousClock.now
            for round in 1...rounds {
                let roundStart = ContinuousClock.now
                try await publish(machines[...], round: round, marker: round == rounds ? 777 : 0, publishers)
                try await Task.sleep(until: roundStart + .seconds(1), clock: .continuous)
            }
            let published = ContinuousClock.now
            try await waitUntil(timeout: .seconds(60)) { try markedCount(home, marker: 777) == count }
            let caughtUp = ContinuousClock.now
            let seconds = Double((caughtUp - start).components.attoseconds) / 1e18 + Double((caughtUp - start).components.seconds)
            let lag = (caughtUp - published)
            let rss = rssKiB(serve!.pid)

            // Flat out: every unit, as fast as the publishers go, 5 rounds.
            let flatStart = ContinuousClock.now
            for round in 1...5 { try await publish(machines[...], round: rounds + round, marker: round == 5 ? 888 : 0, publishers) }
            try await waitUntil(timeout: .seconds(120)) { try markedCount(home, marker: 888) == count }
            let flat = ContinuousClock.now - flatStart
            let flatSeconds = Double(flat.components.seconds) + Double(flat.components.attoseconds) / 1e18

            // Death → offline: a unit with a will drops its connection without DISCONNECT.
            let deathToOffline = try await measureDeath(broker: broker, home: home)
            for client in publishers { await client.close() }
            await serve?.terminate(grace: .seconds(10))
            await broker.stop()
            let name = "serve.\(count)-units"
            return [
                Measurement(benchmark: name, metric: "offered", value: Double(count), unit: "heartbeats/s"),
                Measurement(benchmark: name, metric: "sustained", value: (Double(count * rounds) / seconds).rounded(), unit: "heartbeats/s"),
                Measurement(benchmark: name, metric: "lag after last", value: Double(lag.components.seconds) * 1000 + Double(lag.components.attoseconds) / 1e15, unit: "ms"),
                Measurement(benchmark: name, metric: "flat-out ingest", value: (Double(count * 5) / flatSeconds).rounded(), unit: "heartbeats/s"),
                Measurement(benchmark: name, metric: "serve RSS", value: Double(rss) / 1024, unit: "MiB"),
                Measurement(benchmark: name, metric: "death → offline", value: deathToOffline, unit: "ms"),
            ]
        } catch {
            await serve?.terminate(grace: .seconds(5))
            await broker.stop()
            throw error
        }
    }

    /// A fleet home for simulated units on `broker` (anonymous: no dynamic security).
    static func simulatedFleetHome(at dir: String, broker: LocalMosquitto) throws -> FleetHome {
        let identity = BrokerIdentity(host: broker.host, port: broker.port, username: "fleet-manager", password: "x")
        return try FleetHome.create(
            at: dir,
            settings: FleetSettings(
                topicRoot: "fleet", deviceBrokerUrl: "mqtt://127.0.0.1:\(broker.port)", deviceCAFile: nil, manager: identity,
                paymentServer: identity, paymentUrlTemplate: "https://pay.example.com/m/{machineId}", currency: "JPY"))
    }

    static func publish(_ machines: ArraySlice<MachineID>, round: Int, marker: Int, _ publishers: [MQTTClient]) async throws {
        let now = Int(Date().timeIntervalSince1970 * 1000)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (index, publisher) in publishers.enumerated() {
                group.addTask {
                    for (offset, machine) in machines.enumerated() where offset % publishers.count == index {
                        let heartbeat = Heartbeat(
                            machineId: machine, bootId: "sim", seq: round, at: now, uptimeS: round, firmware: "sim", configVersion: 1,
                            inhibited: false, relay: .ok, outboxDepth: marker, counters: PaymentCounters())
                        try await publisher.publish(
                            topic: "fleet/\(machine.rawValue)/heartbeat", payload: WireCoding.encode(heartbeat), qos: .atMostOnce)
                    }
                }
            }
            try await group.waitForAll()
        }
    }

    static func markedCount(_ home: FleetHome, marker: Int) throws -> Int {
        try home.registry.unitsReportingOutboxDepth(marker)
    }

    static func waitUntil(timeout: Duration, _ condition: () throws -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while try !condition() {
            guard ContinuousClock.now < deadline else { throw ValidationError("serve did not catch up within \(timeout)") }
            // The check reads the registry serve writes: not too often, it competes for the cores.
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    static func measureDeath(broker: LocalMosquitto, home: FleetHome) async throws -> Double {
        let machine: MachineID = "sim-0"
        let online = StatusMessage(machineId: machine, state: .online, bootId: "death", session: 1, firmware: "sim", configVersion: 1, at: 0)
        var dead = online
        dead.state = .offline
        let offline = dead
        var configuration = MQTTConfiguration(host: broker.host, port: broker.port, clientID: "dying-unit")
        configuration.will = { _ in MQTTOutgoingMessage(topic: "fleet/sim-0/status", payload: WireCoding.encode(offline), retain: true) }
        let unit = try MQTTClient(configuration)
        try await unit.connect()
        try await unit.publish(topic: "fleet/sim-0/status", payload: WireCoding.encode(online), retain: true)
        try await waitUntil(timeout: .seconds(10)) { try home.registry.unitState(machine) == "online" }
        let died = ContinuousClock.now
        unit.dropConnectionWithoutDisconnect()
        await unit.close()
        try await waitUntil(timeout: .seconds(10)) { try home.registry.unitState(machine) == "offline" }
        let elapsed = ContinuousClock.now - died
        return Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15
    }

    static func rssKiB(_ pid: pid_t) -> Int { AgentLatency.rssKiB(pid) }
}
