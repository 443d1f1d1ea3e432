import Foundation
import Locking
import MessageSchema
import NIOCore
import NIOPosix

#if canImport(Glibc)
    import Glibc
#endif

/// Thousands of simulated units in one process, each a real MQTT 3.1.1 session with its own
/// provisioned credentials (its bundle), so that the broker, provisioning and `serve` meet a
/// real fleet's traffic: connects with a will, subscriptions, `online`, heartbeats,
/// configuration reports, payments decided by the agent's `DecisionCore` and answered after the
/// pulse train's real duration, reconnection with jittered backoff. No relay lines: the
/// simulator is for the broker and the manager, not for pulse timing.
public final class UnitFleet: Sendable {
    public struct Options: Sendable {
        public var host: String
        public var port: Int
        /// A cluster's other nodes on the same host: a unit moves to the next one when a
        /// connection cannot be made or is lost.
        public var alternatePorts: [Int] = []
        /// Seconds between heartbeats until a configuration says otherwise.
        public var heartbeatSeconds = 60
        public var keepAliveSeconds = 60
        /// New connections per second while starting (a fleet powering up is not instant).
        public var connectRate = 2_000
        /// Answer a payment after its pulse train's duration (true) or at once.
        public var realTrainTime = true
        /// The largest reconnection backoff, seconds.
        public var maximumBackoff = 10.0
        public var firmware = "sim-1.0.0"
        /// Event-loop threads.
        public var threads = 2

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }

    /// What the fleet has done so far.
    public struct Stats: Sendable, Hashable, Codable {
        /// Sessions connected now (CONNACK accepted).
        public var connected = 0
        /// Sessions subscribed and `online` now.
        public var online = 0
        /// Units that have connected at least once.
        public var everConnected = 0
        /// Connections accepted so far (CONNACK 0), reconnections included.
        public var connacks = 0
        public var failedConnects = 0
        public var refusedConnects = 0
        public var refusedSubscriptions = 0
        public var heartbeats = 0
        public var configsApplied = 0
        public var paymentsReceived = 0
        public var resultsSent = 0
    }

    public let options: Options
    let group: MultiThreadedEventLoopGroup
    private let units: Locked<[SimulatedUnit]> = Locked([])
    private let stats = Locked(Stats())
    private let seen = Locked(Set<MachineID>())

    public init(options: Options) {
        self.options = options
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: options.threads)
    }

    /// Raises this process's open-file limit to its hard limit: each unit holds a socket.
    public static func raiseFileLimit() {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return }
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// Starts every bundle's unit, `connectRate` per second; returns once all have been started
    /// (not connected: see `waitUntil`).
    public func start(_ bundles: [AgentBundle]) async throws {
        var made: [SimulatedUnit] = []
        for bundle in bundles {
            made.append(try SimulatedUnit(bundle: bundle, loop: group.next(), fleet: self))
        }
        units.withLock { $0 += made }
        let batch = max(1, options.connectRate / 20)
        var index = 0
        while index < made.count {
            let started = ContinuousClock.now
            for unit in made[index..<min(index + batch, made.count)] {
                unit.loop.execute { unit.connect() }
            }
            index += batch
            try await Task.sleep(until: started + .milliseconds(50), clock: .continuous)
        }
    }

    public var current: Stats { stats.withLock { $0 } }

    /// Polls the counters (every 20 ms) until `condition` holds; throws after `timeout` with
    /// what the fleet reached.
    public func waitUntil(_ what: String, timeout: Duration, _ condition: (Stats) -> Bool) async throws {
        let deadline = ContinuousClock.now + timeout
        while !condition(current) {
            guard ContinuousClock.now < deadline else {
                throw SimulatorError("\(what) not reached within \(timeout): \(current)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    /// Stops every unit: `graceful` sends DISCONNECT; otherwise the sockets just close, as
    /// units losing power (the broker publishes their wills).
    public func stop(graceful: Bool = true) async {
        let all = units.withLock { $0 }
        await withTaskGroup(of: Void.self) { group in
            for unit in all {
                group.addTask { try? await unit.loop.submit { unit.stop(graceful: graceful) }.get() }
            }
        }
        try? await group.shutdownGracefully()
        // Each unit refers to its fleet: let them go, or both outlive the run.
        units.withLock { $0 = [] }
    }

    func count(_ field: WritableKeyPath<Stats, Int>, _ delta: Int = 1) {
        stats.withLock { $0[keyPath: field] += delta }
    }

    func firstConnect(_ machine: MachineID) {
        if seen.withLock({ $0.insert(machine).inserted }) { count(\.everConnected) }
    }

    static func nowMs() -> Int { Int(Date().timeIntervalSince1970 * 1000) }
}

public struct SimulatorError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}
