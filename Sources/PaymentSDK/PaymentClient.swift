import Foundation
import Logging
import MQTT
import MessageSchema
import Synchronization
import Locking

/// What a payment server does with the money after a payment (PROTOCOL.md, "What a payment
/// server does with results").
public enum SettlementAction: String, Sendable, Codable {
    /// `credited`: the machine paid out. Capture the charge.
    case capture
    /// `rejected`, or no result and the machine has since come back `online` for a session
    /// that began after `expiresAt` (it cannot have credited): release the authorisation.
    case void
    /// `uncertain`: the train stopped part-way. Hold the charge for review.
    case hold
    /// No result yet, and nothing proves the machine did not credit (its link may be down,
    /// its outbox is durable). Keep the authorisation; settle when the result arrives.
    /// **No result is not a void.**
    case unknown
}

/// The outcome of one payment as the payment server sees it.
public struct PaymentOutcome: Sendable {
    public var payment: PaymentCompleted
    /// The agent's result (from the payment's machine, about the bytes this server sent), or
    /// nil if none came.
    public var result: PaymentResult?
    /// With no result: the `online` status of a session that began after `expiresAt`, which
    /// proves the machine did not credit (its outbox is published before `online`).
    public var onlineAfterExpiry: StatusMessage?

    /// What to do with the charge. A `duplicate` follows its `original`.
    public var action: SettlementAction {
        guard let result else { return onlineAfterExpiry == nil ? .unknown : .void }
        let status = result.status == .duplicate ? result.original?.status ?? .uncertain : result.status
        switch status {
        case .credited: return .capture
        case .rejected: return .void
        case .uncertain, .duplicate: return .hold
        }
    }
}

extension StatusMessage {
    /// When this connection session began by the agent's clock: `sessionStartedAt` where the
    /// agent sends it (extension), else `at`.
    public var sessionBegan: Int { sessionStartedAt ?? at }

    /// Whether this status proves a machine cannot still credit a payment expiring at
    /// `expiresAt` without having published its result: `online` for a session that began
    /// after `expiresAt` (PROTOCOL.md, "No result is not a void").
    public func provesNoCredit(after expiresAt: Int) -> Bool {
        state == .online && sessionBegan > expiresAt
    }
}

/// The payment-server side of PulseBridge, for a Swift payment server to embed (and what
/// `fleet-manager pay` uses).
///
/// Recommended flow, per payment: check ``status(of:timeout:)`` is `online` before charging (do
/// not charge for a machine that cannot credit); authorise the charge; call
/// ``pay(_:amount:currency:userId:ttl:paymentId:)``, which publishes the signed
/// `payment.completed` (QoS 1, MQTT expiry set to the time left) and waits for the
/// `payment.result` until `expiresAt` + 5 s (and, with no result, up to `unknownWait` more for
/// the result or for proof that the machine did not credit); then act on
/// ``PaymentOutcome/action``: capture, void, hold for review, or keep as unknown.
///
/// Attribution (PROTOCOL.md, "Who said it"): a result counts only if it arrives on the topic
/// of the machine the payment was published to and its body names that machine; a refusal
/// made before a signature holds counts only if its `payloadSha256` is the hash of the bytes
/// this client sent. Anything else is ignored and counted in ``ignoredMessages``.
public final class PaymentClient: Sendable {
    public let topics: TopicScheme
    private let client: MQTTClient
    private let kid: KeyID
    private let key: Ed25519PrivateKey
    /// Who waits for which payment's result, and the task that publishes it and gives up at
    /// the deadline (cancelled as soon as the result comes).
    private struct Waiter {
        var continuation: CheckedContinuation<Settled, Never>
        var deadline: Task<Void, Never>?
        /// SHA-256 of the envelope this client sent.
        var payloadSha256: String
        var expiresAt: Int
        /// Past `expiresAt` + 5 s with no result: an `online` after expiry now settles it.
        var acceptsOnlineProof = false
    }
    private enum Settled: Sendable {
        case result(PaymentResult)
        case onlineAfterExpiry(StatusMessage)
        case noResult
    }
    private struct WaitKey: Hashable {
        var machine: MachineID
        var payment: PaymentID
    }
    private let waiters = Locked<[WaitKey: Waiter]>([:])
    /// Messages ignored because they were not attributable: a body naming another machine
    /// than its topic, or a refusal of bytes this client did not send.
    public let ignoredMessages = Atomic<Int>(0)
    private let logger: Logger
    private let statuses = Locked<[MachineID: StatusMessage]>([:])
    private let statusArrivals = Locked<[UUID: AsyncStream<MachineID>.Continuation]>([:])
    private let router: Locked<Task<Void, Never>?> = Locked(nil)

