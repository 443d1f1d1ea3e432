import Foundation
import Logging
import Synchronization
import Locking

/// One edge of a train: when it was due and when the line actually changed.
public struct EdgeTiming: Sendable, Hashable {
    /// Index of the plan step (output) it belongs to.
    public var step: Int
    public var active: Bool
    /// CLOCK_MONOTONIC nanoseconds.
    public var scheduledNs: UInt64
    public var actualNs: UInt64
    /// actual − scheduled.
    public var errorNs: Int64 { Int64(bitPattern: actualNs &- scheduledNs) }
}

/// How a train ended.
public enum TrainOutcome: Sendable, Hashable {
    /// Every pulse fired.
    case completed
    /// The inhibit input was active before the first pulse: nothing fired.
    case inhibitedBeforeStart
    /// The inhibit input went active between pulses: the train stopped.
    case inhibitedDuringTrain
    /// A line could not be driven before the first pulse: nothing fired.
    case faultBeforeStart(RelayError)
    /// A line failed part-way.
    case faultDuringTrain(RelayError)
    /// The `beforeFirstPulse` hook declined (e.g. the payment expired meanwhile): nothing
    /// fired. Its error, typed as the hook throws it, is the report's `refusal`.
    case declined
    /// The engine was shut down before the train could run: nothing fired.
    case shutDown
    /// `cancel()` stopped the train (between pulses).
    case cancelled

    /// Whether any pulse could have fired.
    public var startedFiring: Bool {
        switch self {
        case .completed, .inhibitedDuringTrain, .faultDuringTrain, .cancelled: true
        case .inhibitedBeforeStart, .faultBeforeStart, .declined, .shutDown: false
        }
    }
}

/// What a train did. `Refusal` is the error type of the start hook (`Never` without one).
public struct TrainReport<Refusal: Error>: Sendable {
    public var outcome: TrainOutcome
    /// Why the start hook declined the train (`outcome == .declined`), as it threw it.
    public var refusal: Refusal?
    /// Pulses completed (contact closed and opened again), over all steps.
    public var pulsesFired: Int
    /// Pulses completed per plan step.
    public var firedPerStep: [Int]
    public var edges: [EdgeTiming]
    /// CLOCK_MONOTONIC when the first pulse was due (0 if none was).
    public var startNs: UInt64
}

/// The real-time wishes of the pulse thread.
public struct RealtimePolicy: Sendable, Hashable {
    /// SCHED_FIFO priority (1–99) for the pulse thread, or nil for the normal scheduler.
    public var fifoPriority: Int32?
    /// Lock the whole process's memory (mlockall) so no page fault lands mid-train. For the
    /// agent daemon; not for a test runner.
    public var lockMemory: Bool
    /// How long before each edge the pulse thread stops sleeping and spins on the clock. A
    /// kernel wake-up from an idle core is late by up to a few hundred microseconds (the
    /// quiet case is the slow one); the spin absorbs it, at the cost of this much CPU per edge
    /// while a train runs (2 × 500 µs per pulse: 1 % of a core for 100 ms pulse periods, 5 % for
    /// 20 ms ones).
    public var spinBeforeEdge: Duration
    /// How much shorter than configured a pulse or gap may be made (never more than a tenth of
    /// it) to bring a late train back to its schedule. An edge that comes late (the hypervisor
    /// did not run the virtual CPU, a page fault) must not cut the pulse after it to what the
    /// machine's controller rejects as noise: the next edge is due at the later of its place in
    /// the schedule and the late edge + the phase − this. The train catches up by at most this
    /// much per phase instead of at once.
    public var maxCatchUpPerPhase: Duration

    public init(
        fifoPriority: Int32? = 50, lockMemory: Bool = false, spinBeforeEdge: Duration = .microseconds(500),
        maxCatchUpPerPhase: Duration = .milliseconds(1)
    ) {
        self.fifoPriority = fifoPriority
        self.lockMemory = lockMemory
        self.spinBeforeEdge = spinBeforeEdge
        self.maxCatchUpPerPhase = maxCatchUpPerPhase
    }
}

extension Duration {
    /// Nanoseconds, 0 for a negative duration.
    var nanosecondsClamped: UInt64 {
        UInt64(max(0, components.seconds)) * 1_000_000_000 + UInt64(max(0, components.attoseconds / 1_000_000_000))
    }
}

