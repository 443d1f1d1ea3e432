import Foundation
import Locking
import Logging
import MessageSchema
import PaymentSDK

/// Whether a machine can take a payment now, as its page says.
public enum Availability: String, Sendable {
    case ready
    /// A payment is being credited on it.
    case busy
    /// Its last payment (in the last two minutes) was refused because its inhibit input was
    /// active (out of order, door open). It may be ready again: it can be paid, and if it is
    /// still not ready the payment is voided.
    case notReady
    case offline
}

/// Live changes of payments, for the pages' event streams.
final class PaymentUpdates: Sendable {
    private let watchers = Locked<[String: [UUID: AsyncStream<PaymentRecord>.Continuation]]>([:])

    func watch(_ paymentId: String) -> (AsyncStream<PaymentRecord>, cancel: @Sendable () -> Void) {
        let (stream, continuation) = AsyncStream.makeStream(of: PaymentRecord.self, bufferingPolicy: .bufferingNewest(8))
        let id = UUID()
        watchers.withLock { $0[paymentId, default: [:]][id] = continuation }
        let cancel: @Sendable () -> Void = { [weak self] in
            continuation.finish()
            self?.watchers.withLock { $0[paymentId]?[id] = nil }
        }
        return (stream, cancel)
    }

    func changed(_ payment: PaymentRecord) {
        for continuation in watchers.withLock({ Array(($0[payment.paymentId] ?? [:]).values) }) { continuation.yield(payment) }
    }
}

/// A customer-facing refusal: the page it shows and its HTTP status.
struct CustomerRefusal: Error {
    var status: Int
    var title: String
    var message: String
    /// Where the customer can go on (e.g. the payment already under way).
    var link: (href: String, label: String)?
    var retryAfter: Int?
}

/// The payment flow: checkout → authorised → signed completion → result → capture | void | hold.
/// Each step is a conditional state change in the store, so a webhook racing the customer's
/// return, a double tap or a reload moves a payment once and publishes one completion.
final class Checkout: Sendable {
    let configuration: ServerConfiguration
    let store: PaymentStore
    let provider: any PaymentProvider
    let client: PaymentClient
    let updates = PaymentUpdates()
    let logger: Logger
    private let userLimiter: RateLimiter
    private let machineLimiter: RateLimiter
    /// Settlement tasks under way (one per sent payment), so shutdown can wait for them.
    private let running = Locked<[String: Task<Void, Never>]>([:])

    init(configuration: ServerConfiguration, store: PaymentStore, provider: any PaymentProvider, client: PaymentClient, logger: Logger) {
        self.configuration = configuration
        self.store = store
        self.provider = provider
        self.client = client
        self.logger = logger
        userLimiter = RateLimiter(perMinute: configuration.limits.paymentsPerUserPerMinute)
        machineLimiter = RateLimiter(perMinute: configuration.limits.paymentsPerMachinePerMinute)
    }

    func availability(of machine: String) async -> Availability {
        guard let id = MachineID(rawValue: machine) else { return .offline }
        guard let status = await client.status(of: id, timeout: .milliseconds(300)), status.state == .online else { return .offline }
        if (try? store.occupying(machine)) != nil { return .busy }
        let recent = (try? store.recentInhibited(machine, since: PaymentStore.now() - 120_000)) ?? false
        return recent ? .notReady : .ready
    }

