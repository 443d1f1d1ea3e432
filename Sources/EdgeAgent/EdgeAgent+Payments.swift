import Foundation
import MQTT
import MessageSchema
import RelayOutput

extension EdgeAgent {
    /// The single pipeline: payments, configurations and (later) firmware, one at a time and in
    /// arrival order, so lines are only re-opened between trains.
    func runPipeline(_ inputs: AsyncStream<MQTTMessage>, client: MQTTClient) async {
        for await message in inputs {
            guard let (_, kind) = topics.parse(message.topic) else { continue }
            switch kind {
            case .paymentCompleted:
                await handlePayment(message.payload)
                checkpointEvery(64)
            case .configDesired:
                await handleConfig(message.payload, client: client)
            case .firmwareDesired:
                await handleFirmware(message.payload, client: client)
            default:
                break
            }
        }
    }

    /// Every `count` payments, between payments: fold the write-ahead log into the database.
    private func checkpointEvery(_ count: Int) {
        let due = state.withLock { s -> Bool in
            s.paymentsSinceCheckpoint += 1
            guard s.paymentsSinceCheckpoint >= count else { return false }
            s.paymentsSinceCheckpoint = 0
            return true
        }
        guard due else { return }
        do { try store.checkpoint() } catch { logger.warning("journal checkpoint failed: \(error)") }
    }

    /// Decides a payment in PROTOCOL.md's order, fires its train if it is payable, and puts the
    /// result in the outbox.
    func handlePayment(_ payload: Data) async {
        let trust = state.withLock { $0.trust }
        let verified: Verified<PaymentCompleted>
        do {
            verified = try SignedEnvelope.open(payload, as: PaymentCompleted.self, trust: trust)
        } catch {
            // Not a valid signed payment: answered, but not a decision (a forger must not be
            // able to block a real payment ID by sending it first).
            logger.warning("payment refused: \(error)", metadata: ["payment.id": "\(error.paymentId?.rawValue ?? "-")"])
            emit(result(for: error.paymentId, .rejected, error.reason), payment: nil)
            return
        }
        let payment = verified.body
        var log = logger
        log[metadataKey: "payment.id"] = "\(payment.paymentId)"

        guard payment.machineId == machine else {
            log.warning("payment for another machine (\(payment.machineId)) refused")
            emit(result(for: payment.paymentId, .rejected, .wrongMachine), payment: nil)
            return
        }
        do {
            if let first = try store.decision(payment.paymentId) {
                log.info("duplicate payment; answering with the first decision")
                var duplicate = result(for: payment.paymentId, .duplicate, nil)
                duplicate.original = OriginalDecision(
                    status: first.status ?? .uncertain, reason: first.status == nil ? .interrupted : first.reason,
                    amount: first.amount)
                emit(duplicate, payment: nil)
                return
            }
        } catch {
            log.error("cannot read the journal: \(error); refusing the payment")
            emit(result(for: payment.paymentId, .rejected, .relayFault), payment: nil)
            return
        }

        if let reason = check(payment) {
            log.info("payment rejected: \(reason.rawValue)")
            emit(result(for: payment.paymentId, .rejected, reason), payment: payment)
            return
        }
        let config = state.withLock { $0.config }!
        let plan: PulsePlan
        do {
            plan = try PulsePlan.make(amount: payment.amount, outputs: config.outputs, maxAmount: config.maxAmount)
        } catch {
            log.info("payment rejected: \(error)")
            emit(result(for: payment.paymentId, .rejected, error.reason), payment: payment)
            return
        }

        // Quiet time after the previous train; payments arriving meanwhile wait here.
        if let end = state.withLock({ $0.lastTrainEnd }) {
            let ready = end + .milliseconds(config.postVendDelayMs)
            if ready > .now { try? await Task.sleep(until: ready, clock: .continuous) }
        }
        if now() > payment.expiresAt {
            emit(result(for: payment.paymentId, .rejected, .expired), payment: payment)
            return
        }
        guard let lines = state.withLock({ $0.lines }) else {
            log.error("payment rejected: relay lines are not open")
            var rejected = result(for: payment.paymentId, .rejected, .relayFault)
            rejected.pulses = plan.pulseCounts
            emit(rejected, payment: payment)
            return
        }

        let store = self.store
        let progress = self.progress
        let clock = options.clock
        let report = await engine.fire(
            plan, on: lines,
            beforeFirstPulse: {
                // Never start a train after expiresAt by our own clock.
                let now = clock()
                guard now <= payment.expiresAt else { throw Declined.expired }
                progress.record(payment.paymentId, fired: 0)
                try store.recordTrainStarted(payment, plan: plan.pulseCounts, at: now)
            },
            afterPulse: { progress.record(payment.paymentId, fired: $0) })
        state.withLock { $0.lastTrainEnd = .now }

        var outcome = result(for: payment.paymentId, .credited, nil)
        outcome.pulses = plan.pulseCounts
        outcome.pulsesFired = report.pulsesFired
        switch report.outcome {
        case .completed:
            outcome.amount = payment.amount
            state.withLock { $0.relay = .ok }
        case .inhibitedBeforeStart:
            outcome.status = .rejected
            outcome.reason = .machineInhibited
        case .faultBeforeStart(let error):
            log.error("relay fault before the first pulse: \(error)")
            state.withLock { $0.relay = .fault }
            outcome.status = .rejected
            outcome.reason = .relayFault
        case .declined(let why):
            outcome.status = .rejected
            outcome.reason = why == "\(Declined.expired)" ? .expired : .relayFault
            if outcome.reason == .relayFault { log.error("could not record the train start: \(why)") }
        case .inhibitedDuringTrain:
            outcome.status = .uncertain
            outcome.reason = .inhibitedDuringTrain
        case .faultDuringTrain(let error):
            log.error("relay fault during the train: \(error)")
            state.withLock { $0.relay = .fault }
            outcome.status = .uncertain
            outcome.reason = .relayFault
        case .cancelled:
            outcome.status = .uncertain
            outcome.reason = .interrupted
        }
        log.info(
            "payment \(outcome.status.rawValue)",
            metadata: [
                "payment.amount": "\(payment.amount)", "payment.pulses_fired": "\(report.pulsesFired)",
                "payment.reason": "\(outcome.reason?.rawValue ?? "-")",
            ])
        emit(outcome, payment: payment)
    }