/// Runs pulse plans on relay lines, on its own thread with absolute CLOCK_MONOTONIC
/// deadlines (`clock_nanosleep`, TIMER_ABSTIME): a late wake-up does not push the whole rest of
/// the train back, and it never shortens the pulse or gap after it by more than
/// `RealtimePolicy.maxCatchUpPerPhase` (see `nextDeadline`). Whatever happens, every output
/// ends inactive.
public final class PulseEngine: Sendable {
    private let thread: PulseThread
    private let cancelRequested = Atomic<Bool>(false)
    private let logger: Logger
    /// `RealtimePolicy.spinBeforeEdge` in nanoseconds.
    private let spinNs: UInt64
    /// `RealtimePolicy.maxCatchUpPerPhase` in nanoseconds.
    private let catchUpNs: UInt64

    public init(realtime: RealtimePolicy = RealtimePolicy(), logger: Logger = Logger(label: "pulsebridge.relay")) {
        self.logger = logger
        self.spinNs = realtime.spinBeforeEdge.nanosecondsClamped
        self.catchUpNs = realtime.maxCatchUpPerPhase.nanosecondsClamped
        self.thread = PulseThread(realtime: realtime, logger: logger)
    }

    /// Whether the pulse thread got real-time priority.
    public var isRealtime: Bool { thread.isRealtime }

    /// Fires `plan` on `lines`.
    ///
    /// On the pulse thread, in this order: the inhibit input is checked (active: nothing
    /// fires); every output is driven inactive (a failure: nothing fires); `beforeFirstPulse`
    /// runs (the agent records durably that the train started; throwing declines the train);
    /// then the pulses, checking the inhibit input before each. After a fault every output
    /// is driven inactive again.
    /// `afterPulse` runs on the pulse thread after each completed pulse with the count so far
    /// (in the gap; it must be quick).
    public func fire<Refusal: Error>(
        _ plan: PulsePlan, on lines: any RelayLines,
        beforeFirstPulse: @escaping @Sendable () throws(Refusal) -> Void,
        afterPulse: @escaping @Sendable (Int) -> Void = { _ in }
    ) async -> TrainReport<Refusal> {
        cancelRequested.store(false, ordering: .relaxed)
        return await withCheckedContinuation { continuation in
            let accepted = thread.submit { [self] in
                let report = runTrain(plan, lines: lines, beforeFirstPulse: beforeFirstPulse, afterPulse: afterPulse)
                return { continuation.resume(returning: report) }
            }
            if !accepted {
                continuation.resume(
                    returning: TrainReport(
                        outcome: .shutDown, pulsesFired: 0,
                        firedPerStep: Array(repeating: 0, count: plan.steps.count), edges: [], startNs: 0))
            }
        }
    }

    /// Fires `plan` on `lines` with no start hook.
    public func fire(
        _ plan: PulsePlan, on lines: any RelayLines, afterPulse: @escaping @Sendable (Int) -> Void = { _ in }
    ) async -> TrainReport<Never> {
        await fire(plan, on: lines, beforeFirstPulse: {}, afterPulse: afterPulse)
    }

    /// Stops the running train between pulses (the current pulse completes).
    public func cancel() {
        cancelRequested.store(true, ordering: .relaxed)
    }

    /// The pulse thread as a task executor: a task that prefers it runs between trains on the
    /// very thread that fires them (`Task(executorPreference:)`).
    public var executor: any TaskExecutor { thread }

    /// Stops the pulse thread after the train in progress.
    public func shutdown() {
        thread.stop()
    }