    /// Connects as a payment server (`payment-server` role) and starts listening for results
    /// and statuses.
    public static func connect(
        _ identity: BrokerIdentity, topics: TopicScheme, kid: KeyID, key: Ed25519PrivateKey,
        clientID: String? = nil, persistentSession: Bool = true, logger: Logger = Logger(label: "pulsebridge.payments")
    ) async throws -> PaymentClient {
        // A payment server's client ID is its username: the broker pins it (payment-servers add).
        // A long-lived server's session outlives a disconnection (a broker restart, a network
        // blip): results published meanwhile are queued for it, not lost (a lost result is a
        // charge on hold). A one-shot client (`fleet-manager pay`) starts clean: a resumed
        // session would first hand it statuses queued since its last run.
        let client = try await identity.connect(clientID: clientID ?? identity.username, cleanStart: !persistentSession, logger: logger)
        let payments = PaymentClient(client: client, topics: topics, kid: kid, key: key, logger: logger)
        do {
            try await client.subscribe([MQTTSubscription(topics.filter(.paymentResult)), MQTTSubscription(topics.filter(.status))])
        } catch {
            await payments.close()
            throw PaymentSDKError("cannot subscribe to results and statuses: \(error)", hint: "is this identity the payment-server role?")
        }
        return payments
    }

    private init(client: MQTTClient, topics: TopicScheme, kid: KeyID, key: Ed25519PrivateKey, logger: Logger) {
        self.client = client
        self.logger = logger
        self.topics = topics
        self.kid = kid
        self.key = key
        let messages = client.messages
        let task = Task { [weak self] in
            for await message in messages { self?.route(message) }
        }
        router.withLock { $0 = task }
    }

    private func route(_ message: MQTTMessage) {
        guard let (machine, kind) = topics.parse(message.topic) else { return }
        switch kind {
        case .paymentResult:
            guard let result = try? WireCoding.decode(PaymentResult.self, from: message.payload), let id = result.paymentId else { return }
            guard result.machineId == machine else {
                ignore("a result on \(machine)'s topic names \(result.machineId)", payment: id)
                return
            }
            let key = WaitKey(machine: machine, payment: id)
            if result.isRefusalBeforeSignature {
                let sent = waiters.withLock { $0[key]?.payloadSha256 }
                guard let sent else { return }
                guard result.payloadSha256 == sent else {
                    ignore("a \(result.reason?.rawValue ?? "refusal") of bytes this server did not send", payment: id)
                    return
                }
            }
            // The first attributable result for a payment is the one that counts.
            resolve(key, with: .result(result))
        case .status:
            guard let status = try? WireCoding.decode(StatusMessage.self, from: message.payload) else { return }
            guard status.machineId == machine else {
                ignore("a status on \(machine)'s topic names \(status.machineId)", payment: nil)
                return
            }
            statuses.withLock { $0[machine] = status }
            for observer in statusArrivals.withLock({ Array($0.values) }) { observer.yield(machine) }
            // No result is not a void, but `online` for a session that began after expiry is.
            let proven = waiters.withLock { w in
                w.filter { $0.key.machine == machine && $0.value.acceptsOnlineProof && status.provesNoCredit(after: $0.value.expiresAt) }
                    .map(\.key)
            }
            for key in proven { resolve(key, with: .onlineAfterExpiry(status)) }
        default:
            break
        }
    }

    private func ignore(_ what: String, payment: PaymentID?) {
        ignoredMessages.add(1, ordering: .relaxed)
        logger.warning("ignored \(what)", metadata: ["payment.id": "\(payment?.rawValue ?? "-")"])
    }

    /// The machine's last status (the retained one first), waiting up to `timeout` for it.
    public func status(of machine: MachineID, timeout: Duration = .seconds(2)) async -> StatusMessage? {
        if let known = statuses.withLock({ $0[machine] }) { return known }
        let (stream, continuation) = AsyncStream.makeStream(of: MachineID.self)
        let id = UUID()
        statusArrivals.withLock { $0[id] = continuation }
        defer { _ = statusArrivals.withLock { $0.removeValue(forKey: id) } }
        let timer = Task {
            try? await Task.sleep(for: timeout)
            continuation.finish()
        }
        defer { timer.cancel() }
        if let known = statuses.withLock({ $0[machine] }) { return known }
        for await arrived in stream where arrived == machine {
            return statuses.withLock { $0[machine] }
        }
        return statuses.withLock { $0[machine] }
    }

    /// Publishes a signed `payment.completed` and waits for its result until `expiresAt` + 5 s.
    public func pay(
        _ machine: MachineID, amount: Int, currency: CurrencyCode, userId: UserID, ttl: Duration = .seconds(30),
        paymentId: PaymentID? = nil, unknownWait: Duration = .seconds(30)
    ) async throws -> PaymentOutcome {
        let now = Int(Date().timeIntervalSince1970 * 1000)
        let ttlMs = Int(ttl.components.seconds * 1000 + ttl.components.attoseconds / 1_000_000_000_000_000)
        guard ProtocolLimits.paymentLifetimeMs.contains(ttlMs) else {
            throw PaymentSDKError("--ttl must be 1 to 600 seconds (PROTOCOL.md)")
        }
        guard ProtocolLimits.amountRange.contains(amount) else {
            throw PaymentSDKError("amount must be 1 to 10,000,000 minor units")
        }
        let payment = PaymentCompleted(
            paymentId: paymentId ?? PaymentID(unchecked: "p-\(now)-\(UUID().uuidString.prefix(8).lowercased())"), machineId: machine,
            amount: amount, currency: currency, userId: userId, issuedAt: now, expiresAt: now + ttlMs)
        return try await publishAndWait(payment, envelope: SignedEnvelope.sign(payment, kid: kid, key: key).encoded(), unknownWait: unknownWait)
    }