    /// The customer pressed pay: checks, then a payment in `checkout` and the provider's page.
    func start(machine: ServerConfiguration.Machine, amount: Int, userId: String, idempotencyKey: String) async throws -> String {
        guard machine.offers(amount) else {
            throw CustomerRefusal(status: 400, title: "Amount not offered", message: "\(machine.name) does not offer \(formatAmount(amount)). Pick one of the amounts on its page.")
        }
        // The same key again (double tap, reload, back button): the same payment.
        let now = PaymentStore.now()
        let candidate = PaymentRecord(
            paymentId: "pay-" + RandomToken.make(bits: 130), machineId: machine.machineId, userId: userId, amount: amount,
            currency: configuration.currency, idempotencyKey: idempotencyKey, state: .checkout, createdAt: now, updatedAt: now)
        if let existing = try store.payment(user: userId, key: idempotencyKey) {
            return try await redirect(for: existing)
        }
        switch await availability(of: machine.machineId) {
        case .ready, .notReady: break
        case .busy:
            let occupying = try store.occupying(machine.machineId)
            throw CustomerRefusal(
                status: 409, title: "Machine busy", message: "\(machine.name) is being credited for another payment. Try again in a moment.",
                link: occupying.flatMap { $0.userId == userId ? ("/p/\($0.paymentId)", "See your payment") : nil })
        case .offline:
            throw CustomerRefusal(status: 409, title: "Machine offline", message: "\(machine.name) is not connected right now, so it cannot be paid. You have not been charged.")
        }
        guard userLimiter.allow(userId), machineLimiter.allow(machine.machineId) else {
            throw CustomerRefusal(status: 429, title: "Too many payments", message: "Too many payments were started in the last minute. Wait a minute and try again.", retryAfter: 60)
        }
        let (payment, created) = try store.createPayment(candidate)
        if !created { return try await redirect(for: payment) }
        logger.info("checkout", metadata: ["payment.id": "\(payment.paymentId)", "machine.id": "\(payment.machineId)", "amount": "\(amount)"])
        return try await redirect(for: payment)
    }

    /// Where a payment's customer goes next: the provider's checkout while it is open, else its page.
    private func redirect(for payment: PaymentRecord) async throws -> String {
        guard payment.state == .checkout else { return "/p/\(payment.paymentId)" }
        let session: CheckoutSession
        do {
            session = try await provider.beginCheckout(
                CheckoutRequest(
                    paymentId: payment.paymentId, amount: payment.amount, currency: payment.currency,
                    description: configuration.machine(payment.machineId)?.name ?? payment.machineId,
                    returnURL: "\(configuration.publicUrl)/p/\(payment.paymentId)/return"),
                idempotencyKey: payment.paymentId)
        } catch {
            _ = try store.transition(payment.paymentId, from: [.checkout], to: .failed, note: "\(error)")
            publish(payment.paymentId)
            throw CustomerRefusal(status: 502, title: "Payment provider unavailable", message: "The payment provider did not answer. You have not been charged; try again in a moment.")
        }
        try store.setProviderRef(payment.paymentId, session.ref)
        return session.redirectURL
    }

    /// The customer came back from the provider, or the provider's webhook arrived: ask the
    /// provider and move the payment on (once).
    func reconcile(_ paymentId: String) async {
        guard let payment = try? store.payment(paymentId), payment.state == .checkout, let ref = payment.providerRef else { return }
        let state: AuthorizationState
        do {
            state = try await provider.authorization(ref)
        } catch {
            // Nothing is published for a payment the provider has not confirmed; release
            // whatever it may hold.
            try? await provider.void(ref, idempotencyKey: "void-\(paymentId)")
            if (try? store.transition(paymentId, from: [.checkout], to: .failed, note: "\(error)")) == true { publish(paymentId) }
            logger.warning("provider failed", metadata: Self.fields(payment, ["error": "\(error)"]))
            return
        }
        switch state {
        case .pending:
            return  // the webhook will tell
        case .declined, .voided:
            if (try? store.transition(paymentId, from: [.checkout], to: .declined, note: "declined by the provider")) == true { publish(paymentId) }
        case .authorized:
            guard (try? store.transition(paymentId, from: [.checkout], to: .authorized)) == true else { return }
            publish(paymentId)
            let task = Task { await self.send(paymentId) }
            running.withLock { $0[paymentId] = task }
        case .captured, .refunded:
            logger.error("ALERT: provider reports \(state.rawValue) for a payment never sent", metadata: Self.fields(payment))
            if (try? store.transition(paymentId, from: [.checkout], to: .held, note: "provider reports \(state.rawValue) before the machine was paid")) == true {
                publish(paymentId)
            }
        }
    }