    private func runTrain<Refusal: Error>(
        _ plan: PulsePlan, lines: any RelayLines, beforeFirstPulse: () throws(Refusal) -> Void, afterPulse: (Int) -> Void
    ) -> TrainReport<Refusal> {
        var report = TrainReport<Refusal>(
            outcome: .completed, pulsesFired: 0, firedPerStep: Array(repeating: 0, count: plan.steps.count),
            edges: [], startNs: 0)
        report.edges.reserveCapacity(plan.totalPulses * 2)
        lines.trainWillStart()

        do {
            if try lines.inhibitActive() {
                report.outcome = .inhibitedBeforeStart
                return report
            }
            try lines.driveAllInactive()
        } catch {
            report.outcome = .faultBeforeStart(error)
            try? lines.driveAllInactive()
            return report
        }
        do throws(Refusal) {
            try beforeFirstPulse()
        } catch {
            report.outcome = .declined
            report.refusal = error
            return report
        }

        var due = Clock.now()
        report.startNs = due
        for (stepIndex, step) in plan.steps.enumerated() {
            let pulse = UInt64(step.pulseMs) * 1_000_000
            let gap = UInt64(step.gapMs) * 1_000_000
            for _ in 0..<step.count {
                if cancelRequested.load(ordering: .relaxed) {
                    report.outcome = .cancelled
                    return finish(report, lines)
                }
                do {
                    if try lines.inhibitActive() {
                        report.outcome = .inhibitedDuringTrain
                        return finish(report, lines)
                    }
                    Clock.sleep(until: due, spinningFor: spinNs)
                    try lines.drive(step.output, active: true)
                    let rose = Clock.now()
                    report.edges.append(EdgeTiming(step: stepIndex, active: true, scheduledNs: due, actualNs: rose))
                    due = nextDeadline(after: due, changedBy: rose, phase: pulse)
                    Clock.sleep(until: due, spinningFor: spinNs)
                    try lines.drive(step.output, active: false)
                    let fell = Clock.now()
                    report.edges.append(EdgeTiming(step: stepIndex, active: false, scheduledNs: due, actualNs: fell))
                    report.pulsesFired += 1
                    report.firedPerStep[stepIndex] += 1
                    afterPulse(report.pulsesFired)
                    due = nextDeadline(after: due, changedBy: fell, phase: gap)
                } catch {
                    report.outcome = .faultDuringTrain(error)
                    return finish(report, lines)
                }
            }
        }
        // The last gap belongs to the train: the machine sees a full pulse period before any
        // later train (which also waits postVendDelayMs).
        Clock.sleep(until: due)
        return report
    }

    /// When the edge after a phase of `phase` ns is due, the edge before it having been due at
    /// `due` and done (drive returned) at `done`: on schedule (`due + phase`) unless that would
    /// make the phase shorter than `phase − catch-up` (the catch-up being at most a tenth of the
    /// phase). As `done` is after the line changed, the phase the machine sees is never shorter
    /// than that, however late the edge before it was.
    @inline(__always)
    func nextDeadline(after due: UInt64, changedBy done: UInt64, phase: UInt64) -> UInt64 {
        Self.nextDeadline(after: due, changedBy: done, phase: phase, catchUp: catchUpNs)
    }

    static func nextDeadline(after due: UInt64, changedBy done: UInt64, phase: UInt64, catchUp: UInt64) -> UInt64 {
        max(due + phase, done + phase - min(catchUp, phase / 10))
    }

    private func finish<Refusal>(_ report: TrainReport<Refusal>, _ lines: any RelayLines) -> TrainReport<Refusal> {
        do {
            try lines.driveAllInactive()
        } catch {
            logger.critical("cannot drive relay outputs inactive after a stopped train", metadata: ["relay.error": "\(error)"])
        }
        return report
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the pulse engine, the simulated edge log, the
/// agent's hot-path trace and the benchmark, so their times compare.
@inline(__always)
public func monotonicNanoseconds() -> UInt64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return UInt64(t.tv_sec) * 1_000_000_000 + UInt64(t.tv_nsec)
}

/// The engine's clock: `monotonicNanoseconds` and absolute sleeps on the same clock.
enum Clock {
    @inline(__always)
    static func now() -> UInt64 { monotonicNanoseconds() }

