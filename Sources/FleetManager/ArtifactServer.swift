import Foundation
import Logging
import Synchronization

/// A small HTTP/1.1 server for firmware artifacts: `GET /<version>/<file>` from one folder,
/// nothing else. `serve --firmware-listen` runs it; units download from it and check size and
/// SHA-256 themselves, so it needs no TLS to be safe (use a URL base on HTTPS to hide traffic).
public final class ArtifactServer: Sendable {
    public let root: String
    public let port: Int
    private let listener: Int32
    private let stopped = Atomic<Bool>(false)
    private let logger: Logger
    /// Connections served at once; more wait in the kernel's backlog.
    public let maxConnections: Int
    private let slots: DispatchSemaphore
    /// A connection that sends no complete request (or takes no bytes) this long is closed.
    public let ioTimeout: Duration
    /// Connections being served now (for tests and logs).
    public let active = Atomic<Int>(0)

    /// Listens on `host:port` (port 0: any free port).
    public init(
        root: String, host: String = "0.0.0.0", port: Int = 0, maxConnections: Int = 32, ioTimeout: Duration = .seconds(10),
        logger: Logger = Logger(label: "pulsebridge.artifacts")
    ) throws {
        self.root = root
        self.logger = logger
        self.maxConnections = maxConnections
        self.slots = DispatchSemaphore(value: maxConnections)
        self.ioTimeout = ioTimeout
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw FleetError("cannot open a socket: \(String(cString: strerror(errno)))") }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr(host)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(fd, pointer, length) == 0 && listen(fd, 64) == 0 && getsockname(fd, pointer, &length) == 0
            }
        }
        guard bound else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw FleetError("cannot listen on \(host):\(port) for firmware downloads: \(reason)", hint: "choose another --firmware-listen port")
        }
        listener = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
        let thread = Thread { [self] in acceptLoop() }
        thread.name = "artifact-server"
        thread.start()
    }

    /// Stops accepting connections.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// Accepts until stopped: at most `maxConnections` at once, each on its own thread with
    /// read and write deadlines. An accept error (out of descriptors, memory, a connection
    /// aborted) is logged and retried after a pause; only `stop()` ends the loop.
    private func acceptLoop() {
        var pause = 10
        while !stopped.load(ordering: .relaxed) {
            slots.wait()
            let connection = accept(listener, nil, nil)
            if connection < 0 {
                let code = errno
                slots.signal()
                if stopped.load(ordering: .relaxed) { return }
                if code == EINTR { continue }
                logger.error("cannot accept a firmware download connection: \(String(cString: strerror(code))); retrying in \(pause) ms")
                usleep(UInt32(pause * 1000))
                pause = min(pause * 2, 1000)
                continue
            }
            pause = 10
            var timeout = timeval(tv_sec: Int(ioTimeout.components.seconds), tv_usec: Int(ioTimeout.components.attoseconds / 1_000_000_000_000))
            setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            active.add(1, ordering: .relaxed)
            let thread = Thread { [self] in
                serve(connection)
                active.subtract(1, ordering: .relaxed)
                slots.signal()
            }
            thread.start()
        }
    }

    private func serve(_ fd: Int32) {
        defer { close(fd) }
        var request = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while request.count < 8192 {
            let count = read(fd, &buffer, buffer.count)
            guard count > 0 else { return }
            request += buffer[0..<count]
            if request.count >= 4, request.suffix(4) == [13, 10, 13, 10] || String(decoding: request, as: UTF8.self).contains("\r\n\r\n") { break }
        }
        let line = String(decoding: request, as: UTF8.self).split(separator: "\r\n").first.map(String.init) ?? ""
        let parts = line.split(separator: " ")
        guard parts.count >= 2, parts[0] == "GET" else { return respond(fd, 405, "Method Not Allowed") }
        let path = String(parts[1])
        // Only /<name>/<name>: no traversal, no absolute paths.
        let components = path.split(separator: "/")
        guard components.count == 2, components.allSatisfy({ $0 != ".." && $0 != "." && !$0.hasPrefix(".") }) else {
            return respond(fd, 404, "Not Found")
        }
        let file = root + "/" + components.joined(separator: "/")
        guard FileManager.default.fileExists(atPath: file) else { return respond(fd, 404, "Not Found") }
        // The file exists: failing to open it now (out of descriptors) is this server's
        // trouble, not a missing artifact — 503, and the unit tries again.
        guard let handle = FileHandle(forReadingAtPath: file),
            let size = (try? FileManager.default.attributesOfItem(atPath: file)[.size]) as? Int
        else { return respond(fd, 503, "Service Unavailable") }
        defer { try? handle.close() }
        let header = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: \(size)\r\nConnection: close\r\n\r\n"
        guard writeAll(fd, Array(header.utf8)) else { return }
        while let chunk = try? handle.read(upToCount: 65536), !chunk.isEmpty {
            guard writeAll(fd, Array(chunk)) else { return }
        }
        logger.debug("served \(path) (\(size) bytes)")
    }

    private func respond(_ fd: Int32, _ code: Int, _ text: String) {
        _ = writeAll(fd, Array("HTTP/1.1 \(code) \(text)\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8))
    }

    private func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }
}
