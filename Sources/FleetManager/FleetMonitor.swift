import Foundation
import GRDB
import Logging
import MQTT
import MessageSchema
import ServiceLifecycle
import Synchronization
import Locking

/// `fleet-manager serve`: watches every unit and keeps the registry: state (online/offline by
/// the bootId/session rules and the 3 × heartbeat timeout), last seen, firmware, configuration
/// reports, clock skew, counters, and every payment with who paid. A `Service`.
///
/// It subscribes with a persistent session, so results and completions published while it
/// is down are delivered when it comes back; events are written in batches.
public final class FleetMonitor: Service, Sendable {
    public struct Options: Sendable {
        /// How long a new configuration may wait to be applied before it is an alert.
        public var configPendingAlert: Duration = .seconds(600)
        /// Clock skew that is an alert.
        public var skewLimitMs = 5_000
        /// The largest batch written in one transaction, and the longest an event waits.
        public var batchSize = 512
        public var batchDelay: Duration = .milliseconds(50)
        /// Events kept while the registry cannot be written (a full disk); past this, heartbeats
        /// (which the next ones replace) are dropped first, never results or completions.
        public var maxBufferedEvents = 200_000
        /// How soon a batch the registry refused for a passing reason is tried again.
        public var retryDelay: Duration = .seconds(1)
        public var clientID = "fleet-manager-serve"
        public init() {}
    }

    let home: FleetHome
    let options: Options
    let logger: Logger
    private let buffer = Locked<[FleetEvent]>([])
    private let wake: AsyncStream<Void>.Continuation
    private let wakes: AsyncStream<Void>
    private let paymentTrust: Locked<TrustStore>
    /// Events ingested so far (for the benchmark and tests).
    public let ingested = Atomic<Int>(0)

    /// Called after alerts opened or resolved (the alert dispatcher wakes up).
    public let alertsChanged: @Sendable () -> Void
    /// What serve measures as it works (`/metrics`), when it is served.
    public let metrics: FleetMetrics?
    /// When each signed completion arrived (machine/payment), for the result latency.
    private let completionsArrived = Locked<[String: ContinuousClock.Instant]>([:])