    private enum Declined: Error, CustomStringConvertible {
        case expired
        var description: String { "expired" }
    }

    /// The checks between the duplicate check and the plan, in PROTOCOL.md's order.
    private func check(_ payment: PaymentCompleted) -> RejectionReason? {
        let now = now()
        if now > payment.expiresAt { return .expired }
        if payment.issuedAt > now + ProtocolLimits.maxClockLeadMs { return .notYetValid }
        guard let config = state.withLock({ $0.config }) else { return .notConfigured }
        if payment.currency != config.currency { return .currencyMismatch }
        return nil
    }

    func result(for paymentId: PaymentID?, _ status: PaymentStatus, _ reason: RejectionReason?) -> PaymentResult {
        PaymentResult(
            paymentId: paymentId, machineId: machine, status: status, reason: reason, amount: 0, pulses: [],
            pulsesFired: 0, decidedAt: now(), bootId: bootId, seq: 0)
    }

    /// Makes a result durable (a decision when `payment` is given, otherwise an answer only)
    /// and wakes the outbox publisher.
    func emit(_ result: PaymentResult, payment: PaymentCompleted?) {
        do {
            if let payment {
                try store.recordDecision(result, payment: payment)
            } else {
                try store.recordResultOnly(result)
            }
        } catch {
            logger.critical(
                "cannot write the journal: \(error); the result stays unpublished",
                metadata: ["payment.id": "\(result.paymentId?.rawValue ?? "-")"])
            return
        }
        outboxWake.yield()
    }
}
