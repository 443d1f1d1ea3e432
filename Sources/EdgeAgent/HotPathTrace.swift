import Foundation
import Locking

/// When each step of a payment's way to its first pulse happened (CLOCK_MONOTONIC
/// nanoseconds, the clock of the edge log and of `pulsebridge-bench`). Written by
/// `edge-agent run --trace-hot-path FILE`, one JSON line per credited payment, after its result
/// is durable: the benchmark splits publish → first edge into its pieces with it.
public struct HotPathMarks: Codable, Sendable, Hashable {
    public var paymentId: String
    /// The network thread's callback began.
    public var arrived: UInt64
    /// The pipeline took it up.
    public var pipeline: UInt64
    /// The envelope was opened and its signature verified.
    public var verified: UInt64
    /// Duplicate look-up and checks done, plan made; the train handed to the engine.
    public var decided: UInt64
    /// On the pulse thread: inhibit checked and lines driven inactive; the start record begins.
    public var trainBegan: UInt64
    /// The "train started" record was committed (synced).
    public var committed: UInt64
    /// The first edge.
    public var firstEdge: UInt64
}

/// The trace file: appended with one `write(2)` per payment.
final class HotPathTrace: Sendable {
    private let fd: Int32

    init(path: String) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
    }

    deinit { close(fd) }

    func record(_ marks: HotPathMarks) {
        var line = (try? JSONEncoder().encode(marks)) ?? Data()
        line.append(UInt8(ascii: "\n"))
        _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }
}