    /// Publishes the signed completion and settles by the machine's result.
    private func send(_ paymentId: String) async {
        defer { _ = running.withLock { $0.removeValue(forKey: paymentId) } }
        guard let payment = try? store.payment(paymentId), let ref = payment.providerRef,
            let machine = MachineID(rawValue: payment.machineId), let user = UserID(rawValue: payment.userId),
            let currency = CurrencyCode(rawValue: payment.currency), let id = PaymentID(rawValue: payment.paymentId)
        else { return }
        // A machine that went offline while the customer was at the checkout takes no money.
        guard await client.status(of: machine, timeout: .milliseconds(500))?.state == .online else {
            await release(payment, ref: ref, note: "the machine went offline before it could be credited")
            return
        }
        guard (try? store.transition(paymentId, from: [.authorized], to: .sent)) == true else { return }
        publish(paymentId)
        let outcome: PaymentOutcome
        do {
            outcome = try await client.pay(
                machine, amount: payment.amount, currency: currency, userId: user, ttl: .seconds(configuration.paymentTtlS), paymentId: id,
                unknownWait: .seconds(configuration.unknownWaitS))
        } catch {
            logger.error("ALERT: cannot send the completion: \(error)", metadata: Self.fields(payment))
            _ = try? store.transition(paymentId, from: [.sent], to: .unknown, note: "\(error)")
            publish(paymentId)
            return
        }
        await settle(payment, ref: ref, outcome: outcome)
    }

    private func settle(_ payment: PaymentRecord, ref: String, outcome: PaymentOutcome) async {
        let id = payment.paymentId
        let result = outcome.result.map { r -> (status: String, reason: String?, pulses: Int) in
            let status = r.status == .duplicate ? (r.original?.status ?? .uncertain) : r.status
            return (status.rawValue, r.reason?.rawValue ?? r.original?.reason?.rawValue, r.pulsesFired)
        }
        switch outcome.action {
        case .capture:
            let amount = min(outcome.result?.amount ?? payment.amount, payment.amount)
            do {
                try await provider.capture(ref, amount: amount, idempotencyKey: "capture-\(id)")
                _ = try? store.transition(id, from: [.sent], to: .captured, result: result)
                logger.info("captured", metadata: Self.fields(payment, ["amount": "\(amount)", "pulses": "\(result?.pulses ?? 0)"]))
            } catch {
                logger.error("ALERT: the machine credited but the capture failed: \(error)", metadata: Self.fields(payment))
                _ = try? store.transition(id, from: [.sent], to: .held, note: "credited; capture failed: \(error)", result: result)
            }
        case .void:
            do {
                try await provider.void(ref, idempotencyKey: "void-\(id)")
                _ = try? store.transition(id, from: [.sent], to: .voided, note: result?.reason ?? "no credit", result: result)
                logger.info("voided", metadata: Self.fields(payment, ["reason": "\(result?.reason ?? "no credit")"]))
            } catch {
                logger.error("ALERT: void failed: \(error)", metadata: Self.fields(payment))
                _ = try? store.transition(id, from: [.sent], to: .held, note: "not credited; void failed: \(error)", result: result)
            }
        case .hold:
            logger.error("ALERT: the machine's train stopped part-way; held for review", metadata: Self.fields(payment, ["reason": "\(result?.reason ?? "-")"]))
            _ = try? store.transition(id, from: [.sent], to: .held, note: "uncertain: \(result?.reason ?? "the train stopped part-way")", result: result)
        case .unknown:
            logger.error("ALERT: no result; the authorisation is kept until the machine reports", metadata: Self.fields(payment))
            _ = try? store.transition(id, from: [.sent], to: .unknown, note: "no result from the machine yet")
        }
        publish(id)
    }

    private func release(_ payment: PaymentRecord, ref: String, note: String) async {
        do {
            try await provider.void(ref, idempotencyKey: "void-\(payment.paymentId)")
            _ = try? store.transition(payment.paymentId, from: [.authorized], to: .voided, note: note)
        } catch {
            logger.error("ALERT: void failed: \(error)", metadata: Self.fields(payment))
            _ = try? store.transition(payment.paymentId, from: [.authorized], to: .held, note: "\(note); void failed: \(error)")
        }
        publish(payment.paymentId)
    }

