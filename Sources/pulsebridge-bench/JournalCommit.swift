import RelayOutput
import ArgumentParser
import EdgeAgent
import Foundation
import MessageSchema

/// The agent's journal alone: what one synced commit costs on this disk, for the writes on a
/// payment's way (the train's start record before the first pulse, the decision after it),
/// against a bare `fdatasync` of the same number of bytes. The floor of the agent's
/// "start record" piece in `pulsebridge-bench peer`.
struct JournalCommit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "journal", abstract: "The agent journal's synced commits (start record, decision) against a bare fdatasync.")
    @Option(help: "Payments to record.") var count = 400
    @Option(help: "Folder for the journal (default: a new one under the temporary folder; the disk is what is measured).")
    var directory: String?
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try Self.measure(count: count, directory: directory))
    }

    static func measure(count: Int, directory: String?) throws -> [Measurement] {
        let folder = directory ?? NSTemporaryDirectory() + "pb-journal-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        defer { if directory == nil { try? FileManager.default.removeItem(atPath: folder) } }
        let store = try AgentStore(path: folder + "/agent.sqlite")
        var started: [Double] = [], decided: [Double] = [], bare: [Double] = []
        let now = Int(Date().timeIntervalSince1970 * 1000)
        let plan = [PulseCount(channel: "coin", count: 1)]

        let fd = open(folder + "/bare", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(fd) }
        let block = [UInt8](repeating: 0x5a, count: 4096)
        for i in 0..<(count + 20) {
            let id = PaymentID(rawValue: "p-bench-\(UUID().uuidString.lowercased())")!
            let payment = PaymentCompleted(
                paymentId: id, machineId: "bench-01", amount: 100, currency: "JPY", userId: "u-bench", issuedAt: now, expiresAt: now + 30_000)
            var t = monotonicNanoseconds()
            try store.recordTrainStarted(payment, plan: plan, at: now)
            let startNs = monotonicNanoseconds() - t
            let result = PaymentResult(
                paymentId: id, machineId: "bench-01", status: .credited, reason: nil, amount: 100, pulses: plan, pulsesFired: 1,
                decidedAt: now, bootId: "", seq: 0)
            t = monotonicNanoseconds()
            try store.recordDecision(result, payment: payment)
            let decideNs = monotonicNanoseconds() - t
            // The broker acknowledges the result: its outbox row goes (unsynced), as in the agent.
            for entry in try store.outbox() { store.acknowledge(entry.id) }
            // One page overwritten and synced: the disk's own floor.
            _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t((i % 16) * 4096)) }
            t = monotonicNanoseconds()
            fdatasync(fd)
            let bareNs = monotonicNanoseconds() - t
            if i % 64 == 63 { try store.checkpoint() }
            if i >= 20 {
                started.append(Double(startNs) / 1e3)
                decided.append(Double(decideNs) / 1e3)
                bare.append(Double(bareNs) / 1e3)
            }
        }
        var measurements: [Measurement] = []
        for (name, samples) in [("start record", started), ("decision + outbox", decided), ("bare fdatasync, 4 KiB", bare)] {
            let d = Distribution(samples)
            measurements.append(Measurement(benchmark: "journal", metric: "\(name) p50", value: d.p50.rounded(), unit: "µs"))
            measurements.append(Measurement(benchmark: "journal", metric: "\(name) p99", value: d.p99.rounded(), unit: "µs"))
        }
        return measurements
    }
}
