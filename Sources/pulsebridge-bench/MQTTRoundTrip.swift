import RelayOutput
import ArgumentParser
import Foundation
import LocalServices
import MQTT

/// QoS 1 round trip on loopback through a real mosquitto: publish, then wait for both the
/// PUBACK and the delivery to a subscriber; beside the same loop written in C on libmosquitto.
struct MQTTRoundTrip: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mqtt", abstract: "QoS 1 round trip, Swift client vs the C floor (median of 3 alternating rounds).")
    @Option(help: "Messages to time (after 500 warm-up messages).")
    var count = 10_000
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(count: count))
    }

    static func measure(count: Int) async throws -> [Measurement] {
        let broker = try await LocalMosquitto.start()
        defer { broker.removeFiles() }
        do {
            // Alternate the two, three times each, and keep the round with the median p99 of
            // each: a shared 2-core machine is noisy and neither side should get the quiet minute.
            var swiftRounds: [Distribution] = []
            var floorRounds: [[String: Double]] = []
            for _ in 0..<3 {
                swiftRounds.append(try await swiftRoundTrips(port: broker.port, count: count))
                floorRounds.append(try await cFloor(port: broker.port, count: count))
            }
            let swift = swiftRounds.sorted { $0.p99 < $1.p99 }[1]
            let floor = floorRounds.sorted { $0["p99Us"]! < $1["p99Us"]! }[1]
            await broker.stop()
            return [
                Measurement(benchmark: "mqtt.qos1-rtt.swift", metric: "p50", value: swift.p50, unit: "µs"),
                Measurement(benchmark: "mqtt.qos1-rtt.swift", metric: "p99", value: swift.p99, unit: "µs"),
                Measurement(benchmark: "mqtt.qos1-rtt.swift", metric: "max", value: swift.max, unit: "µs"),
                Measurement(benchmark: "mqtt.qos1-rtt.c-floor", metric: "p50", value: floor["p50Us"]!, unit: "µs"),
                Measurement(benchmark: "mqtt.qos1-rtt.c-floor", metric: "p99", value: floor["p99Us"]!, unit: "µs"),
                Measurement(benchmark: "mqtt.qos1-rtt.c-floor", metric: "max", value: floor["maxUs"]!, unit: "µs"),
                Measurement(benchmark: "mqtt.qos1-rtt", metric: "p99 swift/C", value: swift.p99 / floor["p99Us"]!, unit: "×"),
            ]
        } catch {
            await broker.stop()
            throw error
        }
    }

    static func swiftRoundTrips(port: Int, count: Int) async throws -> Distribution {
        let subscriber = try MQTTClient(MQTTConfiguration(port: port, clientID: "bench-sub"))
        let publisher = try MQTTClient(MQTTConfiguration(port: port, clientID: "bench-pub"))
        try await subscriber.connect()
        try await publisher.connect()
        try await subscriber.subscribe("bench/swift", qos: .atLeastOnce)
        let payload = Data(#"{"type":"payment.completed","paymentId":"p-bench","amount":400}"#.utf8)
        var incoming = subscriber.messages.makeAsyncIterator()
        var samples: [Double] = []
        samples.reserveCapacity(count)
        for i in 0..<(500 + count) {
            let t0 = monotonicNanoseconds()
            try await publisher.publish(topic: "bench/swift", payload: payload, qos: .atLeastOnce)
            guard await incoming.next() != nil else { throw MQTTError.closed }
            if i >= 500 { samples.append(Double(monotonicNanoseconds() - t0) / 1000) }
        }
        await subscriber.close()
        await publisher.close()
        return Distribution(samples)
    }

    static func cFloor(port: Int, count: Int) async throws -> [String: Double] {
        let outputPath = NSTemporaryDirectory() + "mqtt-floor-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: outputPath) }
        let child = try ChildProcess.spawn(
            productsDirectory() + "/mqtt-floor", [String(port), String(count)], outputPath: outputPath)
        let status = await child.waitForExit()
        guard status == .exited(0),
            let json = try JSONSerialization.jsonObject(with: Data(child.output().utf8)) as? [String: Double]
        else {
            throw ValidationError("mqtt-floor \(status): \(child.output())")
        }
        return json
    }
}
