import EdgeAgent
import Foundation
import LocalServices
import MQTT
import MessageSchema
import RelayOutput
import Synchronization
import Locking

/// Many payments to several real agents while agents are killed with SIGKILL and restarted,
/// the broker is restarted and duplicates are injected; then the books are checked from the
/// payment server's results and the machines' edge logs.
public enum ChaosRun {
    public struct Options: Sendable {
        public var payments = 200
        public var machines = 3
        /// Payments published per second (round robin over the machines).
        public var rate = 40.0
        public var killEvery: Duration = .milliseconds(1500)
        public var brokerRestartEvery: Duration = .seconds(5)
        /// Share of publishes that repeat an earlier payment (same signed envelope).
        public var duplicateRate = 0.1
        public var ttl: Duration = .seconds(90)
        /// A unit whose credentials were stolen publishes, on its own result topic, results
        /// naming the other machines' payments, and badly signed completions with real
        /// payment IDs are sent to the machines (as anyone who may publish completions could).
        public var forger = true
        /// Machine 0's state lives on a small file system that is filled for this long, a
        /// third of the way through the payments, then freed (nil: no disk-full phase).
        public var diskFullPhase: Duration? = .seconds(2)
        public init() {}
    }

    public struct MachineBooks: Sendable, CustomStringConvertible {
        public var machine: MachineID
        public var activations = 0
        public var creditedPulses = 0
        public var creditedAmount = 0
        public var uncertainPulses = 0
        public var uncertain = 0
        public var kills = 0
        public var description: String {
            "\(machine): \(activations) pulses in the edge log; credited \(creditedPulses) pulses (\(creditedAmount) JPY); uncertain \(uncertain) (\(uncertainPulses) pulses fired); kills \(kills)"
        }
    }

    public struct Report: Sendable {
        public var payments = 0
        public var credited = 0
        public var rejected = 0
        public var uncertain = 0
        public var withoutResult = 0
        public var duplicatesInjected = 0
        public var duplicateResults = 0
        public var republished = 0
        public var kills = 0
        public var brokerRestarts = 0
        public var seconds = 0.0
        public var books: [MachineBooks] = []
        /// Every broken rule; empty when no money was lost or made up.
        public var violations: [String] = []
        public var reasons: [String: Int] = [:]
        /// Forged results and refusals of forged bytes that the payment server ignored.
        public var forgeriesIgnored = 0
        public var forgeriesSent = 0
        public var diskFullPhases = 0
    }

    /// What the chaos tasks share.
    final class Shared: Sendable {
        let stop = Atomic<Bool>(false)
        let kills = Locked<[MachineID: Int]>([:])
        let restarts = Atomic<Int>(0)
        let lastSent = Locked<[PaymentID: ContinuousClock.Instant]>([:])
    }

    /// What the payment server saw, attributed as PROTOCOL.md says: to the machine in the
    /// topic, for the machine the payment was sent to, and a refusal before the signature
    /// only for the bytes this server sent.
    final class Ledger: @unchecked Sendable {
        private let lock = NSLock()
        var results: [PaymentID: [PaymentResult]] = [:]
        var ignored = 0
        /// Where each payment went and the SHA-256 of the envelope sent.
        let sent: [PaymentID: (machine: MachineID, sha: String)]
        init(sent: [PaymentID: (machine: MachineID, sha: String)]) { self.sent = sent }
        func add(_ result: PaymentResult, topicMachine: MachineID) {
            guard let id = result.paymentId else { return }
            lock.withLock {
                guard let target = sent[id], result.machineId == topicMachine, topicMachine == target.machine,
                    !result.isRefusalBeforeSignature || result.payloadSha256 == target.sha
                else {
                    ignored += 1
                    return
                }
                results[id, default: []].append(result)
            }
        }
        func ignoredCount() -> Int { lock.withLock { ignored } }
        func has(_ id: PaymentID) -> Bool { lock.withLock { results[id] != nil } }
        func snapshot() -> [PaymentID: [PaymentResult]] { lock.withLock { results } }
    }

