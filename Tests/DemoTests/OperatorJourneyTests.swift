import Foundation
import LocalServices
import MessageSchema
import Testing
import TestSupport

/// What a new operator does, run as they would: every `sh` block of docs/operations.md,
/// docs/firmware.md and docs/payment-server.md in order, in one bash, as root, with the **release** binaries on `PATH`
/// (`PULSEBRIDGE_RELEASE_BIN`, set by scripts/test.sh after `swift build -c release`), against
/// a broker started from broker-config/mosquitto.conf the way a service runs it. Then a build
/// that crashes at start is rolled out and must be rolled back with `current` right.
@Suite(.serialized, .timeLimit(.minutes(12)))
struct OperatorJourneyTests {
    static let releaseBin = ProcessInfo.processInfo.environment["PULSEBRIDGE_RELEASE_BIN"]

    /// The `sh` blocks of a Markdown file, in order.
    static func shellBlocks(_ path: String) throws -> [String] {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        var blocks: [String] = []
        var current: [Substring]?
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if current == nil, line == "```sh" {
                current = []
            } else if current != nil, line == "```" {
                blocks.append(current!.joined(separator: "\n"))
                current = nil
            } else if current != nil {
                current!.append(line)
            }
        }
        return blocks
    }

    @Test(.enabled(if: releaseBin != nil, "needs PULSEBRIDGE_RELEASE_BIN (scripts/test.sh builds the release binaries)"))
    func theDocumentedJourneyWithTheReleaseBinaries() async throws {
        var journey = try Journey("journey", docs: ["operations.md", "firmware.md", "payment-server.md", "console.md"])
        #expect(journey.steps >= 8)
        let scratch = journey.scratch
        let ports = try (0..<5).map { _ in try LoopbackPort.free() }
        journey.environment["PB_TLS_PORT"] = String(ports[0])
        journey.environment["PB_PORT"] = String(ports[1])
        journey.environment["PB_FIRMWARE_PORT"] = String(ports[2])
        journey.environment["PB_PAY_PORT"] = String(ports[3])
        journey.environment["PB_CONSOLE_PORT"] = String(ports[4])
        let (status, output) = try await journey.run()
        #expect(status == .exited(0), "the documented steps failed:\n\(output.suffix(6000))")
        guard status == .exited(0) else {
            await Self.stopEverything(scratch)
            return
        }

        // What the steps should have left behind.
        #expect(output.contains(": credited; amount 400 JPY; pulses coin×4 fired 4 → capture"))
        #expect(output.contains("wash-01: configuration applied") || output.contains("configuration applied"))
        #expect(output.contains("installed 1, failed 0, untouched 0"))
        #expect(output.contains("\"action\":\"capture\""))
        #expect(output.contains("u-alice"))
        #expect(output.contains("payment_id,machine_id,user_id,issued_at"), "the console's CSV, downloaded with a session")

        #expect(output.contains("payment-server.toml: ok (2 machines, provider simulated)"))
        #expect(output.contains("Washer 1") && output.contains(">Ready<"), "the payment page of laundry-01 is up and ready")
        #expect(try String(contentsOfFile: scratch + "/var/laundry-01.svg", encoding: .utf8).hasPrefix("<?xml"))
        let install = FirmwareLayoutProbe(directory: scratch + "/var/units/wash-01/install")
        #expect(install.current == "0.3.0")
        // The broker runs as its own user, not root.
        // (Other tests' brokers run as root with `user root`: only this broker, by its config.)
        let brokerUser = try await Self.run(
            "/bin/sh", ["-c", "ps -o user= -p \"$(pgrep -d, -f '^mosquitto -c \(scratch)/etc/mosquitto.conf')\" | sort -u"])
        #expect(brokerUser.contains("mosquitto") && !brokerUser.contains("root"), "\(brokerUser)")

        // A build that crashes at start: rolled out, rolled back, `current` on what runs.
        var environment = journey.environment
        environment["PULSEBRIDGE_HOME"] = scratch + "/var/fleet"
        let crashing = scratch + "/var/edge-agent-0.4.0"
        try "#!/bin/sh\necho 'edge-agent 0.4.0: cannot start' >&2\nexit 3\n".write(toFile: crashing, atomically: true, encoding: .utf8)
        chmod(crashing, 0o755)
        let rollout = try await Self.run(
            "/bin/bash",
            ["-c", """
                set -e
                fleet-manager firmware publish --version 0.4.0 --artifact \(crashing) --url-base http://127.0.0.1:\(ports[2])
                fleet-manager firmware rollout --version 0.4.0 --machines wash-01 --wave 100% --timeout 120 || echo "rollout exit $?"
                fleet-manager wait wash-01 --online --timeout 60
                """],
            environment: environment)
        #expect(rollout.contains("failed 1"), "\(rollout)")
        #expect(rollout.contains("rollout exit 3"), "\(rollout)")
        #expect(install.current == "0.3.0")
        await Self.stopEverything(scratch)
    }

    /// docs/scale.md's large fleet: a broker from broker-config/mosquitto-files.conf (dropping
    /// to its user), `init --broker-admin password-file`, 2,000 units from a CSV (twice: the
    /// second run provisions nothing), a real agent online, a payment, a revocation.
    @Test(.enabled(if: releaseBin != nil, "needs PULSEBRIDGE_RELEASE_BIN (scripts/test.sh builds the release binaries)"))
    func theLargeFleetJourneyWithTheReleaseBinaries() async throws {
        var journey = try Journey("scale", docs: ["scale.md"])
        #expect(journey.steps >= 5)
        let scratch = journey.scratch
        let ports = try (0..<3).map { _ in try LoopbackPort.free() }
        journey.environment["PB_IDENTITIES"] = scratch + "/identities"
        journey.environment["PB_PID_FILE"] = scratch + "/run/mosquitto.pid"
        journey.environment["PB_TLS_PORT"] = String(ports[0])
        journey.environment["PB_PORT"] = String(ports[1])
        journey.environment["PB_MANAGER_PORT"] = String(ports[2])
        journey.environment["PB_NATS_DIR"] = scratch + "/nats"
        journey.environment["PB_NATS_BASE"] = String(try LocalNATSCluster.freeBase())
        let (status, output) = try await journey.run()
        #expect(status == .exited(0), "the documented steps failed:\n\(output.suffix(6000))")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        guard status == .exited(0) else {
            _ = try? await Self.run("/bin/bash", [LocalMosquitto.brokerConfigDirectory + "/nats-cluster.sh", "stop", scratch + "/nats"])
            await Self.stopEverything(scratch)
            return
        }
        #expect(output.contains("provisioned: 2000, already provisioned (skipped): 0, failed: 0"), "\(output.suffix(3000))")
        #expect(output.contains("provisioned: 0, already provisioned (skipped): 2000, failed: 0"))
        #expect(output.contains(": credited; amount 300 JPY"))
        #expect(output.contains(": credited; amount 500 JPY"), "the payment through the NATS cluster")
        // 2,000 provisioned, one revoked: its password line is gone.
        #expect(output.hasSuffix("1999\n") || output.contains("\n1999\n"), "\(output.suffix(500))")
        let brokerUser = try await Self.run(
            "/bin/sh", ["-c", "ps -o user= -p \"$(pgrep -d, -f '^mosquitto -c \(scratch)/etc/mosquitto.conf')\" | sort -u"])
        #expect(brokerUser.contains("mosquitto") && !brokerUser.contains("root"), "\(brokerUser)")
        // The manager kept the files readable by the broker's group.
        let passwd = try FileManager.default.attributesOfItem(atPath: scratch + "/identities/passwd")
        #expect(passwd[.groupOwnerAccountName] as? String == "mosquitto")
        #expect((passwd[.posixPermissions] as? NSNumber)?.intValue == 0o640)
        _ = try? await Self.run("/bin/bash", [LocalMosquitto.brokerConfigDirectory + "/nats-cluster.sh", "stop", scratch + "/nats"])
        await Self.stopEverything(scratch)
    }

    /// A journey through docs: their `sh` blocks in order as one bash script in a scratch folder
    /// (which mosquitto, once it dropped to its user, can reach), run with the release binaries
    /// first on `PATH` and the variables every journey's steps read.
    struct Journey {
        let scratch: String
        let steps: Int
        var environment: [String: String]

        init(_ name: String, docs: [String]) throws {
            let root = LocalMosquitto.brokerConfigDirectory + "/.."
            let releaseBin = URL(fileURLWithPath: OperatorJourneyTests.releaseBin!, relativeTo: URL(fileURLWithPath: root)).standardizedFileURL.path
            scratch = "/tmp/pb-\(name)-\(UUID().uuidString.prefix(8))"
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            chmod(scratch, 0o755)
            let blocks = try docs.flatMap { try OperatorJourneyTests.shellBlocks(root + "/docs/" + $0) }
            steps = blocks.count
            var text = "set -euo pipefail\ncd \(root)\n"
            for (index, block) in blocks.enumerated() {
                text += "echo \"== step \(index + 1)\"\n\(block)\n"
            }
            try text.write(toFile: scratch + "/journey.sh", atomically: true, encoding: .utf8)
            environment = ProcessInfo.processInfo.environment
            environment["PATH"] = releaseBin + ":" + (environment["PATH"] ?? "/usr/bin:/bin")
            environment["PB_ETC"] = scratch + "/etc"
            environment["PB_VAR"] = scratch + "/var"
            environment["PB_BROKER_DATA"] = scratch + "/mosquitto"
            environment["PB_BROKER_LOG"] = "file:\(scratch)/mosquitto/mosquitto.log"
            environment["PB_TLS_BIND"] = "127.0.0.1"
            environment.removeValue(forKey: "PULSEBRIDGE_HOME")
        }

        /// The script to its end: how it exited, and what it printed.
        func run() async throws -> (ChildProcesses.ExitStatus, String) {
            let journey = try ChildProcess.spawn("/bin/bash", [scratch + "/journey.sh"], environment: environment, outputPath: scratch + "/journey.log")
            let status = await journey.waitForExit()
            return (status, journey.output())
        }
    }

    struct FirmwareLayoutProbe {
        var directory: String
        var current: String? {
            (try? FileManager.default.destinationOfSymbolicLink(atPath: directory + "/current")).map { URL(fileURLWithPath: $0).lastPathComponent }
        }
    }

    /// Runs a command to its end; its output.
    static func run(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) async throws -> String {
        let out = NSTemporaryDirectory() + "journey-step-\(UUID().uuidString).out"
        let child = try ChildProcess.spawn(executable, arguments, environment: environment, outputPath: out)
        _ = await child.waitForExit()
        return child.output()
    }

    /// The journey left daemons behind, as an operator's shell would: the agents, serve and the
    /// broker, all found by the scratch folder in their command lines.
    static func stopEverything(_ scratch: String) async {
        _ = try? await run("/bin/sh", ["-c", "pkill -TERM -f '\(scratch)' ; for i in $(seq 50); do pgrep -f '\(scratch)' >/dev/null || exit 0; sleep 0.1; done; pkill -KILL -f '\(scratch)'"])
    }
}
