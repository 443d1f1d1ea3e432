import Foundation
import Logging
import MQTT
import MessageSchema
import RelayOutput
import ServiceLifecycle
import Synchronization
import Locking

/// How the agent runs on this unit.
public struct AgentOptions: Sendable {
    public var bundle: AgentBundle
    /// Where the state store, the broker CA file and the train progress live.
    public var stateDirectory: String
    /// libgpiod on a unit, the simulated driver elsewhere.
    public var lineDriver: any LineDriver
    /// The version this agent reports (`status.firmware`, `heartbeat.firmware`).
    public var firmwareVersion: String
    /// Real-time wishes of the pulse thread.
    public var realtime: RealtimePolicy
    /// Heartbeat interval before any configuration is applied.
    public var defaultHeartbeatS = 30
    /// How long a graceful stop lets a running train continue before stopping it between pulses.
    public var trainStopGrace: Duration = .seconds(30)
    /// Backoff between broker connection attempts.
    /// Refused credentials (a revoked unit, a rotated password) are retried every 2 to 3 minutes.
    public var reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(250), maximumDelay: .seconds(30), refusedDelay: .seconds(120))
    /// Where firmware versions are installed (docs/firmware.md); nil: this unit does not update
    /// itself and reports firmware updates `failed` (`updates_disabled`).
    public var installDirectory: String?
    /// Instead of the symlink switch: run this with the verified artifact's path and the
    /// version; exit code 0 means installed (the agent then exits to be restarted).
    public var installCommand: String?
    /// How long a new version has to come online before it rolls itself back.
    public var healthTimeout: Duration = .seconds(60)
    /// Refuse payments while the kernel says the clock is not synchronised (ClockGuard).
    public var requireClockSync = false
    /// Where firmware artifacts are downloaded (never the state folder, whose space belongs
    /// to the journal); default: INSTALL/downloads.
    public var downloadDirectory: String?
    /// Where to append each credited payment's `HotPathMarks` (for `pulsebridge-bench`); nil: not traced.
    public var hotPathTracePath: String?
    /// The agent's clock, milliseconds since the Unix epoch.
    public var clock: @Sendable () -> Int = { Int(Date().timeIntervalSince1970 * 1000) }

    public init(
        bundle: AgentBundle, stateDirectory: String, lineDriver: any LineDriver, firmwareVersion: String,
        realtime: RealtimePolicy = RealtimePolicy(fifoPriority: 50, lockMemory: true)
    ) {
        self.bundle = bundle
        self.stateDirectory = stateDirectory
        self.lineDriver = lineDriver
        self.firmwareVersion = firmwareVersion
        self.realtime = realtime
    }
}

/// The edge agent: verifies signed payments and fires exactly the pulses they pay for, once,
/// through restarts and power loss; reports every result from a durable outbox; keeps the
/// unit's status, heartbeat and configuration. A `Service`: run it in a `ServiceGroup` and
/// stop it with SIGTERM.
public final class EdgeAgent: Service, Sendable {
    let options: AgentOptions
    let machine: MachineID
    let topics: TopicScheme
    /// One agent per state folder, for as long as this one lives.
    let stateLock: StateDirectoryLock
    let store: AgentStore
    let engine: PulseEngine
    let progress: TrainProgress
    let hotPathTrace: HotPathTrace?
    /// Where journal checkpoints run, one at a time, off the pipeline.
    let checkpoints = DispatchQueue(label: "pulsebridge.journal-checkpoint", qos: .utility)
    let logger: Logger
    /// New at every start.
    public var bootId: String { stamps.bootId }
    /// Every published result's identity (bootId, seq), stamped in this one place.
    let stamps: ResultStamps
    let startedAt = ContinuousClock.now
    /// The pipeline's state (configuration, trust, lines, journal side state).
    let pipeline: Locked<PipelineState>
    /// The connection's and presence's state (session, what was announced).
    let link = Locked(LinkState())
    /// What status and heartbeats report in `problems`; set by whichever part finds one.
    let problems = Locked<Set<String>>([])
    /// Trains, edge timing and journal commits since the last heartbeat.
    let measurements = SelfMeasurements()
    /// The firmware download under way, off the pipeline.
    let firmwareDownload = Locked<Task<Void, Never>?>(nil)
    /// Wakes the outbox publisher.
    let outboxWake: AsyncStream<Void>.Continuation
    let outboxWakes: AsyncStream<Void>
    /// Asks `run()` to stop as if SIGTERM came (to restart into a new version).
    let restartRequest: AsyncStream<String>.Continuation
    let restartRequests: AsyncStream<String>
    /// The pipeline's input: fed from the network thread (`receive`) and by power-up.
    let input: AsyncStream<AgentInput>.Continuation
    let inputs: AsyncStream<AgentInput>
    /// Inputs queued or in hand in the pipeline (`submit` adds, the pipeline takes away).
    let queuedInputs = Atomic<Int>(0)
    /// Wakes the status publisher when a reported problem appears or clears.
    let statusChanged: AsyncStream<Void>.Continuation
    let statusChanges: AsyncStream<Void>
    /// Yields each time `online` has been published (for the firmware health check).
    let onlineSignal: AsyncStream<Void>.Continuation
    let onlineSignals: AsyncStream<Void>

