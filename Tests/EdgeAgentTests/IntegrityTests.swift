import EdgeAgent
import Foundation
import Logging
import LocalServices
import MQTT
import MessageSchema
import RelayOutput
import Testing
import TestSupport

/// The integrity review's findings against the agent, each as the attack or fault that found
/// it, with the real `edge-agent` binary, a real broker and (for a full disk) a real small
/// file system.
@Suite(.serialized, .timeLimit(.minutes(6)))
struct IntegrityTests {
    /// The manager's standard coin profile: 50 ms pulses, 50 ms gaps.
    static let standardCoin = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50)

    /// Finding 3: a 10 s train with a 4 s validity was fired in full while the payment server
    /// voided at expiresAt + 5 s. Refused `expired` now, nothing fired.
    @Test func trainThatWouldEndAfterExpiryIsRefused() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "late-01"
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [Self.standardCoin], maxAmount: 20_000))
            try unit.start()
            _ = try await fleet.status(machine, .online)
            let long = fleet.payment(machine, amount: 10_000, ttlMs: 4_000)
            try await fleet.publish(long)
            let refused = try await fleet.result(long.paymentId, machine: machine)
            #expect(refused.status == .rejected)
            #expect(refused.reason == .expired)
            #expect(refused.pulses == [PulseCount(channel: "coin", count: 100)])
            #expect(unit.edges.filter(\.active).isEmpty)

            // The margin is 2 s: a 1 s train needs at least 3 s of validity left.
            let short = fleet.payment(machine, amount: 1_000, ttlMs: 2_500)
            try await fleet.publish(short)
            #expect(try await fleet.result(short.paymentId, machine: machine).reason == .expired)
            // 3 s of slack to start in, for a sanitizer build on a loaded machine.
            let fits = fleet.payment(machine, amount: 1_000, ttlMs: 6_000)
            try await fleet.publish(fits)
            #expect(try await fleet.result(fits.paymentId, machine: machine).status == .credited)
            #expect(unit.activations(line: 17) == 10)
        }
    }

    /// Finding 3, late start: a payment waiting behind the previous train's quiet time
    /// (`postVendDelayMs`) is refused if it could no longer end in time once it may start.
    @Test func queuedPaymentThatCanNoLongerEndInTimeIsRefused() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "late-02"
            let unit = try fleet.unit(
                machine, initialConfig: fleet.config(machine, outputs: [Self.standardCoin], postVendDelayMs: 10_000))
            try unit.start()
            _ = try await fleet.status(machine, .online)
            let first = fleet.payment(machine, amount: 100)
            try await fleet.publish(first)
            #expect(try await fleet.result(first.paymentId, machine: machine).status == .credited)
            // Issued now, valid 8 s: after what is left of the 10 s quiet time (however slow this
            // machine is, it is decided within 4 s of the first train's end) a 0.5 s train
            // would end inside the 2 s margin or after expiry.
            let behind = fleet.payment(machine, amount: 500, ttlMs: 8_000)
            try await fleet.publish(behind)
            let refused = try await fleet.result(behind.paymentId, machine: machine)
            #expect(refused.reason == .expired)
            #expect(unit.activations(line: 17) == 1)
        }
    }

    /// Finding 4: payments acknowledged by the broker and queued behind a train were lost by a
    /// kill -9. Now every one is durable on arrival and gets a result after the restart, and
    /// the books balance: edges = credited pulses + pulses of the interrupted train.
    @Test func killWithABacklogLosesNoPayment() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "backlog-01"
            let coin = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 20, gapMs: 20)
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [coin], postVendDelayMs: 100))
            try unit.start()
            let first = try await fleet.status(machine, .online)
            let payments = (0..<20).map { _ in fleet.payment(machine, amount: 500, ttlMs: 120_000) }
            for payment in payments { try await fleet.publish(payment) }
            // The first train is under way and the rest are queued behind it.
            try await unit.waitForActivations(3)
            await unit.kill()
            let firedBeforeKill = unit.edges.filter(\.active).count
            #expect(firedBeforeKill < 20 * 5)

            try unit.start()
            _ = try await fleet.status(machine, .online) { $0.bootId != first.bootId }
            var credited = 0
            var uncertainFired = 0
            for payment in payments {
                let result = try await fleet.result(payment.paymentId, machine: machine, timeout: .seconds(30))
                switch result.status {
                case .credited: credited += result.pulsesFired
                case .uncertain: uncertainFired += result.pulsesFired
                default: Issue.record("\(payment.paymentId): \(result.status) \(result.reason?.rawValue ?? "")")
                }
            }
            let edges = unit.edges.filter(\.active).count
            // A process crash loses no progress record; at most the pulse being cut counts once more.
            #expect(edges >= credited + uncertainFired && edges <= credited + uncertainFired + 1, "edges \(edges), credited \(credited), uncertain \(uncertainFired)")
            #expect(credited >= 19 * 5)
        }
    }

    /// Finding 2: a refusal made before a signature holds names a payment ID nobody verified.
    /// The result carries the hash of the refused bytes so the payment server can tell.
    @Test func refusalsBeforeTheSignatureCarryThePayloadHash() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "hash-01"
            let unit = try fleet.unit(machine)
            try unit.start()
            _ = try await fleet.status(machine, .online)
            let payment = fleet.payment(machine, amount: 300)
            let forger = try Ed25519PrivateKey()
            let forged = SignedEnvelope.sign(payment, kid: fleet.paymentKid, key: forger).encoded()
            try await fleet.publishRaw(forged, to: machine)
            let refusal = try await fleet.result(payment.paymentId, machine: machine)
            #expect(refusal.reason == .badSignature)
            #expect(refusal.payloadSha256 == SHA256Hasher.hex(of: forged))
            // The real payment is still credited: the refusal decided nothing.
            let real = SignedEnvelope.sign(payment, kid: fleet.paymentKid, key: fleet.paymentKey).encoded()
            try await fleet.publishRaw(real, to: machine)
            let credited = try await fleet.result(payment.paymentId, machine: machine)
            #expect(credited.status == .credited)
            #expect(credited.payloadSha256 == nil)
            #expect(unit.activations(line: 17) == 3)
        }
    }

    /// Finding 9: a unit whose journal is lost forgot its decisions; a replay within the
    /// validity window would be credited again. A new journal refuses what was issued before it.
    @Test func lostJournalDoesNotCreditAReplay() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "lost-01"
            let unit = try fleet.unit(machine)
            try unit.start()
            let first = try await fleet.status(machine, .online)
            let payment = fleet.payment(machine, amount: 200, ttlMs: 300_000)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: machine).status == .credited)
            await unit.kill()
            for suffix in ["", "-wal", "-shm"] { unlink(unit.stateDirectory + "/agent.sqlite" + suffix) }
            // And an empty (zero-byte) journal is the same as none.
            _ = FileManager.default.createFile(atPath: unit.stateDirectory + "/agent.sqlite", contents: Data())
            try unit.start()
            _ = try await fleet.status(machine, .online) { $0.bootId != first.bootId }
            try await fleet.publish(payment)
            let replay = try await fleet.result(payment.paymentId, machine: machine)
            #expect(replay.status == .rejected)
            #expect(replay.reason == .expired)
            #expect(unit.activations(line: 17) == 2)
            // A payment issued after the new journal is credited as usual.
            let fresh = fleet.payment(machine, amount: 100)
            try await fleet.publish(fresh)
            #expect(try await fleet.result(fresh.paymentId, machine: machine).status == .credited)
        }
    }

    /// Finding 9: a unit booting with its clock behind would credit completions that expired
    /// while it was offline. The agent (here in-process, its clock an hour slow) knows the
    /// time of its own last decision and refuses as `expired`, saying `clock_untrusted`.
    @Test func aClockBehindTheJournalIsNotTrusted() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "clock-01"
            let unit = try fleet.unit(machine)
            try unit.start()
            let first = try await fleet.status(machine, .online)
            let payment = fleet.payment(machine, amount: 100)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: machine).status == .credited)
            await unit.terminate()

            let hourMs = 3_600_000
            var options = AgentOptions(
                bundle: try AgentBundle.load(from: unit.bundlePath), stateDirectory: unit.stateDirectory,
                lineDriver: unit.simulator, firmwareVersion: "test", realtime: RealtimePolicy(fifoPriority: nil, lockMemory: false))
            options.clock = { FleetHarness.nowMs() - hourMs }
            let agent = try EdgeAgent(options: options, logger: Logger(label: "clock-test"))
            let running = Task { try await agent.run() }
            _ = try await fleet.status(machine, .online) { $0.bootId != first.bootId }
            // Issued and valid by the slow clock: an old completion replayed at power-up.
            let stale = fleet.payment(machine, amount: 200, issuedAt: FleetHarness.nowMs() - hourMs, ttlMs: 60_000)
            try await fleet.publish(stale, withExpiry: false)
            let refused = try await fleet.result(stale.paymentId, machine: machine)
            #expect(refused.status == .rejected)
            #expect(refused.reason == .expired)
            _ = try await fleet.status(machine, .online) { $0.problems.contains(UnitProblem.clockUntrusted) }
            #expect(unit.activations(line: 17) == 1)
            running.cancel()
            _ = try? await running.value
        }
    }

    /// Finding 8: a stalled firmware download blocked payments for minutes. Downloads run off
    /// the payment path; the retained update is not tried again on every reconnection.
    @Test func stalledFirmwareDownloadDoesNotBlockPayments() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "fw-stall-01"
            let unit = try fleet.unit(machine)
            let install = unit.directory + "/install"
            try FileManager.default.createDirectory(atPath: install, withIntermediateDirectories: true)
            try unit.start(arguments: ["--install-dir", install])
            _ = try await fleet.status(machine, .online)
            // A server that takes the connection and never answers.
            let silent = try SilentServer()
            defer { silent.close() }
            let update = FirmwareUpdate(
                machineId: machine, version: "9.9.9", url: "http://127.0.0.1:\(silent.port)/edge-agent", sha256: String(repeating: "a", count: 64),
                size: 1_000, issuedAt: FleetHarness.nowMs())
            try await fleet.publishFirmware(update, to: machine)
            _ = try await fleet.firmwareReport(machine) { $0.state == .downloading }
            let started = ContinuousClock.now
            for amount in [100, 200, 300] {
                let payment = fleet.payment(machine, amount: amount)
                try await fleet.publish(payment)
                #expect(try await fleet.result(payment.paymentId, machine: machine).status == .credited)
            }
            #expect(ContinuousClock.now - started < .seconds(10), "payments waited behind the download")
            #expect(unit.activations(line: 17) == 6)
        }
    }

    /// Finding 7: an artifact larger than the free space crashed the agent and left a partial
    /// file in the state folder for good. Now: refused before downloading (`no_space`), the
    /// unit keeps taking payments.
    @Test func firmwareLargerThanTheFreeSpaceIsRefused() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "fw-big-01"
            let unit = try fleet.unit(machine)
            let install = unit.directory + "/install"
            let mount = try SmallFileSystem(at: install, megabytes: 24)
            defer { mount.unmount() }
            try unit.start(arguments: ["--install-dir", install])
            _ = try await fleet.status(machine, .online)
            let update = FirmwareUpdate(
                machineId: machine, version: "9.9.9", url: "http://127.0.0.1:9/edge-agent", sha256: String(repeating: "b", count: 64),
                size: 64 << 20, issuedAt: FleetHarness.nowMs())
            try await fleet.publishFirmware(update, to: machine)
            let failed = try await fleet.firmwareReport(machine) { $0.state == .failed }
            #expect(failed.reason == "no_space")
            let payment = fleet.payment(machine, amount: 300)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: machine).status == .credited)
            #expect(try FileManager.default.contentsOfDirectory(atPath: unit.stateDirectory).allSatisfy { !$0.hasSuffix(".download") })
        }
    }

    /// Finding 7: a full disk between "train started" and the decision dropped the result and
    /// later overwrote the progress record, while the unit said `online` and relay `ok`. Now
    /// the decision is committed from the reserve, trains are refused below the floor, the
    /// unit says `low_disk_space` / `journal_unwritable`, results the journal cannot take are
    /// published from memory, and the books balance after a restart.
    @Test func diskFullMidPaymentKeepsTheBooks() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "disk-01"
            let unit = try fleet.unit(machine, initialConfig: fleet.config(machine, outputs: [FleetHarness.coin]))
            let mount = try SmallFileSystem(at: unit.stateDirectory, megabytes: 40)
            defer { mount.unmount() }
            try unit.start()
            let first = try await fleet.status(machine, .online)
            let filler = unit.stateDirectory + "/filler"

            // A 30-pulse train; the disk fills while it runs.
            let long = fleet.payment(machine, amount: 3_000)
            try await fleet.publish(long)
            try await unit.waitForActivations(2)
            mount.fill(filler)
            let credited = try await fleet.result(long.paymentId, machine: machine)
            #expect(credited.status == .credited)
            #expect(credited.pulsesFired == 30)
            // Its decision could be written only because the reserve was given back.
            #expect(unit.log().contains("the journal's reserve was given back so this result could be written"))

            // Below the floor: no train starts; the unit says why.
            let refused = fleet.payment(machine, amount: 100)
            try await fleet.publish(refused)
            let refusal = try await fleet.result(refused.paymentId, machine: machine)
            #expect(refusal.status == .rejected)
            #expect(refusal.reason == .relayFault)
            let unhealthy = try await fleet.status(machine, .online) { !$0.problems.isEmpty }
            #expect(unhealthy.problems.contains(UnitProblem.lowDiskSpace) || unhealthy.problems.contains(UnitProblem.journalUnwritable))
            let heartbeat = try await fleet.heartbeat(machine) { !$0.problems.isEmpty }
            #expect(!heartbeat.problems.isEmpty)
            #expect(unit.activations(line: 17) == 30)

            // Completely full (the reserve is gone too): nothing can be journaled, not even the
            // received record. The unit says so; its rejection is not published until it is
            // durable (a payment server holds the payment as unknown meanwhile).
            mount.fill(filler + "-2")
            let stuck = fleet.payment(machine, amount: 100)
            try await fleet.publish(stuck)
            _ = try await fleet.status(machine, .online) { $0.problems.contains(UnitProblem.journalUnwritable) }
            _ = try await fleet.heartbeat(machine) { $0.problems.contains(UnitProblem.journalUnwritable) }
            let stuckTopic = fleet.topics.topic(.paymentResult, for: machine)
            #expect(await !fleet.inbox.pending.contains { message in
                message.topic == stuckTopic && (try? WireCoding.decode(PaymentResult.self, from: message.payload))?.paymentId == stuck.paymentId
            })
            #expect(unit.activations(line: 17) == 30)

            // Room again: the kept rejection is written and published, payments are credited
            // and the problems clear.
            unlink(filler)
            unlink(filler + "-2")
            let late = try await fleet.result(stuck.paymentId, machine: machine)
            #expect(late.status == .rejected)
            let after = fleet.payment(machine, amount: 200)
            try await fleet.publish(after)
            #expect(try await fleet.result(after.paymentId, machine: machine).status == .credited)
            _ = try await fleet.status(machine, .online) { $0.problems.isEmpty }

            // After a restart nothing is reported twice or differently, and the counters agree
            // with the edge log.
            await unit.kill()
            try unit.start()
            _ = try await fleet.status(machine, .online) { $0.bootId != first.bootId }
            try await fleet.publish(long)
            let duplicate = try await fleet.result(long.paymentId, machine: machine)
            #expect(duplicate.status == .duplicate)
            #expect(duplicate.original?.status == .credited)
            let counters = try await fleet.heartbeat(machine) { $0.bootId != first.bootId }.counters
            #expect(counters.pulses == unit.activations(line: 17))
            #expect(counters.credited == 2)
            #expect(unit.activations(line: 17) == 32)
        }
    }
}

/// A loopback TCP listener that never accepts: connections complete in the kernel's backlog
/// and every request waits for ever (a stalled download).
final class SilentServer: Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else { throw SmallFileSystemError(detail: "cannot listen: \(String(cString: strerror(errno)))") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(fd) }
}
