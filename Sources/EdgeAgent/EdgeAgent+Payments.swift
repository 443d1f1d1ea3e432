import Foundation
import MQTT
import MessageSchema
import Logging
import RelayOutput
import Synchronization
import Locking

/// What the pipeline works on, one at a time in arrival order.
enum AgentInput: Sendable {
    /// A completion, with how it is durable until its first write (`PaymentReceipt`).
    case payment(Data, PaymentReceipt)
    case config(Data)
    case firmware(Data)
    /// A firmware artifact downloaded and verified off the pipeline, to install between trains.
    case installFirmware(VerifiedFirmware)
    /// Write the results the journal refused before (sent with heartbeats while there are any).
    case retryJournal
}

extension EdgeAgent {
    /// Runs on the network thread for every incoming message, before the next is read: a
    /// completion is durable before this returns, so a crash after the broker's
    /// acknowledgement loses nothing (PROTOCOL.md, "received" durability). If the pipeline is
    /// idle, its own first write for the payment does it (one sync before the first pulse) and
    /// this thread waits for that; otherwise this thread records it as received. Work for the
    /// pipeline goes straight to it; anything else (our status) to the client's message stream.
    func receive(_ message: MQTTMessage) -> Bool {
        guard let (target, kind) = topics.parse(message.topic), target == machine else { return false }
        switch kind {
        case .paymentCompleted:
            let arrived = monotonicNanoseconds()
            if pipelineIdle {
                let receipt = PaymentReceipt.fresh(arrivedNs: arrived)
                let handed = submit(.payment(message.payload, receipt))
                // Bounded: whatever holds the pipeline up, the payment is recorded here then.
                if !handed || !receipt.waitUntilReleased(timeout: .milliseconds(500)) {
                    do {
                        try receipt.ensureDurable { try store.recordReceived(message.payload, at: now()) }
                    } catch {
                        noteJournalFailure("cannot record a received completion: \(error)")
                    }
                }
            } else {
                var received: Int64?
                do {
                    received = try store.recordReceived(message.payload, at: now())
                } catch {
                    noteJournalFailure("cannot record a received completion: \(error)")
                }
                submit(.payment(message.payload, .recorded(received, arrivedNs: arrived)))
            }
        case .configDesired:
            submit(.config(message.payload))
        case .firmwareDesired:
            submit(.firmware(message.payload))
        default:
            return false
        }
        return true
    }

    /// Whether the pipeline has nothing queued or in hand.
    var pipelineIdle: Bool { queuedInputs.load(ordering: .acquiring) == 0 }

    /// Queues work for the pipeline; false once it has stopped taking any.
    @discardableResult
    func submit(_ work: AgentInput) -> Bool {
        queuedInputs.add(1, ordering: .acquiringAndReleasing)
        if case .enqueued = input.yield(work) { return true }
        queuedInputs.subtract(1, ordering: .acquiringAndReleasing)
        return false
    }

    /// The single pipeline: payments, configurations and firmware installs, one at a time and
    /// in arrival order, so lines are only re-opened (or the agent restarted) between trains.
    func runPipeline(_ inputs: AsyncStream<AgentInput>, client: MQTTClient) async {
        for await input in inputs {
            defer { queuedInputs.subtract(1, ordering: .acquiringAndReleasing) }
            switch input {
            case .payment(let payload, let receipt):
                await handlePayment(payload, receipt: receipt)
                checkpointEvery(64)
            case .config(let payload):
                await handleConfig(payload, client: client)
            case .firmware(let payload):
                await handleFirmware(payload, client: client)
            case .installFirmware(let download):
                await install(download, client: client)
            case .retryJournal:
                retryJournal()
                // Acknowledged outbox rows, when no decision has taken them along.
                do { try store.flushAcknowledged() } catch { logger.warning("cannot delete acknowledged results: \(error)") }
            }
        }
    }
    /// Every `count` payments: fold the write-ahead log into the database, on a queue of its
    /// own (a checkpoint takes milliseconds; a payment arriving meanwhile must not wait for it).
    private func checkpointEvery(_ count: Int) {
        let due = pipeline.withLock { s -> Bool in
            s.paymentsSinceCheckpoint += 1
            guard s.paymentsSinceCheckpoint >= count else { return false }
            s.paymentsSinceCheckpoint = 0
            return true
        }
        guard due else { return }
        let (store, logger) = (self.store, self.logger)
        checkpoints.async {
            do { try store.checkpoint() } catch { logger.warning("journal checkpoint failed: \(error)") }
        }
    }