    /// Opens the state store and the train progress file. Nothing touches the lines or the
    /// network until `run()`.
    public init(options: AgentOptions, logger: Logger) throws {
        self.options = options
        self.machine = options.bundle.machineId
        self.topics = try TopicScheme(root: options.bundle.topicRoot)
        var logger = logger
        logger[metadataKey: "machine.id"] = "\(options.bundle.machineId)"
        self.logger = logger
        try FileManager.default.createDirectory(atPath: options.stateDirectory, withIntermediateDirectories: true)
        self.stateLock = try StateDirectoryLock(directory: options.stateDirectory)
        self.store = try AgentStore(path: options.stateDirectory + "/agent.sqlite")
        self.progress = try TrainProgress(path: options.stateDirectory + "/train-progress")
        self.engine = PulseEngine(realtime: options.realtime, logger: logger)
        self.hotPathTrace = try options.hotPathTracePath.map { try HotPathTrace(path: $0) }
        self.stamps = ResultStamps(bootId: UUID().uuidString.lowercased())
        self.pipeline = Locked(PipelineState())
        (outboxWakes, outboxWake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (restartRequests, restartRequest) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingNewest(1))
        (onlineSignals, onlineSignal) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        (inputs, input) = AsyncStream.makeStream(of: AgentInput.self, bufferingPolicy: .unbounded)
        (statusChanges, statusChanged) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    public func run() async throws {
        try powerUp()
        // Completions received before a crash and not decided: first, in arrival order.
        let pending = try store.pendingReceived()
        if !pending.isEmpty { logger.notice("deciding \(pending.count) payment(s) received before the last stop") }
        for (id, payload) in pending { submit(.payment(payload, .recorded(id))) }
        let client = try makeClient()

        let group = ServiceGroup(
            configuration: ServiceGroupConfiguration(services: services(client), logger: logger))
        // Off this task, so that cancelling the agent stops it gracefully (as SIGTERM does)
        // instead of cancelling every part at once. Task locals, and with them the outer
        // group's graceful shutdown, are inherited.
        let running = Task { try await group.run() }
        let requests = restartRequests
        let restarts = Task {
            for await reason in requests {
                self.logger.notice("restarting: \(reason)")
                await group.triggerGracefulShutdown()
                return
            }
        }
        let ended = await withTaskCancellationHandler {
            await running.result
        } onCancel: {
            Task { await group.triggerGracefulShutdown() }
        }
        restarts.cancel()
        closeLines()
        engine.shutdown()
        if case .failure(let error) = ended {
            // A part failed (the others were stopped): the process exits non-zero, so that
            // its supervisor starts it again.
            logger.error("stopped after a failure: \(error); relay outputs inactive")
            throw error
        }
        logger.info("stopped; relay outputs inactive")
    }

    /// The agent's parts in start order; a graceful stop runs through them backwards
    /// (AgentServices.swift). Each runs until its own graceful shutdown; firmware's health
    /// check may end sooner.
    func services(_ client: MQTTClient) -> [ServiceGroupConfiguration.ServiceConfiguration] {
        [
            .init(service: ConnectionService(agent: self, client: client)),
            .init(service: PresenceService(agent: self, client: client)),
            .init(service: OutboxService(agent: self, client: client)),
            .init(service: PipelineService(agent: self, client: client)),
            .init(service: FirmwareService(agent: self, client: client)),
        ]
    }

    /// Power-up: finish what a crash left, load configuration and trust, drive every output
    /// inactive. The network comes after.
    func powerUp() throws {
        let now = options.clock()
        try store.noteCreation(now: now)
        let createdAt = try store.createdAt()
        var clock = ClockGuard(
            floor: max(AgentVersion.buildTimeMs, try store.latestRecordedTime() - ClockGuard.toleranceMs),
            requireSynchronised: options.requireClockSync)
        if !store.ensureReserve() { logger.error("no room for the journal's reserve; trains are refused until there is") }
        removeStaleDownloads()
        // Keep decisions at least 30 days; a payment's lifetime is at most 10 minutes.
        let purged = try store.purgeDecisions(decidedBefore: now - 31 * 24 * 3600 * 1000)
        if purged > 0 { logger.info("forgot \(purged) decisions older than 31 days") }

        // A train found started but not finished is never fired again: it is `uncertain`.
        for train in try store.interruptedTrains() {
            let fired = progress.fired(train.paymentId) ?? 0
            let result = PaymentResult(
                paymentId: train.paymentId, machineId: machine, status: .uncertain, reason: .interrupted, amount: 0,
                pulses: train.plan, pulsesFired: fired, decidedAt: now, bootId: bootId, seq: 0)
            try store.withReserve(onRelease: { logger.error("disk full: the journal's reserve was given back to record an interrupted train") }) {
                try store.recordInterrupted(result)
            }
            logger.error(
                "a pulse train was interrupted (crash or power loss); reported uncertain",
                metadata: ["payment.id": "\(train.paymentId)", "payment.pulses_fired": "\(fired)"])
        }

        noteRolledBackFirmware()

        var trust = try store.trust()
        if trust == nil {
            try store.saveTrust(options.bundle.trust)
            trust = options.bundle.trust
        }
        let trustStore = try TrustStore(entries: trust ?? [])
        pipeline.withLock { $0.trust = trustStore }

        if let envelope = try store.appliedConfigEnvelope() {
            // Our own stored copy, verified when it was applied (a later key rotation may have
            // dropped the key that signed it, so it is not verified again).
            let config = try WireCoding.decode(MachineConfig.self, from: Data(configBody(envelope).utf8))
            pipeline.withLock { $0.config = config }
            clock.raise(to: config.issuedAt - ProtocolLimits.maxClockLeadMs)
        } else if let initial = options.bundle.initialConfig {
            switch applyConfig(Data(initial.utf8), now: now) {
            case .applied(let version): logger.info("applied the bundle's initial configuration", metadata: ["config.version": "\(version)"])
            case .rejected(let version, let reason): logger.error("the bundle's initial configuration was rejected: \(reason)", metadata: ["config.version": "\(version)"])
            case .ignored: break
            }
        }
        let guardNow = clock
        pipeline.withLock {
            $0.clock = guardNow
            $0.journalCreatedAt = createdAt.flatMap { $0 > 0 ? $0 : nil }
        }
        if let config = pipeline.withLock({ $0.config }), pipeline.withLock({ $0.lines }) == nil {
            openLines(for: config)
        }
    }

    private func configBody(_ envelope: String) throws -> String {
        try SignedEnvelope.parse(Data(envelope.utf8)).body
    }

    func makeClient() throws -> MQTTClient {
        let endpoint = try options.bundle.endpoint()
        var configuration = MQTTConfiguration(host: endpoint.host, port: endpoint.port, clientID: machine.rawValue)
        configuration.alternateEndpoints = try options.bundle.alternateEndpoints().map { MQTTEndpoint(host: $0.host, port: $0.port) }
        configuration.username = options.bundle.username ?? machine.rawValue
        configuration.password = options.bundle.password
        configuration.keepAliveSeconds = 30
        configuration.cleanStart = false
        configuration.sessionExpirySeconds = 7 * 24 * 3600
        configuration.reconnect = options.reconnect
        configuration.receiveHook = { [self] message in receive(message) }
        if endpoint.tls, let pem = options.bundle.caCertificate {
            let caPath = options.stateDirectory + "/broker-ca.pem"
            try pem.write(toFile: caPath, atomically: true, encoding: .utf8)
            configuration.tls = MQTTTLS(caFile: caPath)
        }
        let statusTopic = topics.topic(.status, for: machine)
        // Before every connection: the same status document, `offline`, for this session.
        configuration.will = { [self] session in
            let will = StatusMessage(
                machineId: machine, state: .offline, bootId: bootId, session: Int(session), firmware: options.firmwareVersion,
                configVersion: pipeline.withLock { $0.config?.version ?? 0 }, at: now())
            return MQTTOutgoingMessage(topic: statusTopic, payload: WireCoding.encode(will), qos: .atLeastOnce, retain: true)
        }
        return try MQTTClient(configuration, logger: logger)
    }

    /// At a graceful stop: give the outbox publisher a bounded moment to send what the last
    /// train decided (what is left is sent at the next start).
    func drainOutbox(within limit: Duration, client: MQTTClient) async {
        let deadline = ContinuousClock.now + limit
        outboxWake.yield()
        while client.connectionState.isConnected, ContinuousClock.now < deadline, ((try? store.outboxDepth()) ?? 0) > 0 {
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    func closeLines() {
        let lines = pipeline.withLock { s -> (any RelayLines)? in
            defer { s.lines = nil }
            return s.lines
        }
        lines?.close()
    }

    /// Opens the configured lines, driving every output inactive; a failure leaves the relay
    /// in `fault` (payments are then rejected `relay_fault`).
    @discardableResult
    func openLines(for config: MachineConfig) -> RelayError? {
        do {
            let lines = try options.lineDriver.open(outputs: config.outputs, inhibit: config.inhibit)
            pipeline.withLock {
                $0.lines = lines
                $0.relay = .ok
            }
            logger.info("relay outputs open and inactive", metadata: ["relay.driver": "\(options.lineDriver.name)"])
            return nil
        } catch {
            pipeline.withLock { $0.relay = .fault }
            logger.error("cannot open relay lines: \(error)")
            return error
        }
    }

    func now() -> Int { options.clock() }
}

/// A result the journal refused (disk full, I/O error), kept until a retry writes it.
struct UnjournaledResult: Sendable {
    var result: PaymentResult
    var payment: PaymentCompleted?
    var receipt: PaymentReceipt
    /// Published from memory (pulses fired: the payment server must hear now). A rejection
    /// is published only once it is durable: until then the server holds the payment as
    /// unknown, and if the unit dies meanwhile it voids it once the unit is back online.
    var publishFromMemory: Bool
    var published = false
}

/// What the pipeline owns: configuration, trust, the lines and the journal's side state. Others
/// read it (the heartbeat the configured interval and relay health, status the configuration
/// version); only the pipeline (and power-up, before it runs) changes it.
struct PipelineState: Sendable {
    var config: MachineConfig?
    var trust = TrustStore()
    var lines: (any RelayLines)?
    var relay: RelayHealth = .ok
    /// CLOCK_MONOTONIC instant the last train ended (for postVendDelayMs).
    var lastTrainEnd: ContinuousClock.Instant?
    var paymentsSinceCheckpoint = 0
    /// Whether the wall clock can be trusted for expiry.
    var clock = ClockGuard(floor: 0, requireSynchronised: false)
    /// Payments issued before this are refused (the journal is newer than they are).
    var journalCreatedAt: Int?
    /// Results the journal could not take yet (retried), and whether each is published from
    /// memory meanwhile (by the outbox).
    var unjournaled: [UnjournaledResult] = []
}

/// What the connection and presence own: the broker session and what was said on it.
struct LinkState: Sendable {
    var session = 0
    /// The session `online` was last published for.
    var onlineSession: Int?
    /// When this session's first `online` was published (agent clock).
    var sessionStartedAt: Int?
    var connected = false
    var stopping = false
    var subscribed = false
    var heartbeatSeq = 0
    var reportedConfigThisBoot = false
}