    /// Publishes an already signed envelope for `payment` (e.g. to send the same payment again)
    /// and waits for the result until `expiresAt` + 5 s; with none by then, up to `unknownWait`
    /// more for the result or for `online` from a session that began after `expiresAt`.
    /// `messageExpiry: false` leaves out the MQTT 5 expiry, as an MQTT 3.1.1 payment server
    /// would (the agent then enforces `expiresAt` alone).
    public func publishAndWait(
        _ payment: PaymentCompleted, envelope: Data, messageExpiry: Bool = true, unknownWait: Duration = .seconds(30)
    ) async throws -> PaymentOutcome {
        let now = Int(Date().timeIntervalSince1970 * 1000)
        let resultDeadline = ContinuousClock.now + .milliseconds(max(0, payment.expiresAt - now) + 5_000)
        let key = WaitKey(machine: payment.machineId, payment: payment.paymentId)
        let sha = SHA256Hasher.hex(of: envelope)
        let settled: Settled = await withCheckedContinuation { continuation in
            waiters.withLock {
                $0[key] = Waiter(continuation: continuation, deadline: nil, payloadSha256: sha, expiresAt: payment.expiresAt)
            }
            let deadlineTask = Task {
                do {
                    try await publishUntilAcknowledged(payment, envelope: envelope, messageExpiry: messageExpiry, until: resultDeadline)
                    try await Task.sleep(until: resultDeadline, clock: .continuous)
                    // No result in time: from now on `online` after expiry settles it too; the
                    // status seen last may already be such a one.
                    waiters.withLock { $0[key]?.acceptsOnlineProof = true }
                    if let last = statuses.withLock({ $0[payment.machineId] }), last.provesNoCredit(after: payment.expiresAt) {
                        resolve(key, with: .onlineAfterExpiry(last))
                        return
                    }
                    try await Task.sleep(for: unknownWait)
                } catch {
                    if Task.isCancelled { return }  // settled first
                }
                resolve(key, with: .noResult)
            }
            let waiting = waiters.withLock { w -> Bool in
                guard w[key] != nil else { return false }
                w[key]?.deadline = deadlineTask
                return true
            }
            if !waiting { deadlineTask.cancel() }
        }
        switch settled {
        case .result(let result): return PaymentOutcome(payment: payment, result: result)
        case .onlineAfterExpiry(let status): return PaymentOutcome(payment: payment, result: nil, onlineAfterExpiry: status)
        case .noResult: return PaymentOutcome(payment: payment, result: nil)
        }
    }

    /// Publishes the completion until the broker acknowledges it. A connection lost before the
    /// acknowledgement sends the same bytes again once the client is back (the agent answers
    /// a repeated payment ID with its first decision), until `deadline`; a broker that refuses
    /// the publish, or a closed client, ends it.
    private func publishUntilAcknowledged(_ payment: PaymentCompleted, envelope: Data, messageExpiry: Bool, until deadline: ContinuousClock.Instant) async throws {
        var pause = Duration.milliseconds(50)
        while true {
            do {
                try await client.publish(
                    topic: topics.topic(.paymentCompleted, for: payment.machineId), payload: envelope, qos: .atLeastOnce,
                    messageExpirySeconds: messageExpiry ? payment.messageExpirySeconds(now: Int(Date().timeIntervalSince1970 * 1000)) : nil)
                return
            } catch let error as MQTTError {
                switch error {
                case .closed, .publishRefused: throw error
                default: break
                }
                guard ContinuousClock.now + pause < deadline else { throw error }
                logger.log(
                    level: pause == .milliseconds(50) ? .info : .debug, "completion not acknowledged (\(error)); sending it again",
                    metadata: ["payment.id": "\(payment.paymentId)"])
                try await Task.sleep(for: pause)
                pause = min(pause * 2, .seconds(2))
            }
        }
    }

    /// Hands what settled a payment to whoever waits for it, once.
    private func resolve(_ key: WaitKey, with settled: Settled) {
        guard let waiter = waiters.withLock({ $0.removeValue(forKey: key) }) else { return }
        waiter.deadline?.cancel()
        waiter.continuation.resume(returning: settled)
    }

    public func close() async {
        await client.close()
        router.withLock { $0?.cancel() }
        let waiting = waiters.withLock { w -> [Waiter] in
            defer { w = [:] }
            return Array(w.values)
        }
        for waiter in waiting {
            waiter.deadline?.cancel()
            waiter.continuation.resume(returning: .noResult)
        }
    }
}