    public static func run(_ options: Options, log: @escaping @Sendable (String) -> Void = { _ in }) async throws -> Report {
        let started = ContinuousClock.now
        let fleet = try await FleetHarness.start()
        var report = Report()
        do {
            let pulse = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 10, gapMs: 10)
            let smallDisk = try options.diskFullPhase.map { _ in
                try SmallFileSystem(at: fleet.directory + "/chaos-0/state", megabytes: 40)
            }
            let units: [AgentUnit] = try (0..<options.machines).map { i in
                let machine = MachineID(unchecked: "chaos-\(i)")
                let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [pulse], maxAmount: 10_000, heartbeatS: 1))
                try unit.start()
                return unit
            }
            defer { smallDisk?.unmount() }
            for unit in units { _ = try await fleet.status(unit.machine, .online, timeout: .seconds(30)) }
            log("\(units.count) agents online")

            // The payment server: its own persistent session, so results survive broker restarts.
            var serverConfiguration = MQTTConfiguration(host: fleet.broker.host, port: fleet.broker.port, clientID: "chaos-payment-server")
            serverConfiguration.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(50), maximumDelay: .milliseconds(500))
            let server = try MQTTClient(serverConfiguration)
            try await server.connect()
            try await server.subscribe("fleet/+/payment/result")
            // Payments, signed once each.
            let ttlMs = Int(options.ttl.components.seconds * 1000)
            let payments: [(payment: PaymentCompleted, envelope: Data)] = (0..<options.payments).map { i in
                let machine = units[i % units.count].machine
                let payment = fleet.payment(machine, amount: 100 * Int.random(in: 1...5), ttlMs: ttlMs, userId: UserID(unchecked: "u-\(i % 37)"))
                return (payment, SignedEnvelope.sign(payment, kid: fleet.paymentKid, key: fleet.paymentKey).encoded())
            }
            let ledger = Ledger(
                sent: Dictionary(uniqueKeysWithValues: payments.map { ($0.payment.paymentId, ($0.payment.machineId, SHA256Hasher.hex(of: $0.envelope))) }))
            let listener = Task {
                for await message in server.messages {
                    guard let (machine, _) = fleet.topics.parse(message.topic),
                        let result = try? WireCoding.decode(PaymentResult.self, from: message.payload)
                    else { continue }
                    ledger.add(result, topicMachine: machine)
                }
            }
            let shared = Shared()
            @Sendable func send(_ index: Int) async -> Bool {
                let (payment, envelope) = payments[index]
                do {
                    try await server.publish(
                        topic: fleet.topics.topic(.paymentCompleted, for: payment.machineId), payload: envelope, qos: .atLeastOnce,
                        messageExpirySeconds: payment.messageExpirySeconds(now: FleetHarness.nowMs()))
                    shared.lastSent.withLock { $0[payment.paymentId] = .now }
                    return true
                } catch {
                    return false
                }
            }

            // Chaos: kills and broker restarts while payments flow.
            let killer = Task {
                while !shared.stop.load(ordering: .relaxed) {
                    try? await Task.sleep(for: options.killEvery)
                    if shared.stop.load(ordering: .relaxed) { break }
                    let unit = units.randomElement()!
                    await unit.kill()
                    shared.kills.withLock { $0[unit.machine, default: 0] += 1 }
                    try? await Task.sleep(for: .milliseconds(Int.random(in: 50...400)))
                    try? unit.start()
                }
            }
            // A forging unit, and forged completions with real payment IDs.
            let forgeriesSent = Atomic<Int>(0)
            let forger = Task {
                guard options.forger else { return }
                let forgerMachine = MachineID(unchecked: "chaos-forger")
                let forgerKey = try? Ed25519PrivateKey()
                while !shared.stop.load(ordering: .relaxed) {
                    try? await Task.sleep(for: .milliseconds(150))
                    let sentSoFar = shared.lastSent.withLock { Array($0.keys) }
                    guard let id = sentSoFar.randomElement(), let victim = payments.first(where: { $0.payment.paymentId == id })?.payment else { continue }
                    let claims: [PaymentResult] = [
                        PaymentResult(
                            paymentId: id, machineId: victim.machineId, status: .rejected, reason: .expired, amount: 0, pulses: [], pulsesFired: 0,
                            decidedAt: FleetHarness.nowMs(), bootId: "forged", seq: 1),
                        PaymentResult(
                            paymentId: id, machineId: forgerMachine, status: .credited, reason: nil, amount: 9_999_999, pulses: [], pulsesFired: 0,
                            decidedAt: FleetHarness.nowMs(), bootId: "forged", seq: 2),
                    ]
                    for claim in claims {
                        if (try? await server.publish(topic: fleet.topics.topic(.paymentResult, for: forgerMachine), payload: WireCoding.encode(claim))) != nil {
                            forgeriesSent.add(1, ordering: .relaxed)
                        }
                    }
                    if let forgerKey {
                        let forged = SignedEnvelope.sign(victim, kid: fleet.paymentKid, key: forgerKey).encoded()
                        if (try? await server.publish(topic: fleet.topics.topic(.paymentCompleted, for: victim.machineId), payload: forged)) != nil {
                            forgeriesSent.add(1, ordering: .relaxed)
                        }
                    }
                }
            }
            // The disk-full phase on machine 0.
            let diskFull = Task {
                guard let smallDisk, let phase = options.diskFullPhase else { return false }
                let third = Duration.seconds(Double(options.payments) / options.rate / 3)
                try? await Task.sleep(for: third)
                let filler = smallDisk.path + "/chaos-filler"
                smallDisk.fill(filler)
                log("disk of \(units[0].machine) full")
                try? await Task.sleep(for: phase)
                unlink(filler)
                log("disk of \(units[0].machine) freed")
                return true
            }
            let restarter = Task {
                while !shared.stop.load(ordering: .relaxed) {
                    try? await Task.sleep(for: options.brokerRestartEvery)
                    if shared.stop.load(ordering: .relaxed) { break }
                    if (try? await fleet.broker.restart()) != nil { shared.restarts.add(1, ordering: .relaxed) }
                }
            }

            // Publish at the pace asked, repeating earlier payments now and then.
            var pending: [Int] = []
            let interval = Duration.seconds(1.0 / options.rate)
            var nextAt = ContinuousClock.now
            for index in payments.indices {
                try await Task.sleep(until: nextAt, clock: .continuous)
                nextAt += interval
                if !(await send(index)) { pending.append(index) }
                if index > 0, Double.random(in: 0..<1) < options.duplicateRate {
                    report.duplicatesInjected += 1
                    _ = await send(Int.random(in: 0..<index))
                }
            }
            log("\(payments.count) payments published (\(report.duplicatesInjected) duplicates injected)")

            // A payment server re-sends a payment that got no result yet (same ID: at most a
            // duplicate) until every one has its result or expired.
            let deadline = ContinuousClock.now + options.ttl + .seconds(30)
            while ContinuousClock.now < deadline {
                let missing = payments.indices.filter { !ledger.has(payments[$0].payment.paymentId) }
                if missing.isEmpty { break }
                if ContinuousClock.now > deadline - .seconds(40) { shared.stop.store(true, ordering: .relaxed) }
                for index in missing {
                    let sent = shared.lastSent.withLock { $0[payments[index].payment.paymentId] }
                    if sent.map({ ContinuousClock.now - $0 > .seconds(4) }) ?? true, await send(index) { report.republished += 1 }
                }
                try await Task.sleep(for: .milliseconds(500))
            }
            shared.stop.store(true, ordering: .relaxed)
            killer.cancel()
            restarter.cancel()
            forger.cancel()
            _ = await killer.result
            _ = await restarter.result
            _ = await forger.result
            if await diskFull.value { report.diskFullPhases += 1 }
            // Let any agent that is down come back and answer what is left.
            for unit in units where unit.child?.isRunning != true { try unit.start() }
            let settle = ContinuousClock.now + .seconds(20)
            while ContinuousClock.now < settle, payments.contains(where: { !ledger.has($0.payment.paymentId) }) {
                for index in payments.indices where !ledger.has(payments[index].payment.paymentId) { _ = await send(index) }
                try await Task.sleep(for: .seconds(1))
            }
            for unit in units { await unit.terminate() }
            listener.cancel()
            await server.close()

            // The books.
            report.payments = payments.count
            report.kills = shared.kills.withLock { $0.values.reduce(0, +) }
            report.brokerRestarts = shared.restarts.load(ordering: .relaxed)
            report.forgeriesSent = forgeriesSent.load(ordering: .relaxed)
            report.forgeriesIgnored = ledger.ignoredCount()
            let results = ledger.snapshot()
            var booksByMachine = Dictionary(uniqueKeysWithValues: units.map { ($0.machine, MachineBooks(machine: $0.machine)) })
            for (payment, _) in payments {
                guard let seen = results[payment.paymentId] else {
                    report.withoutResult += 1
                    report.violations.append("\(payment.paymentId): no result")
                    continue
                }
                let decisions = seen.filter { $0.status != .duplicate }
                report.duplicateResults += seen.count - decisions.count
                let finals = Set(decisions.map { "\($0.status.rawValue)/\($0.reason?.rawValue ?? "-")/\($0.amount)/\($0.pulsesFired)" })
                    .union(seen.compactMap { $0.original }.map { "\($0.status.rawValue)/\($0.reason?.rawValue ?? "-")/\($0.amount)/*" })
                // Every decision and every duplicate's `original` tell the same story.
                let statuses = Set(finals.map { $0.split(separator: "/").prefix(3).joined(separator: "/") })
                if statuses.count != 1 {
                    report.violations.append("\(payment.paymentId): more than one final result: \(finals.sorted())")
                }
                guard let final = decisions.first.map({ (status: $0.status, reason: $0.reason, amount: $0.amount, fired: $0.pulsesFired) })
                    ?? seen.first?.original.map({ (status: $0.status, reason: $0.reason, amount: $0.amount, fired: -1) })
                else { continue }
                report.reasons[final.reason?.rawValue ?? final.status.rawValue, default: 0] += 1
                switch final.status {
                case .credited:
                    report.credited += 1
                    booksByMachine[payment.machineId]?.creditedPulses += final.amount / 100
                    booksByMachine[payment.machineId]?.creditedAmount += final.amount
                    if final.amount != payment.amount { report.violations.append("\(payment.paymentId): credited \(final.amount) of \(payment.amount)") }
                case .rejected:
                    report.rejected += 1
                case .uncertain:
                    report.uncertain += 1
                    booksByMachine[payment.machineId]?.uncertain += 1
                    booksByMachine[payment.machineId]?.uncertainPulses += max(0, final.fired)
                    if final.reason != .interrupted {
                        report.violations.append("\(payment.paymentId): uncertain for \(final.reason?.rawValue ?? "?") without a kill")
                    }
                case .duplicate:
                    break
                }
            }
            let killsByMachine = shared.kills.withLock { $0 }
            for unit in units {
                var books = booksByMachine[unit.machine]!
                books.activations = unit.edges.filter(\.active).count
                books.kills = killsByMachine[unit.machine] ?? 0
                // Pulses fired = credited trains + what interrupted trains fired; a kill in the
                // middle of a pulse leaves one more activation than completed pulses.
                let floor = books.creditedPulses + books.uncertainPulses
                if books.activations < floor || books.activations > floor + books.uncertain {
                    report.violations.append("\(unit.machine): \(books.activations) pulses in the edge log, but credited \(books.creditedPulses) + uncertain \(books.uncertainPulses) (+ at most \(books.uncertain) cut short)")
                }
                if books.uncertain > books.kills {
                    report.violations.append("\(unit.machine): \(books.uncertain) uncertain results but only \(books.kills) kills")
                }
                if unit.edges.last?.active == true { report.violations.append("\(unit.machine): a line was left active") }
                report.books.append(books)
            }
        } catch {
            await fleet.stop()
            throw error
        }
        await fleet.stop()
        let elapsed = ContinuousClock.now - started
        report.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return report
    }
}
