import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import MessageSchema

/// Why a firmware update failed, as `firmware.reported` says it (`reason`).
public struct FirmwareFailure: Error, Sendable, CustomStringConvertible {
    /// Short machine-readable reason: `download_failed`, `size_mismatch`, `sha256_mismatch`,
    /// `install_failed`, `not_healthy`, `updates_disabled`.
    public var reason: String
    public var detail: String
    public var description: String { "\(reason): \(detail)" }
}

/// A downloaded artifact whose size and SHA-256 match its signed update.
struct VerifiedFirmware: Sendable {
    var update: FirmwareUpdate
    var artifact: String
}

/// fsync of a file or folder, so a switch survives power loss.
func syncPath(_ path: String) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    fsync(fd)
    close(fd)
}

/// The install folder of a unit that updates itself:
///
///     INSTALL/versions/<version>/edge-agent    each version's binary
///     INSTALL/current  -> versions/<version>   what the supervisor starts
///     INSTALL/previous -> versions/<version>   what a rollback returns to
public struct FirmwareLayout: Sendable {
    public var installDirectory: String
    public init(installDirectory: String) { self.installDirectory = installDirectory }

    public var current: String { installDirectory + "/current" }
    public var previous: String { installDirectory + "/previous" }
    public func versionDirectory(_ version: String) -> String { installDirectory + "/versions/\(version)" }
    /// The binary the supervisor runs.
    public var currentBinary: String { current + "/edge-agent" }

    /// The version `current` points at.
    public var currentVersion: String? { Self.target(current) }
    public var previousVersion: String? { Self.target(previous) }

    static func target(_ link: String) -> String? {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: link)).map { URL(fileURLWithPath: $0).lastPathComponent }
    }

    /// Points `link` at versions/`version`, atomically (a new link renamed over the old).
    public func point(_ link: String, at version: String) throws {
        let temporary = link + ".tmp-\(getpid())"
        unlink(temporary)
        guard symlink("versions/\(version)", temporary) == 0, rename(temporary, link) == 0 else {
            throw FirmwareFailure(reason: "install_failed", detail: "cannot switch \(link): \(String(cString: strerror(errno)))")
        }
        syncPath(installDirectory)
    }

    /// Installs a verified artifact as `version`: its own folder, `previous` := what ran,
    /// `current` := the new one, switched atomically. The previous version stays.
    public func install(artifact: String, version: String) throws {
        let directory = versionDirectory(version)
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let binary = directory + "/edge-agent"
            if FileManager.default.fileExists(atPath: binary) { try FileManager.default.removeItem(atPath: binary) }
            try FileManager.default.moveItem(atPath: artifact, toPath: binary)
            chmod(binary, 0o755)
            // The binary's bytes and its name are on disk before any link points at it.
            syncPath(binary)
            syncPath(directory)
        } catch {
            throw FirmwareFailure(reason: "install_failed", detail: "\(error)")
        }
        if let running = currentVersion, running != version { try point(previous, at: running) }
        try point(current, at: version)
    }

    /// Back to `previous`.
    public func rollBack() throws {
        guard let previous = previousVersion else {
            throw FirmwareFailure(reason: "install_failed", detail: "no previous version to roll back to")
        }
        try point(current, at: previous)
    }
}

/// What is under way, kept in the state folder across the restart into a new version.
public struct PendingFirmware: Codable, Sendable, Hashable {
    public enum Stage: String, Codable, Sendable {
        /// Installed; the new version has to come online to confirm it.
        case installed
        /// The new version did not come up healthy; `current` points back at the previous one.
        case rolledBack
    }
    public var version: String
    public var previousVersion: String?
    public var stage: Stage
    /// Starts of the new version that did not confirm it.
    public var failedStarts: Int

    public static func path(stateDirectory: String) -> String { stateDirectory + "/firmware-pending.json" }

    public static func load(stateDirectory: String) -> PendingFirmware? {
        guard let data = FileManager.default.contents(atPath: path(stateDirectory: stateDirectory)) else { return nil }
        return try? JSONDecoder().decode(PendingFirmware.self, from: data)
    }

    public func save(stateDirectory: String) throws {
        let path = Self.path(stateDirectory: stateDirectory)
        try JSONEncoder().encode(self).write(to: URL(fileURLWithPath: path + ".tmp"))
        guard rename(path + ".tmp", path) == 0 else { throw FirmwareFailure(reason: "install_failed", detail: "cannot write \(path)") }
    }

    public static func clear(stateDirectory: String) {
        unlink(path(stateDirectory: stateDirectory))
    }
}

/// Downloads an artifact, never keeping more bytes than the message announced; `verify`
/// checks size and SHA-256 before anything of it runs.
public enum FirmwareDownload {
    /// The size and SHA-256 of what arrived at `path`.
    public struct Fetched: Sendable {
        public var size: Int
        public var sha256: String
    }