    /// Decides a payment (DecisionCore: PROTOCOL.md's table as a pure function), fires its
    /// train if it is payable, and puts the result in the outbox (with the received record, in
    /// one transaction).
    func handlePayment(_ payload: Data, receipt: PaymentReceipt) async {
        var marks = HotPathMarks(
            paymentId: "", arrived: receipt.arrivedNs, pipeline: monotonicNanoseconds(), verified: 0, decided: 0, trainBegan: 0, committed: 0, firstEdge: 0)
        let trust = pipeline.withLock { $0.trust }
        let opened = Result { () throws(Refusal) in try SignedEnvelope.open(payload, as: PaymentCompleted.self, trust: trust) }
        marks.verified = monotonicNanoseconds()

        // The facts the table reads; the journal only for a signed payment for this machine.
        var first: OriginalDecision?
        var firstWaitsForTheJournal: PaymentResult?
        if case .success(let verified) = opened, verified.body.machineId == machine {
            let id = verified.body.paymentId
            // A decision the journal has not taken yet is a decision all the same.
            retryJournal()
            if let kept = pipeline.withLock({ s in s.unjournaled.first { $0.payment != nil && $0.result.paymentId == id }?.result }) {
                first = OriginalDecision(status: kept.status, reason: kept.reason, amount: kept.amount)
                firstWaitsForTheJournal = kept
            } else {
                do {
                    first = try store.decision(id).map(DecisionCore.original(of:))
                } catch {
                    logger.error("cannot read the journal: \(error); refusing the payment", metadata: ["payment.id": "\(id)"])
                    emit(result(for: id, .rejected, .relayFault), payment: nil, receipt: receipt)
                    return
                }
            }
        }
        let nowMs = now()
        let (clockVerdict, journalCreatedAt, config, lastTrainEnd) = pipeline.withLock { s in
            (s.clock.check(now: nowMs), s.journalCreatedAt, s.config, s.lastTrainEnd)
        }
        let quietUntil = lastTrainEnd.map { $0 + .milliseconds(config?.postVendDelayMs ?? 0) }
        let waitMs = quietUntil.map { max(0, Self.milliseconds($0 - .now)) } ?? 0
        let answer = DecisionCore.decide(
            DecisionCore.Facts(
                opened: opened, machine: machine, first: first, now: nowMs, clock: clockVerdict, journalCreatedAt: journalCreatedAt,
                config: config, waitMs: waitMs))

        let payment: PaymentCompleted
        let plan: PulsePlan
        switch answer {
        case .refused(let reason, let paymentId):
            // Not a valid signed payment: answered, but not a decision (a forger must not be
            // able to block a real payment ID by sending it first). The hash tells the payment
            // server whether these were its bytes.
            let detail = if case .failure(let refusal) = opened { "\(refusal)" } else { reason.rawValue }
            logger.warning("payment refused: \(detail)", metadata: ["payment.id": "\(paymentId?.rawValue ?? "-")"])
            var refusal = result(for: paymentId, .rejected, reason)
            refusal.payloadSha256 = SHA256Hasher.hex(of: payload)
            emit(refusal, payment: nil, receipt: receipt)
            return
        case .wrongMachine(let payment):
            logger.warning("payment for another machine (\(payment.machineId)) refused", metadata: ["payment.id": "\(payment.paymentId)"])
            emit(result(for: payment.paymentId, .rejected, .wrongMachine), payment: nil, receipt: receipt)
            return
        case .duplicate(let payment, let original):
            var duplicate = result(for: payment.paymentId, .duplicate, nil)
            duplicate.original = original
            if let kept = firstWaitsForTheJournal {
                logger.info("duplicate payment; its first decision is still waiting for the journal", metadata: ["payment.id": "\(payment.paymentId)"])
                // It tells of a decision that is not durable: it waits with it.
                emit(duplicate, payment: nil, receipt: receipt, publishFromMemory: kept.pulsesFired > 0)
            } else {
                logger.info("duplicate payment; answering with the first decision", metadata: ["payment.id": "\(payment.paymentId)"])
                emit(duplicate, payment: nil, receipt: receipt)
            }
            return
        case .rejected(let payment, let reason, let pulses):
            noteClock(clockVerdict, now: nowMs, paymentId: payment.paymentId)
            logger.info(
                "payment rejected: \(reason.rawValue)\(reason == .expired && !pulses.isEmpty ? " (a train starting in \(waitMs) ms would end too late)" : "")",
                metadata: ["payment.id": "\(payment.paymentId)"])
            var rejected = result(for: payment.paymentId, .rejected, reason)
            rejected.pulses = pulses
            emit(rejected, payment: payment, receipt: receipt)
            return
        case .fire(let payable, let payablePlan):
            noteClock(clockVerdict, now: nowMs, paymentId: payable.paymentId)
            payment = payable
            plan = payablePlan
        }
        marks.paymentId = payment.paymentId.rawValue
        var log = logger
        log[metadataKey: "payment.id"] = "\(payment.paymentId)"

        // Quiet time after the previous train; payments arriving meanwhile wait here, durable
        // as received.
        if let quietUntil, quietUntil > .now {
            do {
                try receipt.ensureDurable { try self.store.recordReceived(payload, at: self.now()) }
            } catch {
                noteJournalFailure("cannot record a received completion: \(error)")
            }
            try? await Task.sleep(until: quietUntil, clock: .continuous)
        }

        guard let lines = pipeline.withLock({ $0.lines }) else {
            log.error("payment rejected: relay lines are not open")
            var rejected = result(for: payment.paymentId, .rejected, .relayFault)
            rejected.pulses = plan.pulseCounts
            emit(rejected, payment: payment, receipt: receipt)
            return
        }
        guard store.hasWorkingRoom() else {
            // Without room for its decision, a train must not start: refused, and said so.
            log.error("payment rejected: the journal's disk is below its working floor")
            setProblem(UnitProblem.lowDiskSpace, true)
            var rejected = result(for: payment.paymentId, .rejected, .relayFault)
            rejected.pulses = plan.pulseCounts
            emit(rejected, payment: payment, receipt: receipt)
            return
        }
        setProblem(UnitProblem.lowDiskSpace, false)

        let store = self.store
        let progress = self.progress
        let clock = options.clock
        let startMarks = Locked<(began: UInt64, committed: UInt64)>((0, 0))
        let duration = plan.durationMs
        marks.decided = monotonicNanoseconds()
        let report = await engine.fire(
            plan, on: lines,
            beforeFirstPulse: { () throws(StartRefusal) in
                // Checked again at the last moment: never a train that would end after
                // expiresAt − 2 s by our own clock.
                let now = clock()
                guard DecisionCore.trainMayStart(at: now, durationMs: duration, expiresAt: payment.expiresAt) else {
                    throw .expired
                }
                do {
                    let began = monotonicNanoseconds()
                    try receipt.write { row in try store.recordTrainStarted(payment, plan: plan.pulseCounts, at: now, received: row) }
                    startMarks.withLock { $0 = (began, monotonicNanoseconds()) }
                } catch {
                    throw .journal(error)
                }
                // Only once the start is committed: a failed start must not overwrite the
                // progress of a train that really ran.
                progress.record(payment.paymentId, fired: 0)
            },
            afterPulse: { progress.record(payment.paymentId, fired: $0) })
        pipeline.withLock { $0.lastTrainEnd = .now }
        if report.outcome.startedFiring {
            let (began, committed) = startMarks.withLock { $0 }
            measurements.train(edges: report.edges, commitNs: committed > began ? committed - began : nil)
        }

        var outcome = result(for: payment.paymentId, .credited, nil)
        outcome.pulses = plan.pulseCounts
        outcome.pulsesFired = report.pulsesFired
        (outcome.status, outcome.reason) = DecisionCore.outcome(of: report.outcome, refusal: report.refusal)
        if outcome.status == .credited { outcome.amount = payment.amount }
        switch report.outcome {
        case .completed:
            pipeline.withLock { $0.relay = .ok }
        case .faultBeforeStart(let error), .faultDuringTrain(let error):
            log.error("relay fault \(report.outcome.startedFiring ? "during the train" : "before the first pulse"): \(error)")
            pipeline.withLock { $0.relay = .fault }
        case .declined:
            if case .journal(let error) = report.refusal {
                log.error("could not record the train start: \(error)")
                noteJournalFailure("cannot record a train start: \(error)")
            }
        case .shutDown:
            log.error("the pulse engine is shut down: payment refused")
        default:
            break
        }
        log.info(
            "payment \(outcome.status.rawValue)",
            metadata: [
                "payment.amount": "\(payment.amount)", "payment.pulses_fired": "\(report.pulsesFired)",
                "payment.reason": "\(outcome.reason?.rawValue ?? "-")",
            ])
        emit(outcome, payment: payment, receipt: receipt)
        if let hotPathTrace, report.outcome == .completed, let first = report.edges.first {
            (marks.trainBegan, marks.committed) = startMarks.withLock { $0 }
            marks.firstEdge = first.actualNs
            hotPathTrace.record(marks)
        }
    }

