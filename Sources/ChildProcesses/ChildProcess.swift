import Foundation
import Synchronization
import Locking
internal import CSpawn

/// How a child process ended.
public enum ExitStatus: Sendable, Hashable, CustomStringConvertible {
    case exited(Int32)
    case signalled(Int32)

    public var description: String {
        switch self {
        case .exited(let code): "exited with code \(code)"
        case .signalled(let signal): "killed by signal \(signal)"
        }
    }
}

/// Why a child process could not be started.
public struct ChildProcessError: Error, Sendable, CustomStringConvertible {
    public var executable: String
    public var reason: String
    public var description: String { "cannot start \(executable): \(reason)" }
}

/// A child process started with `posix_spawn`, with every signal unblocked and reset to
/// its default action.
///
/// `Foundation.Process` started from inside a test runner passes on the runner's blocked
/// signal mask: a mosquitto started that way ignores SIGTERM and the run hangs. Here the
/// mask is emptied (`POSIX_SPAWN_SETSIGMASK`) and dispositions reset (`POSIX_SPAWN_SETSIGDEF`).
/// A dedicated thread waits in `waitpid`, so waiting for the exit costs nothing.
public final class ChildProcess: Sendable {
    public let pid: pid_t
    public let executable: String
    public let arguments: [String]
    /// Where the child's standard output and error go (appended), if anywhere.
    public let outputPath: String?

    private struct ExitState {
        var status: ExitStatus?
        var waiters: [CheckedContinuation<ExitStatus, Never>] = []
    }
    private let exitState = Locked(ExitState())

    private init(pid: pid_t, executable: String, arguments: [String], outputPath: String?) {
        self.pid = pid
        self.executable = executable
        self.arguments = arguments
        self.outputPath = outputPath
    }

    /// Starts `executable` (a path, or a name looked up in `PATH`) with `arguments`.
    /// Standard input is /dev/null; output goes to `outputPath` (appended), or is the parent's
    /// own with `inheritOutput`, or /dev/null.
    public static func spawn(
        _ executable: String, _ arguments: [String] = [], environment: [String: String]? = nil,
        outputPath: String? = nil, inheritOutput: Bool = false
    ) throws -> ChildProcess {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if !inheritOutput {
            posix_spawn_file_actions_addopen(
                &actions, 1, outputPath ?? "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0o644)
            posix_spawn_file_actions_adddup2(&actions, 1, 2)
        }
        // Nothing else of ours goes to the child: a descriptor another thread has open at this
        // moment (a file being written without O_CLOEXEC) would otherwise stay open in the
        // child for its whole life, and exec'ing that file then fails with "Text file busy".
        posix_spawn_file_actions_addclosefrom_np(&actions, 3)

        let argv = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        let environmentStrings = (environment ?? ProcessInfo.processInfo.environment)
            .map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in environmentStrings { free(pointer) } }

        var pid: pid_t = 0
        let rc = posix_spawnp(&pid, executable, &actions, &attributes, argv, environmentStrings)
        guard rc == 0 else {
            throw ChildProcessError(executable: executable, reason: String(cString: strerror(rc)))
        }
        let child = ChildProcess(pid: pid, executable: executable, arguments: arguments, outputPath: outputPath)
        let reaper = Thread { child.reap() }
        reaper.name = "reap-\(pid)"
        reaper.start()
        return child
    }

    private func reap() {
        var status: Int32 = 0
        var rc: pid_t
        repeat { rc = waitpid(pid, &status, 0) } while rc == -1 && errno == EINTR
        // WIFEXITED / WEXITSTATUS / WTERMSIG are macros; decode the status word directly.
        let exit: ExitStatus = (status & 0x7f) == 0 ? .exited((status >> 8) & 0xff) : .signalled(status & 0x7f)
        let waiters = exitState.withLock { s in
            s.status = exit
            defer { s.waiters = [] }
            return s.waiters
        }
        for waiter in waiters { waiter.resume(returning: exit) }
    }

    /// The exit status, or nil while it runs.
    public var exitStatus: ExitStatus? { exitState.withLock { $0.status } }
    public var isRunning: Bool { exitStatus == nil }

    /// Sends `signal` (SIGTERM, SIGKILL, SIGSTOP, ...) unless the child has already been reaped.
    public func send(_ signal: Int32) {
        if isRunning { kill(pid, signal) }
    }

    /// Waits until the child exits.
    public func waitForExit() async -> ExitStatus {
        await withCheckedContinuation { continuation in
            let status: ExitStatus? = exitState.withLock { s in
                if let status = s.status { return status }
                s.waiters.append(continuation)
                return nil
            }
            if let status { continuation.resume(returning: status) }
        }
    }

    /// Waits until the child exits or `timeout` passes (nil then).
    public func waitForExit(timeout: Duration) async -> ExitStatus? {
        await withTaskGroup(of: ExitStatus?.self) { group in
            group.addTask { await self.waitForExit() }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            let first = await group.next()!
            group.cancelAll()
            if first != nil { return first }
            return exitStatus
        }
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`.
    @discardableResult
    public func terminate(grace: Duration = .seconds(5)) async -> ExitStatus {
        send(SIGTERM)
        if let status = await waitForExit(timeout: grace) { return status }
        send(SIGKILL)
        return await waitForExit()
    }

    /// SIGKILL and wait: what a power cut does to a process.
    @discardableResult
    public func killAndWait() async -> ExitStatus {
        send(SIGKILL)
        return await waitForExit()
    }

    /// What the child wrote to its output file so far.
    public func output() -> String {
        // An empty file is not read: Foundation's `contents(atPath:)` leaks its 4 KiB read
        // buffer for an empty file (LeakSanitizer shows it in the asan stage).
        guard let outputPath, let size = (try? FileManager.default.attributesOfItem(atPath: outputPath))?[.size] as? Int, size > 0,
            let data = FileManager.default.contents(atPath: outputPath)
        else { return "" }
        return String(decoding: data, as: UTF8.self)
    }
}