    public init(
        home: FleetHome, options: Options = Options(), logger: Logger = Logger(label: "pulsebridge.serve"),
        metrics: FleetMetrics? = nil, alertsChanged: @escaping @Sendable () -> Void = {}
    ) throws {
        self.alertsChanged = alertsChanged
        self.metrics = metrics
        self.home = home
        self.options = options
        self.logger = logger
        (wakes, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        paymentTrust = Locked(try TrustStore(entries: try home.trustEntries().filter { $0.purpose == .payment }))
    }



    public func run() async throws {
        let client = try home.settings.manager.client(clientID: options.clientID, cleanStart: false, logger: logger)
        try client.start()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.subscribeOnConnect(client) }
            group.addTask { await self.ingest(client.messages) }
            group.addTask { await self.writeBatches() }
            group.addTask { await self.watchTimeouts() }
            try? await gracefulShutdown()
            await client.close()   // ends ingestion
            group.cancelAll()
        }
        flush()
        logger.info("serve stopped; registry up to date")
    }

    private func subscribeOnConnect(_ client: MQTTClient) async {
        var subscribed = false
        for await state in client.connectionStates() {
            metrics?.brokerConnected.set(to: state.isConnected ? 1 : 0)
            guard state.isConnected, !subscribed else { continue }
            let topics = home.topics
            // A refused or failed SUBSCRIBE is tried again while the connection lasts (a
            // cluster setting up replicated consumers can fail one under load).
            var pause = Duration.seconds(1)
            while !subscribed, client.connectionState.isConnected, !Task.isCancelled {
                do {
                    try await client.subscribe([
                        MQTTSubscription(topics.filter(.status)), MQTTSubscription(topics.filter(.heartbeat), qos: .atMostOnce),
                        MQTTSubscription(topics.filter(.paymentResult)), MQTTSubscription(topics.filter(.paymentCompleted)),
                        MQTTSubscription(topics.filter(.configReported)), MQTTSubscription(topics.filter(.firmwareReported)),
                    ])
                    subscribed = true
                    logger.info("watching the fleet", metadata: ["topics.root": "\(topics.root)"])
                } catch {
                    logger.error("cannot subscribe to the fleet's topics: \(error); trying again in \(pause)")
                    try? await Task.sleep(for: pause)
                    pause = min(pause * 2, .seconds(30))
                }
            }
        }
    }

    private func ingest(_ messages: AsyncStream<MQTTMessage>) async {
        for await message in messages {
            guard let event = decode(message) else { continue }
            if let metrics { measure(event, metrics) }
            enqueue(event)
        }
    }

    /// Completion → result latency and heartbeat transit, as the messages arrive.
    private func measure(_ event: FleetEvent, _ metrics: FleetMetrics) {
        switch event {
        case .completion(let payment, _):
            completionsArrived.withLock { arrived in
                if arrived.count >= 100_000 {
                    // Results that never came (a unit that died): forget the oldest half.
                    let cutoff = ContinuousClock.now - .seconds(600)
                    arrived = arrived.filter { $0.value > cutoff }
                }
                arrived["\(payment.machineId)/\(payment.paymentId)"] = .now
            }
        case .result(let result):
            guard let paymentId = result.paymentId, result.status != .duplicate,
                let arrived = completionsArrived.withLock({ $0.removeValue(forKey: "\(result.machineId)/\(paymentId)") })
            else { return }
            metrics.resultLatency.record(ContinuousClock.now - arrived)
        case .heartbeat(let heartbeat):
            metrics.recordHeartbeat(sentAt: heartbeat.at, arrivedAt: Registry.now())
        default:
            break
        }
    }

    /// One message as an event, attributed to the machine its **topic** names (the only part
    /// the broker authenticates): a body naming another machine is ignored and counted.
    func decode(_ message: MQTTMessage) -> FleetEvent? {
        guard let (machine, kind) = home.topics.parse(message.topic), !message.payload.isEmpty else { return nil }
        do {
            let event: FleetEvent
            let named: MachineID
            switch kind {
            case .status:
                let status = try WireCoding.decode(StatusMessage.self, from: message.payload)
                (event, named) = (.status(status), status.machineId)
            case .heartbeat:
                let heartbeat = try WireCoding.decode(Heartbeat.self, from: message.payload)
                (event, named) = (.heartbeat(heartbeat), heartbeat.machineId)
            case .paymentResult:
                let result = try WireCoding.decode(PaymentResult.self, from: message.payload)
                (event, named) = (.result(result), result.machineId)
            case .configReported:
                let report = try WireCoding.decode(ConfigReported.self, from: message.payload)
                (event, named) = (.configReported(report), report.machineId)
            case .firmwareReported:
                let report = try WireCoding.decode(FirmwareReported.self, from: message.payload)
                (event, named) = (.firmwareReported(report), report.machineId)
            case .paymentCompleted:
                // Who paid: recorded only from completions signed by one of the fleet's payment keys.
                let payment = try openCompletion(message.payload)
                (event, named) = (.completion(payment, payloadSha256: SHA256Hasher.hex(of: message.payload)), payment.machineId)
            case .configDesired, .firmwareDesired:
                return nil
            }
            guard named == machine else {
                logger.warning(
                    "ignored a \(kind.rawValue) on \(machine)'s topic that names \(named)",
                    metadata: ["machine": "\(machine)", "body.machine": "\(named)"])
                return .ignored(machine: machine, kind: kind.rawValue)
            }
            return event
        } catch {
            logger.warning("ignored a message from \(machine) on \(kind.rawValue): \(error)")
            return nil
        }
    }

    /// Verifies a completion with the fleet's payment keys; a key added since `serve` started
    /// (`keys add`, `keys rotate`) is picked up from the registry on first sight.
    private func openCompletion(_ payload: Data) throws -> PaymentCompleted {
        let trust = paymentTrust.withLock { $0 }
        let first = Result { () throws(Refusal) in try SignedEnvelope.open(payload, as: PaymentCompleted.self, trust: trust) }
        switch first {
        case .success(let verified):
            return verified.body
        case .failure(let refusal) where refusal.reason == .unknownKey:
            let fresh = try TrustStore(entries: try home.trustEntries().filter { $0.purpose == .payment })
            paymentTrust.withLock { $0 = fresh }
            return try SignedEnvelope.open(payload, as: PaymentCompleted.self, trust: fresh).body
        case .failure(let refusal):
            throw refusal
        }
    }

    /// Writes what arrived, at most `batchDelay` after the first event of a batch.
    private func writeBatches() async {
        for await _ in wakes {
            try? await Task.sleep(for: options.batchDelay)
            flush()
        }
    }

    func enqueue(_ event: FleetEvent) {
        let count = buffer.withLock { b in
            b.append(event)
            return b.count
        }
        if count == 1 || count >= options.batchSize { wake.yield() }
    }

    /// Events waiting to be written.
    var buffered: Int { buffer.withLock { $0.count } }

    /// Writes every buffered event now. A batch is one transaction: when the registry cannot
    /// be written for a passing reason (disk full, read-only, busy), nothing of it was written
    /// and it is kept, ahead of what arrived since, and tried again; when an event itself is
    /// refused, the batch is written one event at a time so that only that one is lost.
    public func flush() {
        let events = buffer.withLock { b -> [FleetEvent] in
            defer { b = [] }
            return b
        }
        guard !events.isEmpty else { return }
        do {
            let started = ContinuousClock.now
            let alerts = try home.registry.apply(events, now: Registry.now(), skewLimitMs: options.skewLimitMs)
            metrics?.recordBatch(events: events.count, took: ContinuousClock.now - started)
            written(events.count, alerts)
        } catch let error as DatabaseError where Self.isPassing(error) {
            let (kept, dropped) = keep(events)
            logger.error(
                "cannot write to the registry (\(error.resultCode)): \(kept) events kept, retrying\(dropped > 0 ? "; \(dropped) heartbeats dropped to stay within \(options.maxBufferedEvents)" : "")")
            let wake = wake
            let delay = options.retryDelay
            Task {
                try? await Task.sleep(for: delay)
                wake.yield()
            }
        } catch {
            for event in events {
                do {
                    written(1, try home.registry.apply([event], now: Registry.now(), skewLimitMs: options.skewLimitMs))
                } catch {
                    logger.error("the registry refused an event, which is dropped: \(error); the event: \(event)")
                }
            }
        }
    }

    private func written(_ count: Int, _ alerts: [FleetAlert]) {
        ingested.add(count, ordering: .relaxed)
        for alert in alerts { logger.warning("alert: \(alert)") }
        if !alerts.isEmpty { alertsChanged() }
    }

    /// Puts a batch that was not written back in front of the buffer; over the limit, drops
    /// heartbeats. How many are kept and how many were dropped.
    private func keep(_ events: [FleetEvent]) -> (kept: Int, dropped: Int) {
        buffer.withLock { b in
            b = events + b
            guard b.count > options.maxBufferedEvents else { return (b.count, 0) }
            let before = b.count
            b.removeAll { if case .heartbeat = $0 { true } else { false } }
            return (b.count, before - b.count)
        }
    }

    /// Failures of the registry itself, not of an event: the same batch can succeed later.
    static func isPassing(_ error: DatabaseError) -> Bool {
        [.SQLITE_FULL, .SQLITE_IOERR, .SQLITE_BUSY, .SQLITE_LOCKED, .SQLITE_READONLY, .SQLITE_CANTOPEN, .SQLITE_NOMEM]
            .contains(error.resultCode.primaryResultCode)
    }

    /// Once a second: units silent for 3 × heartbeat go offline; configurations not applied in
    /// time are reported (once each). Once an hour: history older than `Registry.historyDays`
    /// is forgotten.
    private func watchTimeouts() async {
        var pruned = 0
        while !Task.isCancelled {
            do { try await Task.sleep(for: .seconds(1)) } catch { return }
            let now = Registry.now()
            if now - pruned > 3_600_000 {
                pruned = now
                do {
                    try home.registry.pruneHistory(now: now)
                } catch {
                    logger.error("cannot forget old history: \(error)")
                }
            }
            do {
                let limit = Int(options.configPendingAlert.components.seconds * 1000)
                let pending = Set(try home.registry.configsNotApplied(now: now, olderThanMs: limit))
                let detail = "desired configuration not applied after \(options.configPendingAlert)"
                let alerts = try home.registry.markSilentUnitsOffline(now: now)
                    + home.registry.syncConfigAlerts(pending: pending, detail: detail, now: now)
                for alert in alerts { logger.warning("alert: \(alert)") }
                if !alerts.isEmpty { alertsChanged() }
            } catch {
                logger.error("cannot check unit timeouts: \(error)")
            }
        }
    }
}