    public static func fetch(_ update: FirmwareUpdate, to path: String, timeout: TimeInterval = 120) async throws -> Fetched {
        guard let url = URL(string: update.url) else {
            throw FirmwareFailure(reason: "download_failed", detail: "'\(update.url)' is not a URL")
        }
        let delegate = CappedDownload(path: path, limit: update.size)
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = 30
        configuration.timeoutIntervalForResource = timeout
        let session = URLSession(configuration: configuration, delegate: delegate, delegateQueue: nil)
        defer { session.finishTasksAndInvalidate() }
        try await delegate.run(session.dataTask(with: url))
        let (size, sha256) = delegate.result()
        return Fetched(size: size, sha256: sha256)
    }

    /// Makes the download folder and checks it has room for `room` bytes and a margin: a
    /// download must never fill the disk the unit runs from.
    public static func prepare(directory: String, room: Int) throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw FirmwareFailure(reason: "download_failed", detail: "cannot make \(directory): \(error)")
        }
        var stats = statvfs()
        guard statvfs(directory, &stats) == 0 else {
            throw FirmwareFailure(reason: "download_failed", detail: "cannot read free space of \(directory): \(String(cString: strerror(errno)))")
        }
        let free = Int(stats.f_bavail) * Int(stats.f_frsize)
        let margin = 16 << 20
        guard free >= room + margin else {
            throw FirmwareFailure(
                reason: "no_space", detail: "\(directory) has \(free) bytes free; the artifact needs \(room) and \(margin) to spare")
        }
    }

    /// Throws unless `fetched` is exactly the announced artifact; removes it if not.
    public static func verify(_ fetched: Fetched, against update: FirmwareUpdate, at path: String) throws {
        let (size, sha256) = (fetched.size, fetched.sha256)
        guard size == update.size else {
            unlink(path)
            throw FirmwareFailure(reason: "size_mismatch", detail: "got \(size) bytes, the update says \(update.size)")
        }
        guard sha256 == update.sha256 else {
            unlink(path)
            throw FirmwareFailure(reason: "sha256_mismatch", detail: "got \(sha256), the update says \(update.sha256)")
        }
    }
}

/// Streams a response to a file and its hash; cancels past `limit` bytes.
private final class CappedDownload: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    // @unchecked: URLSession calls the delegate on its own serial queue; `lock` guards the rest.
    private let lock = NSLock()
    private let path: String
    private let limit: Int
    private var fd: Int32 = -1
    private let hasher = SHA256Hasher()
    private var received = 0
    private var failure: FirmwareFailure?
    private var continuation: CheckedContinuation<Void, any Error>?

    init(path: String, limit: Int) {
        self.path = path
        self.limit = limit
    }

    func run(_ task: URLSessionDataTask) async throws {
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw FirmwareFailure(reason: "download_failed", detail: "cannot create \(path): \(String(cString: strerror(errno)))")
        }
        try await withCheckedThrowingContinuation { continuation in
            lock.withLock { self.continuation = continuation }
            task.resume()
        }
    }

    func result() -> (Int, String) { lock.withLock { (received, hasher.finalizeHex()) } }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse, completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        if let http = response as? HTTPURLResponse, http.statusCode != 200 {
            lock.withLock { failure = FirmwareFailure(reason: "download_failed", detail: "HTTP \(http.statusCode) from \(response.url?.absoluteString ?? "?")") }
            completionHandler(.cancel)
            return
        }
        completionHandler(.allow)
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        lock.withLock {
            received += data.count
            if received > limit {
                failure = FirmwareFailure(reason: "size_mismatch", detail: "more than the announced \(limit) bytes")
                dataTask.cancel()
                return
            }
            hasher.update(data)
            // write(2), not FileHandle.write: a full disk is an error to report, not a trap.
            let written = data.withUnsafeBytes { bytes -> Int in
                var offset = 0
                while offset < bytes.count {
                    let n = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
                    if n < 0 {
                        if errno == EINTR { continue }
                        return -Int(errno)
                    }
                    offset += n
                }
                return offset
            }
            if written < 0 {
                let code = Int32(-written)
                failure = FirmwareFailure(
                    reason: code == ENOSPC ? "no_space" : "download_failed", detail: "writing \(path): \(String(cString: strerror(code)))")
                dataTask.cancel()
            }
        }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
        let (continuation, failure) = lock.withLock { () -> (CheckedContinuation<Void, any Error>?, FirmwareFailure?) in
            defer { self.continuation = nil }
            if fd >= 0 {
                if self.failure == nil, error == nil, fsync(fd) != 0 {
                    self.failure = FirmwareFailure(reason: "download_failed", detail: "fsync \(path): \(String(cString: strerror(errno)))")
                }
                close(fd)
                fd = -1
            }
            return (self.continuation, self.failure)
        }
        if let failure {
            unlink(path)
            continuation?.resume(throwing: failure)
        } else if let error {
            unlink(path)
            continuation?.resume(throwing: FirmwareFailure(reason: "download_failed", detail: "\(error.localizedDescription)"))
        } else {
            continuation?.resume()
        }
    }
}
