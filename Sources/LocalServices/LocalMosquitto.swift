@_exported import ChildProcesses
import Foundation
import Logging
import Synchronization
import Locking

/// Why a local broker could not be started.
public struct LocalMosquittoError: Error, Sendable, CustomStringConvertible {
    public var description: String
}

/// A real mosquitto on a free loopback port, with its own temporary folder (config,
/// persistence, log), for tests, benchmarks and the demo. Always `stop()` it; `restart()`
/// brings it back on the same port with its persistence kept.
public final class LocalMosquitto: Sendable {
    /// The loopback port it listens on.
    public let port: Int
    public let host = "127.0.0.1"
    /// Its folder: `mosquitto.conf`, `mosquitto.db`, `mosquitto.log`.
    public let directory: String
    /// Extra configuration lines appended to the template (listeners, ACL, passwords, ...).
    public let extraConfiguration: String
    /// The template in broker-config/templates (`test` or `dynsec`).
    public let template: String
    /// With the `dynsec` template: the password of the dynamic-security admin `admin`.
    public let adminPassword: String?
    /// With the `files` template: the loopback port of the manager's own listener (client IDs
    /// are not replaced by usernames there). `port` is the units' and payment servers'.
    public let adminPort: Int?
    /// With the `files` template: the broker's pid file (`pid_file`).
    public var pidPath: String { directory + "/mosquitto.pid" }

    private let process: Locked<ChildProcess?>
    private let logger: Logger

    /// The broker's configuration file.
    public var configPath: String { directory + "/mosquitto.conf" }
    /// The broker's log.
    public var logPath: String { directory + "/mosquitto.log" }

    private init(port: Int, adminPort: Int?, directory: String, extraConfiguration: String, template: String, adminPassword: String?, logger: Logger) {
        self.port = port
        self.adminPort = adminPort
        self.directory = directory
        self.extraConfiguration = extraConfiguration
        self.template = template
        self.adminPassword = adminPassword
        self.process = Locked(nil)
        self.logger = logger
    }

    /// The repository's `broker-config/` folder (or `$PULSEBRIDGE_BROKER_CONFIG`).
    public static var brokerConfigDirectory: String {
        if let override = ProcessInfo.processInfo.environment["PULSEBRIDGE_BROKER_CONFIG"] { return override }
        // Sources/LocalServices/LocalMosquitto.swift → repository root.
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("broker-config").path
    }

    /// Starts mosquitto from `broker-config/templates/test.conf` plus `extraConfiguration`
    /// (where `{{DATA_DIR}}` names the broker's folder) and waits until it accepts
    /// connections. Picks another port if the first one was taken meanwhile.
    public static func start(
        extraConfiguration: String = "", template: String = "test",
        logger: Logger = Logger(label: "pulsebridge.local-mosquitto")
    ) async throws -> LocalMosquitto {
        var lastError: (any Error)?
        for _ in 0..<5 {
            let directory = try makeTemporaryDirectory()
            let adminPassword = template == "dynsec" ? UUID().uuidString : nil
            let broker = LocalMosquitto(
                port: try LoopbackPort.free(), adminPort: template == "files" ? try LoopbackPort.free() : nil, directory: directory, extraConfiguration: extraConfiguration,
                template: template, adminPassword: adminPassword, logger: logger)
            do {
                if let adminPassword {
                    let script = brokerConfigDirectory + "/bootstrap-dynsec.sh"
                    let status = await (try ChildProcess.spawn("bash", [script, directory, adminPassword])).waitForExit()
                    guard status == .exited(0) else {
                        throw LocalMosquittoError(description: "bootstrap-dynsec.sh \(status)")
                    }
                }
                if template == "files" {
                    for file in ["passwd", "acl"] {
                        _ = FileManager.default.createFile(atPath: directory + "/" + file, contents: Data(), attributes: [.posixPermissions: 0o600])
                    }
                }
                try broker.writeConfiguration()
                try await broker.launch()
                return broker
            } catch {
                lastError = error
                try? FileManager.default.removeItem(atPath: directory)
            }
        }
        throw lastError!
    }

