import ArgumentParser
import DaemonSupport
import Foundation
import LocalServices
import MessageSchema
import Testing
import TestSupport

/// Settings files and environment variables beneath the command line (`--config FILE`,
/// `PULSEBRIDGE_AGENT_*`): the flat part of TOML, the command's own option names, the command
/// line winning over the environment winning over the file, and clear errors.
@Suite(.timeLimit(.minutes(3)))
struct SettingsTests {
    struct Toy: ParsableCommand {
        @Option var stateDir = "/var/lib/x"
        @Option var healthTimeout = 60
        @Option var logLevel = "info"
        @Flag var requireClockSync = false
        @Option var config: String?
    }

    struct Sibling: ParsableCommand {
        @Option var maxFailedStarts = 2
        @Option var stateDir = "/var/lib/x"
    }

    static let settings = LayeredSettings(command: Toy.self, commandName: "toy run", environmentPrefix: "TOY_", siblings: [Sibling.self])

    func file(_ text: String) throws -> String {
        let path = NSTemporaryDirectory() + "settings-\(UUID().uuidString).toml"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func flatTOMLValues() throws {
        let entries = try LayeredSettings.parse(
            """
            # a comment
            state-dir = "/var/lib/pulse\\"bridge"   # trailing comment
            health_timeout = 1_000
            log-level = 'debug'
              require-clock-sync = true

            empty = ""
            hash = "a # inside"
            """, path: "f.toml")
        #expect(entries.map(\.key) == ["state-dir", "health_timeout", "log-level", "require-clock-sync", "empty", "hash"])
        #expect(entries.map(\.value) == [
            .string("/var/lib/pulse\"bridge"), .integer(1000), .string("debug"), .boolean(true), .string(""), .string("a # inside"),
        ])
        #expect(entries.map(\.line) == [2, 3, 4, 5, 7, 8])
    }

    @Test(arguments: [
        ("[agent]\nx = 1", "line 1: tables"),
        ("x = [1, 2]", "arrays"),
        ("a.b = 1", "not a plain key"),
        ("x = \"open", "not closed"),
        ("x = '''multi", "multi-line"),
        ("x = yes", "'yes' is not a value"),
        ("x", "expected key = value"),
        ("x = 1 2", "unexpected '2'"),
        ("x = 1\n\nx = 2", "line 3: 'x' is set again (first on line 1)"),
        ("x = 1\nx_ = 2\nx-y = 1\nx_y = 2", "line 4: 'x_y' is set again (first on line 3)"),
        ("x = \"\\q\"", "unknown escape"),
    ])
    func malformedFilesNameTheLine(text: String, mentions: String) {
        #expect {
            try LayeredSettings.parse(text, path: "/etc/x.toml")
        } throws: { error in
            "\(error)".contains(mentions) && "\(error)".contains("/etc/x.toml line")
        }
    }

    /// The file, then the environment, then the command line: the last value of an option
    /// wins, so the command line wins.
    @Test func commandLineBeatsEnvironmentBeatsFile() throws {
        let path = try file("state-dir = \"/from/file\"\nhealth-timeout = 30\nlog-level = \"debug\"\nrequire-clock-sync = true\n")
        let arguments = try Self.settings.arguments(
            ["--config", path, "--log-level", "error"], environment: ["TOY_HEALTH_TIMEOUT": "45", "TOY_LOG_LEVEL": "notice", "OTHER": "x"])
        let parsed = try Toy.parse(arguments)
        #expect(parsed.stateDir == "/from/file")
        #expect(parsed.healthTimeout == 45)
        #expect(parsed.logLevel == "error")
        #expect(parsed.requireClockSync)
    }

    @Test func noFileNoEnvironmentIsTheCommandLine() throws {
        #expect(try Self.settings.arguments(["--state-dir", "/x"], environment: [:]) == ["--state-dir", "/x"])
    }

    @Test func flagsFromTheEnvironment() throws {
        for (value, on) in [("1", true), ("true", true), ("yes", true), ("0", false), ("false", false), ("", false)] {
            let parsed = try Toy.parse(try Self.settings.arguments([], environment: ["TOY_REQUIRE_CLOCK_SYNC": value]))
            #expect(parsed.requireClockSync == on, "TOY_REQUIRE_CLOCK_SYNC=\(value)")
        }
        #expect(throws: SettingsError.self) { try Self.settings.arguments([], environment: ["TOY_REQUIRE_CLOCK_SYNC": "maybe"]) }
    }

    /// A sibling's setting (supervise's, in the agent's one file) is skipped; anything else
    /// that is not an option is refused, naming the file and line and listing the settings.
    @Test func unknownSettingsAreRefusedSiblingsSkipped() throws {
        let path = try file("max-failed-starts = 3\nstate-dir = \"/s\"\n")
        #expect(try Self.settings.arguments(["--config=\(path)"], environment: [:]) == ["--state-dir", "/s", "--config=\(path)"])

        let typo = try file("state-dir = \"/s\"\nheath-timeout = 3\n")
        #expect {
            try Self.settings.arguments(["--config", typo], environment: [:])
        } throws: { error in
            let text = "\(error)"
            return text.contains("\(typo) line 2: 'heath-timeout' is not a setting of toy run") && text.contains("health-timeout")
        }
        #expect(throws: SettingsError.self) { try Self.settings.arguments([], environment: ["TOY_NOPE": "1"]) }
        // `config` itself and one-shot options are not settings.
        let loop = try file("config = \"/etc/other.toml\"\n")
        #expect(throws: SettingsError.self) { try Self.settings.arguments(["--config", loop], environment: [:]) }
        // The wrong kind of value.
        let kind = try file("require-clock-sync = \"yes\"\n")
        #expect(throws: SettingsError.self) { try Self.settings.arguments(["--config", kind], environment: [:]) }
        let kind2 = try file("health-timeout = true\n")
        #expect(throws: SettingsError.self) { try Self.settings.arguments(["--config", kind2], environment: [:]) }
    }

    @Test func missingFileIsAClearError() {
        #expect {
            try Self.settings.arguments(["--config", "/nonexistent/agent.toml"], environment: [:])
        } throws: { error in
            "\(error)".contains("cannot read the config file /nonexistent/agent.toml: No such file or directory")
        }
    }

    /// The real agent from a settings file and the environment: it comes online with the
    /// file's bundle, state folder and simulated lines, and logs in the format the environment
    /// asks for; a bad file is one line naming it and exit code 2.
    @Test func theAgentRunsFromItsSettingsFile() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "settings-01"
            let unit = try fleet.unit(machine)
            let path = unit.directory + "/edge-agent.toml"
            try """
                # /etc/pulsebridge/edge-agent.toml on a unit
                bundle = "\(unit.bundlePath)"
                state-dir = "\(unit.stateDirectory)"
                gpio = "sim:\(unit.edgeLogPath)"
                max-failed-starts = 2   # supervise's: skipped by run
                """.write(toFile: path, atomically: true, encoding: .utf8)
            var environment = ProcessInfo.processInfo.environment
            environment["PULSEBRIDGE_AGENT_LOG_FORMAT"] = "json"
            let agent = try ChildProcess.spawn(AgentUnit.binary, ["run", "--config", path], environment: environment, outputPath: unit.logPath)
            _ = try await fleet.status(machine, .online)
            let payment = fleet.payment(machine, amount: 200)
            try await fleet.publish(payment)
            #expect(try await fleet.result(payment.paymentId, machine: machine).status == .credited)
            #expect(unit.activations(line: 17) == 2)
            _ = await agent.terminate(grace: .seconds(20))
            let firstLine = unit.log().split(separator: "\n").first.map(String.init) ?? ""
            #expect(firstLine.hasPrefix("{\"ts\":"), "JSON from PULSEBRIDGE_AGENT_LOG_FORMAT: \(firstLine)")

            try "bundle = \"\(unit.bundlePath)\"\nstate-dir = \"\(unit.stateDirectory)\"\nrelay = \"x\"\n"
                .write(toFile: path, atomically: true, encoding: .utf8)
            let bad = try ChildProcess.spawn(AgentUnit.binary, ["run", "--config", path], environment: environment, outputPath: unit.directory + "/bad.log")
            #expect(await bad.waitForExit(timeout: .seconds(20)) == .exited(2))
            let output = bad.output()
            #expect(output.contains("edge-agent run: \(path) line 3: 'relay' is not a setting of edge-agent run"), "\(output)")
            #expect(output.split(separator: "\n").count == 1)
        }
    }
}
