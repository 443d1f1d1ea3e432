import Foundation

/// A tmpfs of a given size mounted for one test (root only, as CI runs): a real file system
/// that really fills up.
public final class SmallFileSystem: Sendable {
    public let path: String

    public init(at path: String, megabytes: Int) throws {
        self.path = path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        guard mount("tmpfs", path, "tmpfs", 0, "size=\(megabytes)m") == 0 else {
            throw SmallFileSystemError(detail: "mount tmpfs at \(path): \(String(cString: strerror(errno))) (the tests run as root)")
        }
    }

    /// Writes `file` until the disk is full.
    public func fill(_ file: String) {
        let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0x55, count: 1 << 16)
        while chunk.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) > 0 {}
    }

    public func unmount() {
        umount2(path, Int32(MNT_DETACH))
    }
}

public struct SmallFileSystemError: Error, CustomStringConvertible {
    public var detail: String
    public var description: String { detail }
    public init(detail: String) { self.detail = detail }
}