    static func milliseconds(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
    }

    /// Says in status whether the clock could be trusted for a payment that got as far as the
    /// clock row (ClockGuard), and logs why not.
    private func noteClock(_ verdict: ClockGuard.Verdict, now: Int, paymentId: PaymentID) {
        switch verdict {
        case .trusted:
            setProblem(UnitProblem.clockUntrusted, false)
        case .behind(let floor):
            logger.error(
                "the clock reads \(now), behind \(floor) that this unit has already seen: refusing as expired",
                metadata: ["payment.id": "\(paymentId)"])
            setProblem(UnitProblem.clockUntrusted, true)
        case .unsynchronised:
            logger.error(
                "the clock is not synchronised and --require-clock-sync is set: refusing as expired", metadata: ["payment.id": "\(paymentId)"])
            setProblem(UnitProblem.clockUntrusted, true)
        }
    }

    func result(for paymentId: PaymentID?, _ status: PaymentStatus, _ reason: RejectionReason?) -> PaymentResult {
        PaymentResult(
            paymentId: paymentId, machineId: machine, status: status, reason: reason, amount: 0, pulses: [],
            pulsesFired: 0, decidedAt: now(), bootId: bootId, seq: 0)
    }

    /// Makes a result durable (a decision when `payment` is given, otherwise an answer only),
    /// together with forgetting its received record, and wakes the outbox publisher. If the
    /// journal cannot take it, it is kept and written again later (`retryJournal`); a result
    /// of pulses that fired, or an answer that decides nothing, is published from memory
    /// meanwhile; a rejection waits until it is durable.
    func emit(_ result: PaymentResult, payment: PaymentCompleted?, receipt: PaymentReceipt, publishFromMemory: Bool? = nil) {
        do {
            try journal(result, payment: payment, receipt: receipt, enqueue: true)
            setProblem(UnitProblem.journalUnwritable, false)
        } catch {
            let fired = publishFromMemory ?? (result.pulsesFired > 0 || result.status == .credited || result.status == .uncertain)
            let decides = payment != nil || publishFromMemory != nil
            logger.critical(
                "cannot write the journal: \(error); \(fired || !decides ? "publishing the result from memory" : "the result waits until it can be written")",
                metadata: ["payment.id": "\(result.paymentId?.rawValue ?? "-")"])
            noteJournalFailure("\(error)")
            pipeline.withLock {
                $0.unjournaled.append(
                    UnjournaledResult(result: result, payment: payment, receipt: receipt, publishFromMemory: fired || !decides))
            }
        }
        outboxWake.yield()
    }

