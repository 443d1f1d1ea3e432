import Foundation
import MessageSchema

/// How far the running train got, overwritten in place after every pulse (no fsync: it must
/// not slow the pulse thread). After a crash of the process it tells `pulsesFired` of the
/// interrupted train exactly; after a power loss it may lag (a lower bound). Decisions never
/// depend on it: an interrupted train is `uncertain` whatever it says.
struct TrainProgressError: Error, CustomStringConvertible {
    var description: String
}

final class TrainProgress: @unchecked Sendable {
    // @unchecked: written only from the pulse thread during a train, read at start-up.
    private let fd: Int32
    private static let recordSize = 160

    init(path: String) throws {
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw TrainProgressError(description: "cannot open the train progress file \(path): \(String(cString: strerror(errno))) (the state folder must be writable by the agent's user)")
        }
    }

    deinit { close(fd) }

    /// Records that `count` pulses of `paymentId`'s train completed.
    func record(_ paymentId: PaymentID, fired count: Int) {
        var text = "\(paymentId.rawValue) \(count)\n"
        text += String(repeating: " ", count: max(0, Self.recordSize - text.utf8.count))
        _ = text.utf8.withContiguousStorageIfAvailable { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    /// Pulses recorded for `paymentId`, if the last record is about it.
    func fired(_ paymentId: PaymentID) -> Int? {
        var buffer = [UInt8](repeating: 0, count: Self.recordSize)
        let count = pread(fd, &buffer, buffer.count, 0)
        guard count > 0 else { return nil }
        let fields = String(decoding: buffer.prefix(count), as: UTF8.self).split(whereSeparator: \.isWhitespace)
        guard fields.count >= 2, fields[0] == paymentId.rawValue else { return nil }
        return Int(fields[1])
    }
}
