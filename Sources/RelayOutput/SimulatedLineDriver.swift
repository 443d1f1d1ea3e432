import Foundation
import Locking

/// Lines for a machine without GPIO: every edge is appended to an edge log, one JSON line
/// per change (PROTOCOL.md, "Simulated relay output"):
///
///     {"chip": "gpiochip0", "line": 17, "active": true, "tNs": 812345678901}
///
/// `tNs` is CLOCK_MONOTONIC at the moment of the change. The pulse engine is the same one
/// that drives real lines.
///
/// Tests and the demo steer the simulated machine through two files beside the log:
/// - `EDGE_LOG.inhibit`: `1` while the inhibit input is active (missing or `0`: inactive);
/// - `EDGE_LOG.fault`: `drive` makes every line write fail; `after:N` makes each train's
///   write that would start pulse N+1 fail (the file is read when a train starts).
public struct SimulatedLineDriver: LineDriver {
    public let edgeLogPath: String

    public init(edgeLogPath: String) {
        self.edgeLogPath = edgeLogPath
    }

    public var name: String { "simulated (edge log \(edgeLogPath))" }
    public var inhibitPath: String { edgeLogPath + ".inhibit" }
    public var faultPath: String { edgeLogPath + ".fault" }

    public func open(outputs: [OutputLine], inhibit: InhibitLine?) throws(RelayError) -> any RelayLines {
        let lines = try SimulatedRelayLines(driver: self, outputs: outputs, inhibit: inhibit)
        try lines.driveAllInactive()
        return lines
    }

    /// Sets the simulated inhibit input (for tests and the demo).
    public func setInhibit(_ active: Bool) throws {
        try (active ? "1\n" : "0\n").write(toFile: inhibitPath, atomically: true, encoding: .utf8)
    }

    /// Sets or clears (nil) the simulated fault: `drive` or `after:N`.
    public func setFault(_ fault: String?) throws {
        if let fault {
            try (fault + "\n").write(toFile: faultPath, atomically: true, encoding: .utf8)
        } else if FileManager.default.fileExists(atPath: faultPath) {
            try FileManager.default.removeItem(atPath: faultPath)
        }
    }
}

/// One edge of the simulated log.
public struct SimulatedEdge: Codable, Sendable, Hashable {
    public var chip: String
    public var line: Int
    public var active: Bool
    public var tNs: UInt64

    /// Reads an edge log; lines that do not parse are skipped (a torn last line after a kill).
    public static func read(_ path: String) -> [SimulatedEdge] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let decoder = JSONDecoder()
        return data.split(separator: UInt8(ascii: "\n")).compactMap { try? decoder.decode(SimulatedEdge.self, from: $0) }
    }
}

final class SimulatedRelayLines: RelayLines, Sendable {
    let outputs: [OutputLine]
    private let inhibit: InhibitLine?
    private let driver: SimulatedLineDriver

    /// What changes: behind a lock, so that `close()` from another thread than the one that
    /// drove the lines (a configuration change, a stop) is safe. One uncontended lock per
    /// edge costs tens of nanoseconds against millisecond pulses.
    private struct Mutable {
        var fd: Int32
        /// Last written value per output; nil until the first write (unknown power-up state).
        var state: [Bool?]
        /// Fault injection for the current train.
        var failAllWrites = false
        var failAfterPulses: Int?
        var activationsThisTrain = 0
    }
    private let mutable: Locked<Mutable>

    init(driver: SimulatedLineDriver, outputs: [OutputLine], inhibit: InhibitLine?) throws(RelayError) {
        self.driver = driver
        self.outputs = outputs
        self.inhibit = inhibit
        let fd = Foundation.open(driver.edgeLogPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw .chipUnavailable(chip: outputs.first?.chip ?? "sim", reason: "cannot open edge log \(driver.edgeLogPath): \(String(cString: strerror(errno)))")
        }
        mutable = Locked(Mutable(fd: fd, state: Array(repeating: nil, count: outputs.count)))
        readFaults()
    }

    deinit { close() }

    func trainWillStart() { readFaults() }

    /// Re-reads the fault file.
    private func readFaults() {
        var failAll = false
        var failAfter: Int?
        if let text = try? String(contentsOfFile: driver.faultPath, encoding: .utf8) {
            let fault = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if fault == "drive" {
                failAll = true
            } else if fault.hasPrefix("after:"), let n = Int(fault.dropFirst(6)) {
                failAfter = n
            }
        }
        mutable.withLock { m in
            m.failAllWrites = failAll
            m.failAfterPulses = failAfter
            m.activationsThisTrain = 0
        }
    }

    func drive(_ index: Int, active: Bool) throws(RelayError) {
        let output = outputs[index]
        try mutable.withLock { (m: inout Mutable) throws(RelayError) in
            guard m.fd >= 0 else { throw .writeFailed(chip: output.chip, line: output.line, reason: "lines are closed") }
            if m.failAllWrites || (active && m.failAfterPulses.map { m.activationsThisTrain >= $0 } ?? false) {
                throw .writeFailed(chip: output.chip, line: output.line, reason: "simulated fault")
            }
            if active { m.activationsThisTrain += 1 }
            guard m.state[index] != active else { return }
            var now = timespec()
            clock_gettime(CLOCK_MONOTONIC, &now)
            let tNs = UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
            // Hand-written JSON: this runs on the timing thread between deadlines.
            let line = "{\"chip\":\"\(output.chip)\",\"line\":\(output.line),\"active\":\(active),\"tNs\":\(tNs)}\n"
            let fd = m.fd
            let written = line.utf8.withContiguousStorageIfAvailable { Foundation.write(fd, $0.baseAddress, $0.count) } ?? -1
            guard written == line.utf8.count else {
                throw .writeFailed(chip: output.chip, line: output.line, reason: "edge log write failed: \(String(cString: strerror(errno)))")
            }
            m.state[index] = active
        }
    }

    func inhibitActive() throws(RelayError) -> Bool {
        guard inhibit != nil else { return false }
        // A tiny file read: cheap enough between pulses, and steerable from outside the process.
        var buffer = [UInt8](repeating: 0, count: 4)
        let fd = Foundation.open(driver.inhibitPath, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { Foundation.close(fd) }
        let count = Foundation.read(fd, &buffer, 4)
        return count > 0 && buffer[0] == UInt8(ascii: "1")
    }

    func close() {
        guard mutable.withLock({ m -> Bool in
            m.failAllWrites = false
            m.failAfterPulses = nil
            return m.fd >= 0
        }) else { return }
        try? driveAllInactive()
        mutable.withLock { m in
            Foundation.close(m.fd)
            m.fd = -1
        }
    }
}
