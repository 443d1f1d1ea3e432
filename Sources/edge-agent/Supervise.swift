import ArgumentParser
import EdgeAgent
import Foundation
import DaemonSupport
import ChildProcesses

/// The stable part of a self-updating unit: systemd starts this (from a path updates never
/// replace); it runs `INSTALL/current/edge-agent run …`, restarts it when it exits, and rolls a
/// new version back when it keeps failing before it confirmed itself healthy.
struct Supervise: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run INSTALL/current/edge-agent and keep it running; roll back a new version that crashes at start.")

    @Option(help: "Install folder (versions/, current, previous).") var installDir: String
    @Option(help: "The device bundle.") var bundle: String
    @Option(help: "Folder for the agent's durable state.") var stateDir = "/var/lib/pulsebridge"
    @Option(help: "Line driver: 'gpiod' or 'sim:EDGE_LOG'.") var gpio = "gpiod"
    @Option(help: "Log level of the agent.") var logLevel = "info"
    @Option(help: LogFormat.help) var logFormat = LogFormat.text
    @Option(help: configHelp) var config: String?
    @Option(help: "Seconds a new version has to come online.") var healthTimeout = 60
    @Option(help: "Starts a new version may fail before it is rolled back.") var maxFailedStarts = 2

    func run() async throws {
        let layout = FirmwareLayout(installDirectory: installDir)
        let stop = SupervisorStop()
        let child = ChildSlot()
        stop.onSignal { child.forward(SIGTERM) }
        while !stop.requested {
            guard FileManager.default.isExecutableFile(atPath: layout.currentBinary) else {
                FileHandle.standardError.write(Data("edge-agent supervise: \(layout.currentBinary) is missing or not executable\n".utf8))
                throw ExitCode(2)
            }
            var arguments = ["run", "--bundle", bundle, "--state-dir", stateDir, "--gpio", gpio, "--log-level", logLevel,
                             "--install-dir", installDir, "--health-timeout", String(healthTimeout)]
            // Only when asked for: a version from before --log-format would refuse the option.
            if logFormat != .text { arguments += ["--log-format", logFormat.rawValue] }
            // The agent reads its own settings (those supervise does not have) from the same file.
            if let config { arguments += ["--config", config] }
            arguments = arguments.filter { !$0.isEmpty }
            let status = await child.run(layout.currentBinary, arguments)
            if stop.requested { break }
            if status != 0, var pending = PendingFirmware.load(stateDirectory: stateDir), pending.stage == .installed,
                pending.version == layout.currentVersion
            {
                pending.failedStarts += 1
                if pending.failedStarts >= maxFailedStarts, (try? layout.rollBack()) != nil {
                    pending.stage = .rolledBack
                    FileHandle.standardError.write(Data("edge-agent supervise: firmware \(pending.version) failed \(pending.failedStarts) starts; rolled back to \(layout.currentVersion ?? "?")\n".utf8))
                }
                try? pending.save(stateDirectory: stateDir)
            }
            // Do not spin on a binary that exits at once.
            try? await Task.sleep(for: .milliseconds(500))
        }
    }
}

/// SIGTERM/SIGINT for the supervisor: forwarded to the agent, then the loop ends.
final class SupervisorStop: @unchecked Sendable {
    // @unchecked: `flag` is only set from the signal sources' serial queue, read by the loop.
    private let lock = NSLock()
    private var flag = false
    private var sources: [DispatchSourceSignal] = []

    var requested: Bool { lock.withLock { flag } }

    func onSignal(_ forward: @escaping @Sendable () -> Void) {
        for sig in [SIGTERM, SIGINT] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig)
            source.setEventHandler { [self] in
                lock.withLock { flag = true }
                forward()
            }
            source.resume()
            sources.append(source)
        }
    }
}

/// The running agent process, for the signal handler to forward SIGTERM to.
final class ChildSlot: @unchecked Sendable {
    // @unchecked: `child` is behind `lock`.
    private let lock = NSLock()
    private var child: ChildProcess?

    func forward(_ signal: Int32) {
        lock.withLock { child }?.send(signal)
    }

    /// Runs `path` with `arguments` until it exits; returns its exit code (128+signal if killed).
    func run(_ path: String, _ arguments: [String]) async -> Int32 {
        guard let started = try? ChildProcess.spawn(path, arguments, inheritOutput: true) else { return 127 }
        lock.withLock { child = started }
        let status = await started.waitForExit()
        lock.withLock { child = nil }
        switch status {
        case .exited(let code): return code
        case .signalled(let signal): return 128 + signal
        }
    }
}