    /// The fields of every payment log line: which payment, on which machine.
    static func fields(_ payment: PaymentRecord, _ extra: Logger.Metadata = [:]) -> Logger.Metadata {
        extra.merging(["payment.id": "\(payment.paymentId)", "machine.id": "\(payment.machineId)"]) { _, new in new }
    }

    private func publish(_ paymentId: String) {
        if let payment = try? store.payment(paymentId) { updates.changed(payment) }
    }

    /// On start: payments a previous run left between authorisation and result. An authorised
    /// one not yet sent is sent; a sent one has no waiter any more: unknown until settled.
    func recover() async {
        for payment in (try? store.payments(states: [.authorized])) ?? [] {
            let task = Task { await self.send(payment.paymentId) }
            running.withLock { $0[payment.paymentId] = task }
        }
        for payment in (try? store.payments(states: [.sent])) ?? [] {
            logger.error("ALERT: sent before a restart; its result was not awaited", metadata: Self.fields(payment))
            _ = try? store.transition(payment.paymentId, from: [.sent], to: .unknown, note: "server restarted while waiting for the result")
        }
    }

    /// What an operator may decide for a payment after review.
    public enum OperatorAction: String, Sendable, CaseIterable {
        case capture, void, refund
    }

    /// Settles a held or unknown payment (capture or void), or refunds a captured one, through
    /// the provider; the state changes only if the provider agreed.
    static func settle(_ paymentId: String, action: OperatorAction, store: PaymentStore, provider: any PaymentProvider) async throws -> PaymentRecord {
        guard let payment = try store.payment(paymentId) else {
            throw PaymentSDKError("no payment \(paymentId)", hint: "list them with `payment-server payments`")
        }
        guard let ref = payment.providerRef else { throw PaymentSDKError("\(paymentId) never reached the provider: nothing to settle") }
        let allowed: Set<PaymentState> = action == .refund ? [.captured] : [.held, .unknown]
        guard allowed.contains(payment.state) else {
            throw PaymentSDKError(
                "\(paymentId) is \(payment.state.rawValue): \(action.rawValue) takes a payment that is \(allowed.map(\.rawValue).sorted().joined(separator: " or "))",
                hint: action == .refund ? nil : "held and unknown payments are the ones left for the operator (`payments --open`)")
        }
        do {
            switch action {
            case .capture: try await provider.capture(ref, amount: payment.amount, idempotencyKey: "capture-\(paymentId)")
            case .void: try await provider.void(ref, idempotencyKey: "void-\(paymentId)")
            case .refund: try await provider.refund(ref, amount: payment.amount, idempotencyKey: "refund-\(paymentId)")
            }
        } catch {
            throw PaymentSDKError("the provider did not \(action.rawValue) \(paymentId): \(error)", hint: "the payment stays \(payment.state.rawValue); try again later")
        }
        let to: PaymentState = switch action {
        case .capture: .captured
        case .void: .voided
        case .refund: .refunded
        }
        _ = try store.transition(paymentId, from: allowed, to: to, note: "\(action.rawValue) by the operator")
        return try store.payment(paymentId) ?? payment
    }

    /// Waits for the settlements under way (graceful shutdown).
    func drain() async {
        for task in running.withLock({ Array($0.values) }) { await task.value }
    }
}

/// At most `perMinute` events per key in any 60 s.
final class RateLimiter: Sendable {
    private let perMinute: Int
    private let events = Locked<[String: [Int]]>([:])

    init(perMinute: Int) { self.perMinute = perMinute }

    func allow(_ key: String, now: Int = PaymentStore.now()) -> Bool {
        events.withLock { events in
            var recent = (events[key] ?? []).filter { $0 > now - 60_000 }
            guard recent.count < perMinute else {
                events[key] = recent
                return false
            }
            recent.append(now)
            events[key] = recent
            if events.count > 100_000 { events = events.filter { $0.value.contains { $0 > now - 60_000 } } }
            return true
        }
    }
}

func formatAmount(_ amount: Int) -> String {
    let digits = String(amount)
    var out = ""
    for (i, c) in digits.enumerated() {
        if i > 0 && (digits.count - i) % 3 == 0 { out.append(",") }
        out.append(c)
    }
    return out
}