    /// Sleeps until the absolute deadline (never wakes early; retries on signals).
    static func sleep(until deadline: UInt64) {
        var t = timespec(tv_sec: Int(deadline / 1_000_000_000), tv_nsec: Int(deadline % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, nil) == EINTR {}
    }

    /// Sleeps until `spin` before the deadline, then spins on the clock until it: returns at
    /// the deadline or after, never before, and a late kernel wake-up within `spin` costs
    /// nothing.
    static func sleep(until deadline: UInt64, spinningFor spin: UInt64) {
        if deadline > spin { sleep(until: deadline - spin) }
        while now() < deadline {}
    }
}

/// The dedicated thread trains run on: never Swift's cooperative pool, which must not block
/// and cannot promise when a job runs.
///
/// It is also a `TaskExecutor`: the agent runs its payment pipeline here
/// (`Task(executorPreference: engine.executor)`), so a completion handed over by the network
/// thread wakes this thread directly, and the decision, the start record and the first pulse
/// follow on one thread with no hop through the pool. Jobs run in order: a train and the tasks
/// around it never overlap.
///
/// The thread holds real-time priority only while a train runs. Threads inherit their
/// creator's scheduling policy: resuming the caller's task can make the runtime start a
/// worker thread from here, and a child process started by such a worker would inherit
/// SCHED_FIFO too (a CPU-bound one then starves the machine). So the thread drops back to
/// the normal scheduler before it hands a result back, and runs task jobs at normal priority.
final class PulseThread: TaskExecutor, Sendable {
    /// A train: the work runs (at real-time priority) and returns how to hand its report back,
    /// which runs once the thread is back on the normal scheduler.
    private struct Train: Sendable {
        var work: @Sendable () -> @Sendable () -> Void
    }
    private enum Work: @unchecked Sendable {
        // @unchecked: an UnownedJob is run exactly once, by whichever thread dequeues it.
        case train(Train)
        case task(UnownedJob)
    }
    private let jobs = Locked<(queue: [Work], stopped: Bool)>(([], false))
    private let available = DispatchSemaphore(value: 0)
    private let realtime = Atomic<Bool>(false)
    private let policy: RealtimePolicy

    init(realtime policy: RealtimePolicy, logger: Logger) {
        self.policy = policy
        let thread = Thread { [self] in
            configure(logger: logger)
            run()
        }
        thread.name = "pulse-engine"
        thread.start()
    }

    var isRealtime: Bool { realtime.load(ordering: .relaxed) }

    private func configure(logger: Logger) {
        if let priority = policy.fifoPriority {
            let rc = setScheduler(fifo: true)
            if rc == 0 {
                realtime.store(true, ordering: .relaxed)
                _ = setScheduler(fifo: false)
                logger.info("pulse trains run at SCHED_FIFO priority \(priority)")
            } else {
                logger.info(
                    "pulse trains run without real-time priority (SCHED_FIFO refused: \(String(cString: strerror(rc)))); edges may be late under load",
                    metadata: ["hint": "run as root or grant CAP_SYS_NICE / LimitRTPRIO in the systemd unit"])
            }
        }
        if policy.lockMemory {
            if mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0 {
                logger.info("process memory locked (mlockall)")
            } else {
                logger.info(
                    "process memory not locked (mlockall: \(String(cString: strerror(errno)))); a page fault may delay an edge",
                    metadata: ["hint": "grant CAP_IPC_LOCK / LimitMEMLOCK=infinity in the systemd unit"])
            }
        }
    }

    /// Switches this thread between SCHED_FIFO (at the policy's priority) and SCHED_OTHER.
    private func setScheduler(fifo: Bool) -> Int32 {
        var parameters = sched_param()
        parameters.sched_priority = fifo ? (policy.fifoPriority ?? 0) : 0
        return pthread_setschedparam(pthread_self(), fifo ? SCHED_FIFO : SCHED_OTHER, &parameters)
    }

    private func run() {
        while true {
            available.wait()
            let next: Work? = jobs.withLock { state in state.queue.isEmpty ? nil : state.queue.removeFirst() }
            switch next {
            case nil:
                return  // woken with nothing queued: stop
            case .task(let job):
                job.runSynchronously(on: asUnownedTaskExecutor())
            case .train(let train):
                let elevated = isRealtime && setScheduler(fifo: true) == 0
                let handBack = train.work()
                if elevated { _ = setScheduler(fifo: false) }
                handBack()
            }
        }
    }

    /// Queues a train; false if the thread has been stopped.
    func submit(_ work: @escaping @Sendable () -> @Sendable () -> Void) -> Bool {
        let accepted = jobs.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.queue.append(.train(Train(work: work)))
            return true
        }
        if accepted { available.signal() }
        return accepted
    }

    /// A task job: run here in turn; once the thread has stopped, on the global executor.
    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        let accepted = jobs.withLock { state -> Bool in
            guard !state.stopped else { return false }
            state.queue.append(.task(job))
            return true
        }
        if accepted {
            available.signal()
        } else {
            globalConcurrentExecutor.enqueue(job)
        }
    }

    func stop() {
        let first = jobs.withLock { state -> Bool in
            defer { state.stopped = true }
            return !state.stopped
        }
        if first { available.signal() }
    }
}
