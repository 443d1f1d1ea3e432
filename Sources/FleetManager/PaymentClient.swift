import Foundation
import Logging
import MQTT
import MessageSchema
import Synchronization

/// What a payment server does with the money after a payment (PROTOCOL.md, "What a payment
/// server does with results").
public enum SettlementAction: String, Sendable, Codable {
    /// `credited`: the machine paid out. Capture the charge.
    case capture
    /// `rejected`, or no result by `expiresAt` + 5 s (the agent cannot credit after
    /// `expiresAt`): release the authorisation.
    case void
    /// `uncertain`: the train stopped part-way. Hold the charge for review.
    case hold
}

/// The outcome of one payment as the payment server sees it.
public struct PaymentOutcome: Sendable {
    public var payment: PaymentCompleted
    /// The agent's result, or nil if none came by `expiresAt` + 5 s.
    public var result: PaymentResult?

    /// What to do with the charge. A `duplicate` follows its `original`.
    public var action: SettlementAction {
        guard let result else { return .void }
        let status = result.status == .duplicate ? result.original?.status ?? .uncertain : result.status
        switch status {
        case .credited: return .capture
        case .rejected: return .void
        case .uncertain, .duplicate: return .hold
        }
    }
}

/// The payment-server side of PulseBridge, for a Swift payment server to embed (and what
/// `fleet-manager pay` uses).
///
/// Recommended flow, per payment: check ``status(of:timeout:)`` is `online` before charging (do
/// not charge for a machine that cannot credit); authorise the charge; call
/// ``pay(_:amount:currency:userId:ttl:paymentId:)``, which publishes the signed
/// `payment.completed` (QoS 1, MQTT expiry set to the time left) and waits for the
/// `payment.result` until `expiresAt` + 5 s; then act on ``PaymentOutcome/action``: capture,
/// void, or hold for review. Results are de-duplicated by payment ID.
public final class PaymentClient: Sendable {
    public let topics: TopicScheme
    private let client: MQTTClient
    private let kid: KeyID
    private let key: Ed25519PrivateKey
    /// Who waits for which payment's result, and the task that publishes it and gives up at
    /// the deadline (cancelled as soon as the result comes).
    private struct Waiter {
        var continuation: CheckedContinuation<PaymentResult?, Never>
        var deadline: Task<Void, Never>?
    }
    private let waiters = Mutex<[PaymentID: Waiter]>([:])
    private let statuses = Mutex<[MachineID: StatusMessage]>([:])
    private let statusArrivals = Mutex<[UUID: AsyncStream<MachineID>.Continuation]>([:])
    private let router: Mutex<Task<Void, Never>?> = Mutex(nil)

    /// Connects as a payment server (`payment-server` role) and starts listening for results
    /// and statuses.
    public static func connect(
        _ identity: BrokerIdentity, topics: TopicScheme, kid: KeyID, key: Ed25519PrivateKey,
        clientID: String = "payment-server-\(UUID().uuidString.prefix(8).lowercased())", logger: Logger = Logger(label: "pulsebridge.payments")
    ) async throws -> PaymentClient {
        let client = try await identity.connect(clientID: clientID, logger: logger)
        let payments = PaymentClient(client: client, topics: topics, kid: kid, key: key)
        do {
            try await client.subscribe([MQTTSubscription(topics.filter(.paymentResult)), MQTTSubscription(topics.filter(.status))])
        } catch {
            await payments.close()
            throw FleetError("cannot subscribe to results and statuses: \(error)", hint: "is this identity the payment-server role?")
        }
        return payments
    }

    private init(client: MQTTClient, topics: TopicScheme, kid: KeyID, key: Ed25519PrivateKey) {
        self.client = client
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
            // The first result for a payment is the one that counts.
            resolve(id, with: result)
        case .status:
            guard let status = try? WireCoding.decode(StatusMessage.self, from: message.payload) else { return }
            statuses.withLock { $0[machine] = status }
            for observer in statusArrivals.withLock({ Array($0.values) }) { observer.yield(machine) }
        default:
            break
        }
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
        paymentId: PaymentID? = nil
    ) async throws -> PaymentOutcome {
        let now = Int(Date().timeIntervalSince1970 * 1000)
        let ttlMs = Int(ttl.components.seconds * 1000 + ttl.components.attoseconds / 1_000_000_000_000_000)
        guard ProtocolLimits.paymentLifetimeMs.contains(ttlMs) else {
            throw FleetError("--ttl must be 1 to 600 seconds (PROTOCOL.md)")
        }
        guard ProtocolLimits.amountRange.contains(amount) else {
            throw FleetError("amount must be 1 to 10,000,000 minor units")
        }
        let payment = PaymentCompleted(
            paymentId: paymentId ?? PaymentID(unchecked: "p-\(now)-\(UUID().uuidString.prefix(8).lowercased())"), machineId: machine,
            amount: amount, currency: currency, userId: userId, issuedAt: now, expiresAt: now + ttlMs)
        return try await publishAndWait(payment, envelope: SignedEnvelope.sign(payment, kid: kid, key: key).encoded())
    }

    /// Publishes an already signed envelope for `payment` (e.g. to send the same payment again)
    /// and waits for the result. `messageExpiry: false` leaves out the MQTT 5 expiry, as an
    /// MQTT 3.1.1 payment server would (the agent then enforces `expiresAt` alone).
    public func publishAndWait(_ payment: PaymentCompleted, envelope: Data, messageExpiry: Bool = true) async throws -> PaymentOutcome {
        let deadline = ContinuousClock.now + .milliseconds(max(0, payment.expiresAt - Int(Date().timeIntervalSince1970 * 1000)) + 5_000)
        let id = payment.paymentId
        let result: PaymentResult? = await withCheckedContinuation { continuation in
            waiters.withLock { $0[id] = Waiter(continuation: continuation, deadline: nil) }
            let deadlineTask = Task {
                do {
                    try await client.publish(
                        topic: topics.topic(.paymentCompleted, for: payment.machineId), payload: envelope, qos: .atLeastOnce,
                        messageExpirySeconds: messageExpiry ? payment.messageExpirySeconds(now: Int(Date().timeIntervalSince1970 * 1000)) : nil)
                    try await Task.sleep(until: deadline, clock: .continuous)
                } catch {
                    if Task.isCancelled { return }  // the result came first
                }
                resolve(id, with: nil)
            }
            let waiting = waiters.withLock { w -> Bool in
                guard w[id] != nil else { return false }
                w[id]?.deadline = deadlineTask
                return true
            }
            if !waiting { deadlineTask.cancel() }
        }
        return PaymentOutcome(payment: payment, result: result)
    }

    /// Hands `result` (nil: none in time) to whoever waits for `id`, once.
    private func resolve(_ id: PaymentID, with result: PaymentResult?) {
        guard let waiter = waiters.withLock({ $0.removeValue(forKey: id) }) else { return }
        waiter.deadline?.cancel()
        waiter.continuation.resume(returning: result)
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
            waiter.continuation.resume(returning: nil)
        }
    }
}
