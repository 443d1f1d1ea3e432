import ArgumentParser
import EdgeAgent
import Foundation
import DaemonSupport
import MessageSchema
import Logging
import PulseBridgeVersion
import RelayOutput
import ServiceLifecycle

@main
struct EdgeAgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edge-agent",
        abstract: "PulseBridge edge agent: turns signed payments into coin pulses on this machine.",
        version: PulseBridgeVersion.current,
        subcommands: [Run.self, Supervise.self])

    /// `run` and `supervise` take their settings from `--config FILE` (TOML, one file for
    /// both) and `PULSEBRIDGE_AGENT_*` too.
    static func main() async {
        await mainWithSettings([
            "run": { LayeredSettings(command: Run.self, commandName: "edge-agent run", environmentPrefix: "PULSEBRIDGE_AGENT_", siblings: [Supervise.self]) },
            "supervise": {
                LayeredSettings(command: Supervise.self, commandName: "edge-agent supervise", environmentPrefix: "PULSEBRIDGE_AGENT_", siblings: [Run.self])
            },
        ])
    }
}

/// `--config`'s help, the same for `run` and `supervise`.
let configHelp = ArgumentHelp(
    "Settings file (TOML key = value lines; the keys are the options' names, one file for run and supervise). Options on the command line and PULSEBRIDGE_AGENT_* environment variables override it.",
    valueName: "file")

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the agent until SIGTERM or SIGINT.",
        discussion: """
            The bundle is the JSON file `fleet-manager provision` wrote for this unit (docs/bundle.md).
            Without --gpio the relay lines are driven through libgpiod; --gpio sim:EDGE_LOG drives
            simulated lines that log every edge to EDGE_LOG (EDGE_LOG.inhibit and EDGE_LOG.fault
            steer the simulated machine).
            """)

    @Option(help: "The device bundle (JSON) written at provisioning.")
    var bundle: String

    @Option(help: "Folder for the agent's durable state.")
    var stateDir = "/var/lib/pulsebridge"

    @Option(help: "Line driver: 'gpiod' (default) or 'sim:EDGE_LOG'.")
    var gpio = "gpiod"

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    @Option(help: LogFormat.help)
    var logFormat = LogFormat.text

    @Option(help: configHelp)
    var config: String?

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
    }

    @Option(help: "Install folder for firmware updates (versions/, current, previous); without it updates are refused.")
    var installDir: String?

    @Option(help: "Install a verified artifact with this command (gets ARTIFACT VERSION) instead of the symlink switch.")
    var installCommand: String?

    @Option(help: "Seconds a new firmware version has to come online before it rolls back.")
    var healthTimeout = 60

    @Option(help: "Folder for firmware downloads (default: INSTALL_DIR/downloads; never the state folder).")
    var downloadDir: String?

    @Flag(help: "Refuse payments (as expired) while the kernel says the clock is not synchronised (NTP).")
    var requireClockSync = false

    @Option(help: ArgumentHelp("Append when each credited payment reached each step to its first pulse (JSON lines; for pulsebridge-bench).", valueName: "file"))
    var traceHotPath: String?

    func run() async throws {
        LogFormat.bootstrap(logFormat, level: Logger.Level(rawValue: logLevel) ?? .info)
        let logger = Logger(label: "pulsebridge.edge-agent")

        let loaded: AgentBundle
        do {
            loaded = try AgentBundle.load(from: bundle)
        } catch {
            fail("\(error)")
        }
        let driver: any LineDriver
        if gpio == "gpiod" {
            driver = GPIODLineDriver()
        } else if gpio.hasPrefix("sim:"), gpio.count > 4 {
            driver = SimulatedLineDriver(edgeLogPath: String(gpio.dropFirst(4)))
        } else {
            fail("--gpio '\(gpio)' is neither 'gpiod' nor 'sim:EDGE_LOG'")
        }
        let firmware = AgentVersion.built
        let agent: EdgeAgent
        do {
            var options = AgentOptions(bundle: loaded, stateDirectory: stateDir, lineDriver: driver, firmwareVersion: firmware)
            options.installDirectory = installDir
            options.installCommand = installCommand
            options.healthTimeout = .seconds(healthTimeout)
            options.downloadDirectory = downloadDir
            options.requireClockSync = requireClockSync
            options.hotPathTracePath = traceHotPath
            agent = try EdgeAgent(options: options, logger: logger)
        } catch {
            fail("cannot open the state in \(stateDir): \(error)")
        }
        let group = ServiceGroup(
            configuration: .init(
                services: [.init(service: agent, successTerminationBehavior: .gracefullyShutdownGroup)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }

    /// One clear line and exit code 2: what went wrong is the operator's to fix, not a crash.
    func fail(_ message: String) -> Never {
        FileHandle.standardError.write(Data("edge-agent: \(message)\n".utf8))
        Foundation.exit(2)
    }
}
