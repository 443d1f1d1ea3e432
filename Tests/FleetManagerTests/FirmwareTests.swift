import EdgeAgent
import FleetManager
import Foundation
import LocalServices
import MQTT
import MessageSchema
import PulseBridgeVersion
import Testing
import TestSupport

/// Self-updating units: each runs `edge-agent supervise` over its own install folder; each
/// version is the real agent binary stamped with that version (`VersionStamp`, as
/// `fleet-manager firmware stamp` does); a version that crashes at start is a script.
struct UpdatingUnit {
    let machine: MachineID
    let directory: String
    var install: String { directory + "/install" }
    var state: String { directory + "/state" }
    var layout: FirmwareLayout { FirmwareLayout(installDirectory: install) }
    var supervisor: ChildProcess

    /// Writes an artifact at `path`: the agent stamped as `version`, or one that crashes at
    /// start (before any of its code runs).
    static func writeArtifact(version: String, crashes: Bool = false, to path: String) throws {
        if crashes {
            try "#!/bin/sh\necho \"version \(version) crashes at start\" >&2\nexit 3\n".write(toFile: path, atomically: true, encoding: .utf8)
            chmod(path, 0o755)
        } else {
            try VersionStamp.stamp(AgentUnit.binary, version: version, to: path)
        }
    }

    static func start(_ fleet: DynsecFleet, _ machine: MachineID) throws -> UpdatingUnit {
        let directory = NSTemporaryDirectory() + "pb-fw-\(UUID().uuidString)"
        let layout = FirmwareLayout(installDirectory: directory + "/install")
        let initial = directory + "/initial"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try writeArtifact(version: "0.1.0", to: initial)
        try layout.install(artifact: initial, version: "0.1.0")
        let supervisor = try ChildProcess.spawn(
            AgentUnit.binary,
            ["supervise", "--install-dir", layout.installDirectory, "--bundle", fleet.home.bundlesDirectory + "/\(machine.rawValue).json",
             "--state-dir", directory + "/state", "--gpio", "sim:\(directory)/edges", "--log-level", "debug", "--health-timeout", "20"],
            outputPath: directory + "/supervisor.log")
        return UpdatingUnit(machine: machine, directory: directory, supervisor: supervisor)
    }
}

@Suite(.serialized, .timeLimit(.minutes(8)))
struct FirmwareTests {
    /// A fleet with an artifact server, `count` provisioned units running under supervise, and
    /// a payment-server view of their statuses.
    func withUpdatingFleet(_ count: Int, _ body: (DynsecFleet, [UpdatingUnit], Inbox, ArtifactServer) async throws -> Void) async throws {
        try await DynsecFleet.with { fleet in
            let server = try ArtifactServer(root: FirmwareManager(home: fleet.home).artifactsDirectory, host: "127.0.0.1")
            defer { server.stop() }
            let machines = (1...count).map { MachineID(unchecked: String(format: "fw-%02d", $0)) }
            for machine in machines { _ = try await fleet.provisioner.provision(machine) }
            let watcher = try await fleet.home.settings.manager.connect(clientID: "fw-watcher")
            let inbox = Inbox(watcher)
            try await watcher.subscribe(fleet.home.topics.filter(.status))
            try await watcher.subscribe(fleet.home.topics.filter(.firmwareReported))
            var units: [UpdatingUnit] = []
            for machine in machines { units.append(try UpdatingUnit.start(fleet, machine)) }
            for unit in units { _ = try await Self.online(inbox, unit.machine, firmware: "0.1.0") }
            do {
                try await body(fleet, units, inbox, server)
            } catch {
                for unit in units { await unit.supervisor.terminate(grace: .seconds(10)) }
                await watcher.close()
                throw error
            }
            for unit in units { await unit.supervisor.terminate(grace: .seconds(10)) }
            await watcher.close()
        }
    }

    static func online(_ inbox: Inbox, _ machine: MachineID, firmware: String, timeout: Duration = .seconds(30)) async throws -> StatusMessage {
        let message = try await inbox.next("\(machine) online with \(firmware)", timeout: timeout) { message in
            guard let status = try? WireCoding.decode(StatusMessage.self, from: message.payload) else { return false }
            return status.machineId == machine && status.state == .online && status.firmware == firmware
        }
        return try WireCoding.decode(StatusMessage.self, from: message.payload)
    }

