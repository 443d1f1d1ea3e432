import EdgeAgent
import Foundation
import LocalServices
import MQTT
import MessageSchema
import RelayOutput

/// The test's own broker, keys and payment server, and the units it starts as real
/// `edge-agent` processes with simulated GPIO.
public final class FleetHarness: Sendable {
    public let broker: LocalMosquitto
    public let paymentKey: Ed25519PrivateKey
    public let fleetKey: Ed25519PrivateKey
    public let paymentKid: KeyID = "pay-test"
    public let fleetKid: KeyID = "fleet-test"
    /// Acts as payment server and observer: subscribed to every result, status, heartbeat
    /// and reported topic.
    public let server: MQTTClient
    public let inbox: Inbox
    public let topics = TopicScheme.default
    public let directory: String

    private init(broker: LocalMosquitto, server: MQTTClient, inbox: Inbox, directory: String) throws {
        self.broker = broker
        self.server = server
        self.inbox = inbox
        self.directory = directory
        self.paymentKey = try Ed25519PrivateKey()
        self.fleetKey = try Ed25519PrivateKey()
    }

    public static func start() async throws -> FleetHarness {
        let broker = try await LocalMosquitto.start()
        var configuration = MQTTConfiguration(host: broker.host, port: broker.port, clientID: "test-server-\(UUID().uuidString.prefix(8).lowercased())")
        configuration.cleanStart = true
        let server = try MQTTClient(configuration)
        try await server.connect()
        let inbox = Inbox(server)
        try await server.subscribe([
            MQTTSubscription("fleet/+/payment/result"), MQTTSubscription("fleet/+/status"),
            MQTTSubscription("fleet/+/heartbeat", qos: .atMostOnce), MQTTSubscription("fleet/+/config/reported"),
            MQTTSubscription("fleet/+/firmware/reported"),
        ])
        let directory = NSTemporaryDirectory() + "pb-fleet-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return try FleetHarness(broker: broker, server: server, inbox: inbox, directory: directory)
    }

    /// Runs `body` with a fresh harness and stops every agent and the broker afterwards.
    public static func with(_ body: (FleetHarness) async throws -> Void) async throws {
        let harness = try await start()
        do {
            try await body(harness)
        } catch {
            await harness.stop()
            throw error
        }
        await harness.stop()
    }

    private let units = SendableBox<[AgentUnit]>([])

    public func stop() async {
        for unit in units.value { await unit.kill() }
        await server.close()
        await broker.stop()
    }

    public var trust: [TrustEntry] {
        [
            TrustEntry(kid: paymentKid, purpose: .payment, publicKey: paymentKey.publicKey.base64),
            TrustEntry(kid: fleetKid, purpose: .fleet, publicKey: fleetKey.publicKey.base64),
        ]
    }

