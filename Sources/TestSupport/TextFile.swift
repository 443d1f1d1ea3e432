import Foundation

/// A file's text as it is now, or "" if it does not exist. With read(2): tests poll logs that
/// other processes are still writing, and Foundation's `String(contentsOfFile:)` leaks its
/// buffer (LeakSanitizer, Swift 6.3) when it races a file that is being created or grown.
public func readTextFile(_ path: String) -> String {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return "" }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = read(fd, &chunk, chunk.count)
        if count < 0, errno == EINTR { continue }
        guard count > 0 else { break }
        bytes.append(contentsOf: chunk[0..<count])
    }
    return String(decoding: bytes, as: UTF8.self)
}
