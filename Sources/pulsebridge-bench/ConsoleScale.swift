import ArgumentParser
import FleetManager
import Foundation
import LocalServices
import Locking
import MQTT
import MessageSchema
import PaymentSDK

#if canImport(Glibc)
    import Glibc
#endif

/// The operator console of `fleet-manager serve` (the release binary) with a fleet of simulated
/// units sending heartbeats: the fleet page's time to first byte, `/metrics` scrape time, the
/// delay from a heartbeat to the browsers watching the unit (server-sent events), and serve's
/// CPU and memory meanwhile. HTTP timings are curl's own (`time_starttransfer`,
/// `time_total`); the event streams are read by plain sockets here.
struct ConsoleScale: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "serve's console with 10,000 units: fleet page TTFB/p99, SSE fan-out delay, /metrics, CPU and memory.")
    @Option(help: "Simulated units.") var units = 10_000
    @Option(help: "Seconds between two heartbeats of a unit (the load is units/period heartbeats/s).") var period = 10
    @Option(help: "Browsers watching the fleet page (event streams).") var watchers = 20
    @Option(help: "Requests per HTTP measurement.") var requests = 40
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try await Self.measure(units: units, period: period, watchers: watchers, requests: requests))
    }

    static func measure(units count: Int, period: Int, watchers: Int, requests: Int) async throws -> [Measurement] {
        let broker = try await LocalMosquitto.start()
        let dir = NSTemporaryDirectory() + "bench-console-\(UUID().uuidString)"
        var serve: ChildProcess?
        var load: Task<Void, any Error>?
        var publishers: [MQTTClient] = []
        do {
            let home = try ServeIngest.simulatedFleetHome(at: dir, broker: broker)
            let machines = (0..<count).map { MachineID(unchecked: String(format: "sim-%05d", $0)) }
            for machine in machines { try home.registry.upsertMachine(machine) }
            try home.registry.addOperator("bench", role: .viewer, password: "bench-password-123")
            let account = try home.registry.authenticate("bench", password: "bench-password-123")!
            let (session, _) = try home.registry.openSession(account, origin: "bench")
            let tokenFile = dir + "/metrics.token"
            _ = FileManager.default.createFile(atPath: tokenFile, contents: Data("bench-metrics-token".utf8), attributes: [.posixPermissions: 0o600])
            let port = try LoopbackPort.free()
            let base = "http://127.0.0.1:\(port)"
            serve = try ChildProcess.spawn(
                productsDirectory() + "/fleet-manager",
                ["serve", "--home", dir, "--http", "127.0.0.1:\(port)", "--metrics-token-file", tokenFile], outputPath: dir + "/serve.log")
            let up = ContinuousClock.now + .seconds(30)
            while (try? curl(["-o", "/dev/null", base + "/login"])) == nil {
                guard ContinuousClock.now < up else { throw ValidationError("serve's console never answered:\n\(serve!.output())") }
                try await Task.sleep(for: .milliseconds(100))
            }

            // Every unit once, until serve has them all; then the steady load.
            for i in 0..<8 {
                let client = try MQTTClient(MQTTConfiguration(host: broker.host, port: broker.port, clientID: "sim-publisher-\(i)"))
                try await client.connect()
                publishers.append(client)
            }
            let clients = publishers
            try await ServeIngest.publish(machines[...], round: 1, marker: 5, clients)
            try await ServeIngest.waitUntil(timeout: .seconds(120)) { try ServeIngest.markedCount(home, marker: 5) == count }
            // The probed units (every fifth of the watched page) get only the probes: a load
            // heartbeat right after a probe would hide it.
            let loaded = machines.enumerated().filter { $0.offset >= 100 || $0.offset % 5 != 0 }.map(\.element)
            load = Task {
                var round = 2
                while !Task.isCancelled {
                    let started = ContinuousClock.now
                    try await ServeIngest.publish(loaded[...], round: round, marker: 0, clients)
                    round += 1
                    try await Task.sleep(until: started + .seconds(period), clock: .continuous)
                }
            }
            try await Task.sleep(for: .seconds(2))
            let cpuStart = AgentLatency.cpuTicks(serve!.pid)
            let wallStart = ContinuousClock.now
            let cookie = "Cookie: pb_console=\(session)"

            // The fleet page: pages through the fleet, and a search.
            var firstByte: [Double] = []
            var total: [Double] = []
            for i in 0..<requests {
                let path = i % 4 == 3 ? "/?q=sim-0\(i % 10)" : "/?page=\(1 + (i * 7) % max(1, count / 100))"
                let (ttfb, all) = try curl(["-o", "/dev/null", "-H", cookie, base + path])
                firstByte.append(ttfb * 1000)
                total.append(all * 1000)
            }
            // /metrics.
            var scrape: [Double] = []
            for _ in 0..<max(5, requests / 2) {
                scrape.append(try curl(["-o", "/dev/null", "-H", "Authorization: Bearer bench-metrics-token", base + "/metrics"]).1 * 1000)
            }

            // Fan-out: `watchers` browsers on the first page; probes on units of that page.
            let ids = machines.prefix(100).map(\.rawValue).joined(separator: ",")
            let streams = try (0..<watchers).map { _ in try EventStream(port: port, path: "/events?ids=\(ids)", cookie: cookie) }
            try await Task.sleep(for: .seconds(2))  // the streams' first snapshot: not a probe
            var delays: [Double] = []
            var missed = 0
            for probe in 0..<20 {
                let machine = machines[probe * 5 % min(100, count)]
                let marker = "probe-\(probe)-\(UInt32.random(in: 0...UInt32.max))"
                let heartbeat = Heartbeat(
                    machineId: machine, bootId: "sim", seq: 10_000 + probe, at: Int(Date().timeIntervalSince1970 * 1000), uptimeS: 1, firmware: marker,
                    configVersion: 1, inhibited: false, relay: .ok, outboxDepth: 0, counters: PaymentCounters())
                let sent = ContinuousClock.now
                try await clients[0].publish(topic: "fleet/\(machine.rawValue)/heartbeat", payload: WireCoding.encode(heartbeat), qos: .atLeastOnce)
                let deadline = sent + .seconds(15)
                while streams.contains(where: { $0.arrival(of: marker) == nil }), ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(5))
                }
                for stream in streams {
                    // Not seen in 15 s: counted, and as 15 s in the percentiles.
                    guard let arrived = stream.arrival(of: marker) else {
                        missed += 1
                        delays.append(15_000)
                        continue
                    }
                    delays.append(milliseconds(arrived - sent))
                }
            }
            for stream in streams { stream.close() }
            let cpu = Double(AgentLatency.cpuTicks(serve!.pid) - cpuStart) / Double(sysconf(Int32(_SC_CLK_TCK)))
            let wall = milliseconds(ContinuousClock.now - wallStart) / 1000
            let rss = AgentLatency.rssKiB(serve!.pid)
            load?.cancel()
            _ = try? await load?.value
            for client in publishers { await client.close() }
            await serve?.terminate(grace: .seconds(10))
            await broker.stop()

            let name = "console.\(count)-units"
            let page = Distribution(firstByte)
            let pageTotal = Distribution(total)
            let metrics = Distribution(scrape)
            let fanout = Distribution(delays)
            return [
                Measurement(benchmark: name, metric: "heartbeat load", value: Double(loaded.count / period), unit: "heartbeats/s"),
                Measurement(benchmark: name, metric: "fleet page TTFB p50", value: page.p50, unit: "ms"),
                Measurement(benchmark: name, metric: "fleet page TTFB p99", value: page.p99, unit: "ms"),
                Measurement(benchmark: name, metric: "fleet page total p99", value: pageTotal.p99, unit: "ms"),
                Measurement(benchmark: name, metric: "/metrics scrape p50", value: metrics.p50, unit: "ms"),
                Measurement(benchmark: name, metric: "/metrics scrape p99", value: metrics.p99, unit: "ms"),
                Measurement(benchmark: name, metric: "heartbeat → \(watchers) browsers p50", value: fanout.p50, unit: "ms"),
                Measurement(benchmark: name, metric: "heartbeat → \(watchers) browsers p99", value: fanout.p99, unit: "ms"),
                Measurement(benchmark: name, metric: "heartbeats no browser saw in 15 s", value: Double(missed), unit: "of \(delays.count)"),
                Measurement(benchmark: name, metric: "serve CPU", value: (cpu / wall * 100).rounded(), unit: "% of a core"),
                Measurement(benchmark: name, metric: "serve RSS", value: (Double(rss) / 1024).rounded(), unit: "MiB"),
            ]
        } catch {
            load?.cancel()
            for client in publishers { await client.close() }
            await serve?.terminate(grace: .seconds(5))
            await broker.stop()
            throw error
        }
    }

    static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    /// Runs curl; its time to first byte and total time, in seconds. Throws unless HTTP 200.
    static func curl(_ arguments: [String]) throws -> (Double, Double) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = ["-s", "-w", "%{http_code} %{time_starttransfer} %{time_total}"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let fields = String(decoding: data, as: UTF8.self).split(separator: " ")
        guard fields.count == 3, fields[0] == "200", let first = Double(fields[1]), let all = Double(fields[2]) else {
            throw ValidationError("curl \(arguments.last ?? ""): \(String(decoding: data, as: UTF8.self))")
        }
        return (first, all)
    }
}