    public static let coin = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 20, gapMs: 20)
    public static let bill = OutputConfig(channel: "bill", chip: "gpiochip0", line: 27, valuePerPulse: 1000, pulseMs: 30, gapMs: 30)
    public static let inhibit = InhibitConfig(chip: "gpiochip0", line: 22, activeLow: true)

    public func config(
        _ machine: MachineID, version: Int = 1, outputs: [OutputConfig] = [coin, bill], maxAmount: Int = 5000,
        heartbeatS: Int = 1, postVendDelayMs: Int = 0, trust: [TrustEntry]? = nil
    ) -> MachineConfig {
        MachineConfig(
            machineId: machine, version: version, issuedAt: Self.nowMs(), currency: "JPY", maxAmount: maxAmount,
            heartbeatS: heartbeatS, postVendDelayMs: postVendDelayMs, outputs: outputs, inhibit: Self.inhibit, trust: trust)
    }

    /// A configuration signed by the fleet key (or another key, to test refusals).
    public func signed(_ config: MachineConfig, kid: KeyID? = nil, key: Ed25519PrivateKey? = nil) -> Data {
        SignedEnvelope.sign(config, kid: kid ?? fleetKid, key: key ?? fleetKey).encoded()
    }

    /// Writes a unit's bundle (with an initial configuration unless nil) and returns the unit,
    /// not started yet.
    public func unit(_ machine: MachineID, initialConfig: MachineConfig? = nil, configured: Bool = true) throws -> AgentUnit {
        let dir = directory + "/" + machine.rawValue
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let initial = configured ? (initialConfig ?? config(machine)) : nil
        let bundle = AgentBundle(
            machineId: machine, brokerUrl: "mqtt://\(broker.host):\(broker.port)", topicRoot: "fleet", trust: trust,
            initialConfig: initial.map { String(decoding: signed($0), as: UTF8.self) })
        let bundlePath = dir + "/bundle.json"
        try WireCoding.encode(bundle).write(to: URL(fileURLWithPath: bundlePath))
        let unit = AgentUnit(machine: machine, directory: dir, bundlePath: bundlePath)
        units.value.append(unit)
        return unit
    }

    public static func nowMs() -> Int { Int(Date().timeIntervalSince1970 * 1000) }

    /// A signed `payment.completed`, as a payment server publishes it.
    public func payment(
        _ machine: MachineID, amount: Int, id: PaymentID? = nil, currency: CurrencyCode = "JPY",
        issuedAt: Int? = nil, ttlMs: Int = 30_000, userId: UserID = "u-test"
    ) -> PaymentCompleted {
        let issued = issuedAt ?? Self.nowMs()
        return PaymentCompleted(
            paymentId: id ?? PaymentID(rawValue: "p-\(UUID().uuidString.lowercased())")!, machineId: machine, amount: amount,
            currency: currency, userId: userId, issuedAt: issued, expiresAt: issued + ttlMs)
    }

    /// Publishes a payment on the machine's topic (signed with the payment key unless told),
    /// with the MQTT message expiry PROTOCOL.md asks for unless `withExpiry` is false.
    public func publish(
        _ payment: PaymentCompleted, to machine: MachineID? = nil, kid: KeyID? = nil, key: Ed25519PrivateKey? = nil,
        withExpiry: Bool = true
    ) async throws {
        let envelope = SignedEnvelope.sign(payment, kid: kid ?? paymentKid, key: key ?? paymentKey).encoded()
        try await publishRaw(envelope, to: machine ?? payment.machineId, expiry: withExpiry ? payment.messageExpirySeconds(now: Self.nowMs()) : nil)
    }

    public func publishRaw(_ payload: Data, to machine: MachineID, expiry: UInt32? = nil) async throws {
        try await server.publish(
            topic: topics.topic(.paymentCompleted, for: machine), payload: payload, qos: .atLeastOnce,
            messageExpirySeconds: expiry)
    }

    /// A signed `firmware/desired`, retained, as the manager publishes it.
    public func publishFirmware(_ update: FirmwareUpdate, to machine: MachineID) async throws {
        let envelope = SignedEnvelope.sign(update, kid: fleetKid, key: fleetKey).encoded()
        try await server.publish(topic: topics.topic(.firmwareDesired, for: machine), payload: envelope, qos: .atLeastOnce, retain: true)
    }

    /// The next `firmware.reported` of `machine` matching `predicate`.
    public func firmwareReport(
        _ machine: MachineID, timeout: Duration = .seconds(15), where predicate: @escaping @Sendable (FirmwareReported) -> Bool
    ) async throws -> FirmwareReported {
        let topic = topics.topic(.firmwareReported, for: machine)
        let message = try await inbox.next("firmware report of \(machine)", timeout: timeout) { message in
            guard message.topic == topic, let report = try? WireCoding.decode(FirmwareReported.self, from: message.payload) else { return false }
            return predicate(report)
        }
        return try WireCoding.decode(FirmwareReported.self, from: message.payload)
    }

    public func publishConfig(_ payload: Data, to machine: MachineID) async throws {
        try await server.publish(topic: topics.topic(.configDesired, for: machine), payload: payload, qos: .atLeastOnce, retain: true)
    }

    /// The next result for `paymentId` (nil: the one whose payment ID could not be read).
    public func result(_ paymentId: PaymentID?, machine: MachineID, timeout: Duration = .seconds(15)) async throws -> PaymentResult {
        let topic = topics.topic(.paymentResult, for: machine)
        let message = try await inbox.next("result for \(paymentId?.rawValue ?? "null")", timeout: timeout) { message in
            guard message.topic == topic, let result = try? WireCoding.decode(PaymentResult.self, from: message.payload) else { return false }
            return result.paymentId == paymentId
        }
        return try WireCoding.decode(PaymentResult.self, from: message.payload)
    }

    /// The next status of `machine` in `state` (optionally from a given boot).
    public func status(
        _ machine: MachineID, _ state: MachineState, bootId: String? = nil, timeout: Duration = .seconds(15),
        where predicate: @escaping @Sendable (StatusMessage) -> Bool = { _ in true }
    ) async throws -> StatusMessage {
        let topic = topics.topic(.status, for: machine)
        let message = try await inbox.next("\(machine) \(state.rawValue)", timeout: timeout) { message in
            guard message.topic == topic, let status = try? WireCoding.decode(StatusMessage.self, from: message.payload) else { return false }
            return status.state == state && (bootId == nil || status.bootId == bootId) && predicate(status)
        }
        return try WireCoding.decode(StatusMessage.self, from: message.payload)
    }

    public func configReport(_ machine: MachineID, version: Int, timeout: Duration = .seconds(15)) async throws -> ConfigReported {
        let topic = topics.topic(.configReported, for: machine)
        let message = try await inbox.next("config report \(version)", timeout: timeout) { message in
            guard message.topic == topic, let report = try? WireCoding.decode(ConfigReported.self, from: message.payload) else { return false }
            return report.version == version
        }
        return try WireCoding.decode(ConfigReported.self, from: message.payload)
    }

    public func heartbeat(_ machine: MachineID, where predicate: @escaping @Sendable (Heartbeat) -> Bool = { _ in true }, timeout: Duration = .seconds(15)) async throws -> Heartbeat {
        let topic = topics.topic(.heartbeat, for: machine)
        let message = try await inbox.next("heartbeat of \(machine)", timeout: timeout) { message in
            guard message.topic == topic, let heartbeat = try? WireCoding.decode(Heartbeat.self, from: message.payload) else { return false }
            return predicate(heartbeat)
        }
        return try WireCoding.decode(Heartbeat.self, from: message.payload)
    }
}