    /// Runs `body` with a fresh broker and stops the broker afterwards, also when it throws.
    public static func with<T: Sendable>(
        extraConfiguration: String = "", template: String = "test", _ body: (LocalMosquitto) async throws -> T
    ) async throws -> T {
        let broker = try await start(extraConfiguration: extraConfiguration, template: template)
        do {
            let result = try await body(broker)
            await broker.stop()
            return result
        } catch {
            await broker.stop()
            throw error
        }
    }

    private static func makeTemporaryDirectory() throws -> String {
        var template = Array((NSTemporaryDirectory() + "pulsebridge-broker-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw LoopbackPort.posixError("mkdtemp") }
        return String(cString: made)
    }

    private func writeConfiguration() throws {
        let templatePath = Self.brokerConfigDirectory + "/templates/\(template).conf"
        guard let template = FileManager.default.contents(atPath: templatePath) else {
            throw LocalMosquittoError(description: "broker template \(templatePath) is missing")
        }
        let text = String(decoding: template, as: UTF8.self)
            .replacingOccurrences(of: "{{EXTRA}}", with: extraConfiguration)
            .replacingOccurrences(of: "{{PORT}}", with: String(port))
            .replacingOccurrences(of: "{{ADMIN_PORT}}", with: adminPort.map(String.init) ?? "")
            .replacingOccurrences(of: "{{DATA_DIR}}", with: directory)
        try text.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    private func launch() async throws {
        let child = try ChildProcess.spawn("mosquitto", ["-c", configPath], outputPath: logPath)
        process.withLock { $0 = child }
        // Wait for the listener: probe with a short, growing pause, and give up early if
        // mosquitto exited (bad config, port taken).
        var pause = Duration.milliseconds(2)
        let deadline = ContinuousClock.now + .seconds(15)
        while ContinuousClock.now < deadline {
            if let status = child.exitStatus {
                throw LocalMosquittoError(
                    description: "mosquitto \(status) on port \(port):\n\(tail(of: logPath))")
            }
            if LoopbackPort.accepts(port), adminPort.map(LoopbackPort.accepts) ?? true {
                logger.debug("mosquitto ready", metadata: ["broker.port": "\(port)", "broker.pid": "\(child.pid)"])
                return
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(50))
        }
        await child.terminate(grace: .seconds(1))
        throw LocalMosquittoError(description: "mosquitto did not listen on port \(port) within 15 s:\n\(tail(of: logPath))")
    }

    /// Stops the broker (SIGTERM, so it saves its persistence; SIGKILL after 5 s).
    public func stop() async {
        guard let child = process.withLock({ p -> ChildProcess? in defer { p = nil }; return p }) else { return }
        await child.terminate(grace: .seconds(5))
    }

    /// Kills the broker with SIGKILL: no persistence saved since the last autosave.
    public func kill() async {
        guard let child = process.withLock({ p -> ChildProcess? in defer { p = nil }; return p }) else { return }
        await child.killAndWait()
    }

    /// Stops the broker and starts it again on the same port, with its persistence.
    public func restart() async throws {
        await stop()
        try await launch()
    }

    /// The broker process, for tests that freeze it (SIGSTOP) to hold back acknowledgements.
    public var processForTesting: ChildProcess? { process.withLock { $0 } }

    /// Whether the broker process is running.
    public var isRunning: Bool { process.withLock { $0?.isRunning ?? false } }

    /// The broker's log so far.
    public func log() -> String { tail(of: logPath, lines: Int.max) }

    /// Removes the broker's folder (after `stop()`).
    public func removeFiles() {
        try? FileManager.default.removeItem(atPath: directory)
    }
}

func tail(of path: String, lines: Int = 20) -> String {
    guard let data = FileManager.default.contents(atPath: path) else { return "(no log at \(path))" }
    return String(decoding: data, as: UTF8.self).split(separator: "\n").suffix(lines).joined(separator: "\n")
}