    static func report(_ inbox: Inbox, _ machine: MachineID, _ state: FirmwareState, timeout: Duration = .seconds(30)) async throws -> FirmwareReported {
        let message = try await inbox.next("\(machine) firmware \(state.rawValue)", timeout: timeout) { message in
            guard let report = try? WireCoding.decode(FirmwareReported.self, from: message.payload) else { return false }
            return report.machineId == machine && report.state == state
        }
        return try WireCoding.decode(FirmwareReported.self, from: message.payload)
    }

    func release(_ fleet: DynsecFleet, _ server: ArtifactServer, version: String, crashes: Bool = false) throws -> FirmwareRelease {
        let file = NSTemporaryDirectory() + "artifact-\(UUID().uuidString)"
        try UpdatingUnit.writeArtifact(version: version, crashes: crashes, to: file)
        return try FirmwareManager(home: fleet.home).publish(version: version, artifact: file, urlBase: "http://127.0.0.1:\(server.port)")
    }

    /// One version per build, stamped in the binary: `--version` says it, the agent reports it,
    /// and `firmware publish` refuses an artifact published under another version.
    @Test func theStampedVersionIsTheVersion() async throws {
        let stamped = NSTemporaryDirectory() + "edge-agent-stamped-\(UUID().uuidString)"
        try VersionStamp.stamp(AgentUnit.binary, version: "7.8.9", to: stamped)
        #expect(VersionStamp.version(ofBinaryAt: stamped) == "7.8.9")
        #expect(VersionStamp.version(ofBinaryAt: AgentUnit.binary) == PulseBridgeVersion.current)
        let run = try ChildProcess.spawn(stamped, ["--version"], outputPath: stamped + ".out")
        #expect(await run.waitForExit() == .exited(0))
        #expect(run.output().trimmingCharacters(in: .whitespacesAndNewlines) == "7.8.9")
        #expect(throws: VersionStamp.Failure.self) { try VersionStamp.stamp(AgentUnit.binary, version: "../x", to: stamped + "-bad") }
        #expect(throws: VersionStamp.Failure.self) { try VersionStamp.stamp("/bin/sh", version: "1.0.0", to: stamped + "-sh") }
        try await DynsecFleet.with { fleet in
            let error = #expect(throws: FleetError.self) {
                try FirmwareManager(home: fleet.home).publish(version: "7.8.10", artifact: stamped, urlBase: "http://127.0.0.1:1")
            }
            #expect(error?.description.contains("reports version 7.8.9") == true)
            let release = try FirmwareManager(home: fleet.home).publish(version: "7.8.9", artifact: stamped, urlBase: "http://127.0.0.1:1")
            #expect(release.version == "7.8.9")
        }
    }

    @Test func rolloutToTenUnitsInWavesOfThirtyPercent() async throws {
        try await withUpdatingFleet(10) { fleet, units, inbox, server in
            _ = try release(fleet, server, version: "1.1.0")
            let report = try await withManager(fleet) { client in
                try await FirmwareManager(home: fleet.home).rollout(
                    version: "1.1.0", machines: units.map(\.machine), wave: 0.3, maxFailures: 1, timeout: .seconds(60), client: client)
            }
            let logs = { (machine: MachineID) -> String in
                let unit = units.first { $0.machine == machine }!
                return readTextFile(unit.directory + "/supervisor.log")
            }
            #expect(!report.aborted)
            #expect(report.waves.map(\.count) == [3, 3, 3, 1])
            #expect(report.installed.count == 10)
            #expect(report.failed.isEmpty, "\(report.failed)\n\(report.failed.first.map { logs($0.machine).suffix(4000) } ?? "")")
            for unit in units {
                _ = try await Self.online(inbox, unit.machine, firmware: "1.1.0")
                #expect(unit.layout.currentVersion == "1.1.0")
                #expect(unit.layout.previousVersion == "0.1.0")
            }
        }
    }

    @Test func corruptedArtifactFailsVerifyingAndTheRolloutAborts() async throws {
        try await withUpdatingFleet(10) { fleet, units, inbox, server in
            let release = try release(fleet, server, version: "1.2.0")
            // One byte of the served artifact changes after its hash was recorded.
            let path = FirmwareManager(home: fleet.home).artifactsDirectory + "/1.2.0/edge-agent"
            var bytes = try Data(contentsOf: URL(fileURLWithPath: path))
            bytes[bytes.count - 2] ^= 0x01
            try bytes.write(to: URL(fileURLWithPath: path))
            #expect(bytes.count == release.size)

            let report = try await withManager(fleet) { client in
                try await FirmwareManager(home: fleet.home).rollout(
                    version: "1.2.0", machines: units.map(\.machine), wave: 0.3, maxFailures: 2, timeout: .seconds(60), client: client)
            }
            #expect(report.aborted)
            #expect(report.waves.count == 1)
            #expect(report.failed.count == 3)
            #expect(report.failed.allSatisfy { $0.reason == "sha256_mismatch" })
            // It failed at `verifying`: that step was reported before the failure.
            _ = try await Self.report(inbox, report.failed[0].machine, .verifying)
            #expect(report.untouched.count == 7)
            for unit in units {
                #expect(unit.layout.currentVersion == "0.1.0")
                #expect(!FileManager.default.fileExists(atPath: unit.install + "/versions/1.2.0"))
            }
            // The untouched units never got the update.
            #expect(await !inbox.topicsSeen.contains(fleet.home.topics.topic(.firmwareReported, for: units[9].machine)))
        }
    }

    @Test func unsignedOrWronglySignedUpdateIsIgnoredAndReported() async throws {
        try await withUpdatingFleet(1) { fleet, units, inbox, server in
            let release = try release(fleet, server, version: "1.3.0")
            let unit = units[0]
            let update = FirmwareUpdate(
                machineId: unit.machine, version: "1.3.0", url: release.url, sha256: release.sha256, size: release.size, issuedAt: 0)
            let (paymentKid, paymentKey) = try fleet.home.signingKey(.payment)
            try await withManager(fleet) { client in
                // Signed by a payment key: unknown_key.
                try await client.publish(
                    topic: fleet.home.topics.topic(.firmwareDesired, for: unit.machine),
                    payload: SignedEnvelope.sign(update, kid: paymentKid, key: paymentKey).encoded(), retain: true)
            }
            let refused = try await Self.report(inbox, unit.machine, .failed)
            #expect(refused.reason == "unknown_key")
            try await withManager(fleet) { client in
                // Not signed at all (a bare body where an envelope belongs): malformed.
                try await client.publish(
                    topic: fleet.home.topics.topic(.firmwareDesired, for: unit.machine), payload: WireCoding.encode(update), retain: true)
            }
            let unsigned = try await Self.report(inbox, unit.machine, .failed)
            #expect(unsigned.reason == "malformed")
            #expect(unit.layout.currentVersion == "0.1.0")
            #expect(!FileManager.default.fileExists(atPath: unit.install + "/versions/1.3.0"))
        }
    }

    @Test func versionThatCrashesAtStartIsRolledBackAndReportedFailed() async throws {
        try await withUpdatingFleet(1) { fleet, units, inbox, server in
            _ = try release(fleet, server, version: "2.0.0", crashes: true)
            let unit = units[0]
            let report = try await withManager(fleet) { client in
                try await FirmwareManager(home: fleet.home).rollout(
                    version: "2.0.0", machines: [unit.machine], wave: 1, maxFailures: 1, timeout: .seconds(60), client: client)
            }
            #expect(report.failed.map(\.reason) == ["not_healthy"])
            _ = try await Self.online(inbox, unit.machine, firmware: "0.1.0")
            #expect(unit.layout.currentVersion == "0.1.0")
            #expect(try String(contentsOfFile: unit.directory + "/supervisor.log", encoding: .utf8).contains("rolled back"))
        }
    }

    @discardableResult
    func withManager<T: Sendable>(_ fleet: DynsecFleet, _ body: (MQTTClient) async throws -> T) async throws -> T {
        try await fleet.home.settings.manager.withClient(clientID: "fw-\(UUID().uuidString.prefix(8).lowercased())", body)
    }
}