/// One unit: its bundle, state folder and simulated edge log, and its `edge-agent` process.
public final class AgentUnit: Sendable {
    public let machine: MachineID
    public let directory: String
    public let bundlePath: String
    public var stateDirectory: String { directory + "/state" }
    public var edgeLogPath: String { directory + "/edges.jsonl" }
    public var logPath: String { directory + "/agent.log" }
    public var simulator: SimulatedLineDriver { SimulatedLineDriver(edgeLogPath: edgeLogPath) }
    private let process = SendableBox<ChildProcess?>(nil)

    public init(machine: MachineID, directory: String, bundlePath: String) {
        self.machine = machine
        self.directory = directory
        self.bundlePath = bundlePath
    }

    /// Path of the `edge-agent` binary: in `PULSEBRIDGE_BIN_DIR` when set (CI runs the
    /// end-to-end tests again against the release binaries that way), else the one SwiftPM
    /// built beside the tests. `fleet-manager` and `pulsebridge-demo` are looked up beside it.
    public static var binary: String {
        if let directory = ProcessInfo.processInfo.environment["PULSEBRIDGE_BIN_DIR"], !directory.isEmpty {
            return URL(fileURLWithPath: directory).appendingPathComponent("edge-agent").standardizedFileURL.path
        }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        if dir.path.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir.appendingPathComponent("edge-agent").path
    }

    /// Starts `edge-agent run` with the simulated driver.
    public func start(binary: String = AgentUnit.binary, environment extra: [String: String] = [:], arguments: [String] = []) throws {
        var environment = ProcessInfo.processInfo.environment
        for (key, value) in extra { environment[key] = value }
        let child = try ChildProcess.spawn(
            binary,
            ["run", "--bundle", bundlePath, "--state-dir", stateDirectory, "--gpio", "sim:\(edgeLogPath)", "--log-level", "debug"] + arguments,
            environment: environment, outputPath: logPath)
        process.value = child
    }

    public var child: ChildProcess? { process.value }

    /// SIGKILL: a crash or a power cut.
    public func kill() async {
        if let child = process.value { await child.killAndWait() }
    }

    /// SIGTERM and wait for the exit.
    @discardableResult
    public func terminate() async -> ExitStatus? {
        guard let child = process.value else { return nil }
        return await child.terminate(grace: .seconds(20))
    }

    /// Edges written so far.
    public var edges: [SimulatedEdge] { SimulatedEdge.read(edgeLogPath) }

    /// Pulses (activations) per line so far.
    public func activations(line: Int) -> Int { edges.filter { $0.line == line && $0.active }.count }

    /// Waits until the edge log holds at least `count` activations (polls the file).
    public func waitForActivations(_ count: Int, timeout: Duration = .seconds(15)) async throws {
        let deadline = ContinuousClock.now + timeout
        while edges.filter(\.active).count < count {
            guard ContinuousClock.now < deadline else {
                throw InboxTimeout(waitedFor: "\(count) activations in \(edgeLogPath)", received: [])
            }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// The agent's log so far.
    public func log() -> String {
        readTextFile(logPath)
    }
}

/// A value shared by reference, for test helpers whose callers run one step at a time.
final class SendableBox<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: T
    init(_ value: T) { stored = value }
    var value: T {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
