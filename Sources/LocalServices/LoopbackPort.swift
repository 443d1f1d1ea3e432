import Foundation
import Locking

/// Loopback TCP ports for test brokers and agents.
public enum LoopbackPort {
    /// Every port `free()` handed out in this process. The kernel may pick a port again as soon
    /// as the probe socket closes; two tests starting brokers at once could then both get it,
    /// one broker fails to bind, and its test talks to the other test's broker. A port is handed
    /// out once per process.
    private static let handedOut = Locked<Set<Int>>([])

    /// A port that was free on 127.0.0.1 a moment ago (the kernel picks it), never one this
    /// process was given before.
    public static func free() throws -> Int {
        for _ in 0..<100 {
            let port = try kernelPick()
            if handedOut.withLock({ $0.insert(port).inserted }) { return port }
        }
        throw posixError("no loopback port not handed out before")
    }

    /// Whether 127.0.0.1:`port` can be bound now (nothing holds it).
    public static func canBind(_ port: Int) -> Bool {
        (try? bindLoopback(port)) != nil
    }

    private static func kernelPick() throws -> Int {
        try bindLoopback(0)
    }

    /// Binds a socket to 127.0.0.1:`port` (0: the kernel picks), closes it, and returns the
    /// port it had.
    private static func bindLoopback(_ port: Int) throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw posixError("socket") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else { throw posixError("bind 127.0.0.1:\(port)") }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// A loopback port that refuses connections for as long as the returned holder lives: it
    /// is bound but never listened on, so no other process can take it meanwhile.
    public static func refusing() throws -> RefusingPort {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw posixError("socket") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else {
            close(fd)
            throw posixError("bind 127.0.0.1:0")
        }
        return RefusingPort(fd: fd, port: Int(UInt16(bigEndian: address.sin_port)))
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port` now.
    public static func accepts(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    static func posixError(_ operation: String) -> LoopbackPortError {
        LoopbackPortError(operation: operation, reason: String(cString: strerror(errno)))
    }
}

/// Why no loopback port could be had.
public struct LoopbackPortError: Error, Sendable, CustomStringConvertible {
    public var operation: String
    public var reason: String
    public var description: String { "loopback port: \(operation): \(reason)" }
}

/// A port held closed; see `LoopbackPort.refusing()`.
public final class RefusingPort: Sendable {
    private let fd: Int32
    public let port: Int
    init(fd: Int32, port: Int) {
        self.fd = fd
        self.port = port
    }
    deinit { close(fd) }
}
