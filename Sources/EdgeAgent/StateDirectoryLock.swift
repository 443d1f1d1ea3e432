import Foundation

/// Another agent holds the state folder.
public struct StateFolderInUse: Error, CustomStringConvertible {
    public var directory: String
    public var holder: String?
    public var description: String {
        "another edge-agent\(holder.map { " (pid \($0))" } ?? "") is using the state folder \(directory); "
            + "one agent per unit: stop it first, or give this one its own --state-dir"
    }
}

/// An exclusive `flock` on `STATE/agent.lock`, held for the agent's life and released by the
/// kernel when the process ends (however it ends). Two agents on one journal would each fire
/// what the other decided; and the journal's in-memory index of decided payments assumes this
/// process is the file's only writer.
final class StateDirectoryLock: Sendable {
    private let descriptor: Int32

    init(directory: String) throws {
        let path = directory + "/agent.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path, NSLocalizedDescriptionKey: String(cString: strerror(errno))])
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            close(fd)
            throw StateFolderInUse(directory: directory, holder: holder?.isEmpty == false ? holder : nil)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
        descriptor = fd
    }

    deinit {
        close(descriptor)
    }
}
