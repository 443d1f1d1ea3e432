import Foundation

/// A 3-node nats-server cluster (JetStream MQTT) on loopback, started by
/// `broker-config/nats-cluster.sh`, for tests, benchmarks and the demo. Always `stop()` it.
public final class LocalNATSCluster: Sendable {
    /// The cluster's folder: nN.conf, nN.pid, nN.log, auth.conf, data/.
    public let directory: String
    public let basePort: Int
    public let host = "127.0.0.1"

    /// The MQTT port of node `n` (1...3).
    public func mqttPort(_ n: Int) -> Int { basePort + 20 + n }
    /// Every node's MQTT port, node 1 first.
    public var mqttPorts: [Int] { (1...3).map(mqttPort) }
    /// Every node's pid file.
    public var pidFiles: [String] { (1...3).map { directory + "/n\($0).pid" } }
    /// The users file every node includes.
    public var authPath: String { directory + "/auth.conf" }

    private init(directory: String, basePort: Int) {
        self.directory = directory
        self.basePort = basePort
    }

    static var script: String { LocalMosquitto.brokerConfigDirectory + "/nats-cluster.sh" }

    /// Whether nats-server is installed (`apt-get install nats-server`).
    public static var isAvailable: Bool {
        ["/usr/bin/nats-server", "/usr/sbin/nats-server", "/usr/local/bin/nats-server"].contains { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Starts the three nodes on 12 free loopback ports and waits until each is healthy.
    public static func start(consumerReplicas: Int = 3) async throws -> LocalNATSCluster {
        var lastError: (any Error)?
        for _ in 0..<5 {
            let directory = NSTemporaryDirectory() + "pulsebridge-nats-\(UUID().uuidString.prefix(8))"
            let base = try freeBase()
            let cluster = LocalNATSCluster(directory: directory, basePort: base)
            do {
                try await cluster.run(["start", directory, String(base)], environment: ["PB_NATS_CONSUMER_REPLICAS": String(consumerReplicas)])
                return cluster
            } catch {
                lastError = error
                try? await cluster.run(["stop", directory])
                try? FileManager.default.removeItem(atPath: directory)
            }
        }
        throw lastError!
    }

    /// A base port B where B+1...B+33 (the 12 ports used) are free now.
    public static func freeBase() throws -> Int {
        for _ in 0..<50 {
            let base = Int.random(in: 20_000...55_000)
            var ports: [Int] = []
            for node in 1...3 {
                for offset in [0, 10, 20, 30] { ports.append(base + offset + node) }
            }
            if ports.allSatisfy({ !LoopbackPort.accepts($0) && LoopbackPort.canBind($0) }) { return base }
        }
        throw LocalMosquittoError(description: "no free block of loopback ports for a NATS cluster")
    }

    /// Runs `body` with a fresh cluster and stops it afterwards, also when it throws.
    public static func with<T: Sendable>(_ body: (LocalNATSCluster) async throws -> T) async throws -> T {
        let cluster = try await start()
        do {
            let result = try await body(cluster)
            await cluster.stop()
            return result
        } catch {
            await cluster.stop()
            throw error
        }
    }

    /// kill -9 of node `n`.
    public func kill(node n: Int) async throws { try await run(["kill", directory, String(n)]) }

    /// Starts node `n` again (its JetStream data kept) and waits until it is healthy.
    public func restart(node n: Int) async throws { try await run(["restart", directory, String(n)]) }

    /// Stops every node and removes the folder.
    public func stop() async {
        try? await run(["stop", directory])
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The logs of every node, for a failing test's message.
    public func logs(lines: Int = 30) -> String {
        (1...3).map { "== n\($0)\n" + tail(of: directory + "/n\($0).log", lines: lines) }.joined(separator: "\n")
    }

    private func run(_ arguments: [String], environment extra: [String: String] = [:]) async throws {
        let log = NSTemporaryDirectory() + "nats-cluster-\(UUID().uuidString).log"
        defer { try? FileManager.default.removeItem(atPath: log) }
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in extra { environment[key] = value }
        let child = try ChildProcess.spawn("bash", [Self.script] + arguments, environment: environment, outputPath: log)
        let status = await child.waitForExit()
        guard status == .exited(0) else {
            throw LocalMosquittoError(description: "nats-cluster.sh \(arguments.joined(separator: " ")): \(status)\n\(child.output())")
        }
    }
}