    private func journal(_ result: PaymentResult, payment: PaymentCompleted?, receipt: PaymentReceipt, enqueue: Bool) throws {
        try receipt.write { row in
            try store.withReserve(onRelease: { self.noteReserveUsed(result) }) {
                if let payment {
                    try store.recordDecision(result, payment: payment, received: row, enqueue: enqueue)
                } else if enqueue {
                    try store.recordResultOnly(result, received: row)
                }
            }
        }
        if payment != nil { pipeline.withLock { $0.clock.raise(to: result.decidedAt - ClockGuard.toleranceMs) } }
    }

    /// Writes what the journal refused before, oldest first; stops at the first failure.
    /// Only the pipeline calls it (before each payment, and on `.retryJournal` from the
    /// heartbeat loop), so a decision is never being written while a payment is decided.
    func retryJournal() {
        var wrote = false
        while let entry = pipeline.withLock({ s in s.unjournaled.isEmpty ? nil : s.unjournaled.removeFirst() }) {
            do {
                // One already published from memory goes into the journal but not the outbox again.
                try journal(entry.result, payment: entry.payment, receipt: entry.receipt, enqueue: !entry.published)
            } catch {
                pipeline.withLock { $0.unjournaled.insert(entry, at: 0) }
                return
            }
            wrote = true
            logger.notice("a result kept in memory is now in the journal", metadata: ["payment.id": "\(entry.result.paymentId?.rawValue ?? "-")"])
        }
        if wrote {
            setProblem(UnitProblem.journalUnwritable, false)
            outboxWake.yield()
        }
    }

    /// The disk was full and the journal's reserve was given back so that this result could be
    /// written; trains stay refused until there is room again (`hasWorkingRoom`).
    func noteReserveUsed(_ result: PaymentResult) {
        logger.error(
            "disk full: the journal's reserve was given back so this result could be written",
            metadata: ["payment.id": "\(result.paymentId?.rawValue ?? "-")", "state.path": "\(store.path)"])
        setProblem(UnitProblem.lowDiskSpace, true)
    }

    /// The journal refused a write: say so in status and heartbeats until a write succeeds.
    func noteJournalFailure(_ detail: String) {
        logger.error("journal unwritable: \(detail)", metadata: ["state.path": "\(store.path)"])
        setProblem(UnitProblem.journalUnwritable, true)
    }

    /// Sets or clears one of the problems reported in status and heartbeats; a change is
    /// published in the retained status at once.
    func setProblem(_ problem: String, _ present: Bool) {
        let changed = problems.withLock { s -> Bool in
            present ? s.insert(problem).inserted : s.remove(problem) != nil
        }
        if changed { statusChanged.yield() }
    }
}