/// One browser's event stream, read on its own thread; when each marker first arrived.
final class EventStream: @unchecked Sendable {
    let fd: Int32
    let arrivals = Locked<[String: ContinuousClock.Instant]>([:])
    let thread: Thread

    init(port: Int, path: String, cookie: String) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ValidationError("socket: \(errno)") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            Glibc.close(fd)
            throw ValidationError("connect: \(errno)")
        }
        let request = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\(cookie)\r\nAccept: text/event-stream\r\n\r\n"
        _ = request.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
        self.fd = fd
        let arrivals = self.arrivals
        thread = Thread {
            var pending = ""
            var buffer = [UInt8](repeating: 0, count: 65_536)
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { return }
                let now = ContinuousClock.now
                pending += String(decoding: buffer[0..<n], as: UTF8.self)
                // Markers look like "probe-N-M"; note each the first time.
                while let range = pending.range(of: "probe-") {
                    let rest = pending[range.lowerBound...]
                    let marker = String(rest.prefix { $0 != "\"" && $0 != "\n" })
                    guard marker.count < rest.count else { break }  // split across reads
                    arrivals.withLock { if $0[marker] == nil { $0[marker] = now } }
                    pending = String(pending[range.upperBound...])
                }
                if pending.count > 8192 { pending = String(pending.suffix(64)) }
            }
        }
        thread.start()
    }

    func arrival(of marker: String) -> ContinuousClock.Instant? { arrivals.withLock { $0[marker] } }

    func close() { shutdown(fd, Int32(SHUT_RDWR)) }
}
