import Foundation
import PulseBridgeVersion
import GRDB
import MQTT
import MessageSchema

/// A firmware version the fleet can roll out.
public struct FirmwareRelease: Sendable, Hashable, Codable {
    public var version: String
    public var sha256: String
    public var size: Int
    public var url: String
}

/// One unit's last `firmware.reported`.
public struct FirmwareStatusRow: Sendable, Hashable, Codable {
    public var machineId: String
    public var running: String?
    public var reportedVersion: String?
    public var state: String?
    public var reason: String?
}

/// What a rollout did.
public struct RolloutReport: Sendable {
    public var waves: [[MachineID]] = []
    public var installed: [MachineID] = []
    public var failed: [(machine: MachineID, reason: String)] = []
    /// Units the rollout never touched (after an abort).
    public var untouched: [MachineID] = []
    public var aborted = false
}

extension Registry {
    public func addRelease(_ release: FirmwareRelease) throws {
        try database.write { db in
            try db.execute(
                sql: """
                    INSERT INTO firmwareRelease (version, sha256, size, url, publishedAt) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT(version) DO UPDATE SET sha256 = excluded.sha256, size = excluded.size, url = excluded.url, publishedAt = excluded.publishedAt
                    """,
                arguments: [release.version, release.sha256, release.size, release.url, Self.now()])
        }
    }

    public func release(_ version: String) throws -> FirmwareRelease? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM firmwareRelease WHERE version = ?", arguments: [version]).map {
                FirmwareRelease(version: $0["version"], sha256: $0["sha256"], size: $0["size"], url: $0["url"])
            }
        }
    }

    public func firmwareStatus() throws -> [FirmwareStatusRow] {
        try database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT m.id, u.firmware, f.version, f.state, f.reason FROM machine m
                    LEFT JOIN unitState u ON u.id = m.id LEFT JOIN firmwareState f ON f.id = m.id
                    WHERE m.state = 'provisioned' ORDER BY m.id
                    """
            ).map { FirmwareStatusRow(machineId: $0["id"], running: $0["firmware"], reportedVersion: $0["version"], state: $0["state"], reason: $0["reason"]) }
        }
    }
}

/// `fleet-manager firmware`: publish a release, roll it out in waves with abort criteria.
public struct FirmwareManager: Sendable {
    let home: FleetHome

    public init(home: FleetHome) { self.home = home }

    public var artifactsDirectory: String { home.path + "/firmware" }

    /// Records `artifact` as `version`: copied under the fleet home (served from there), with
    /// its SHA-256 and size; its URL is `urlBase/<version>/edge-agent`.
    public func publish(version: String, artifact: String, urlBase: String?) throws -> FirmwareRelease {
        guard NameRules.isFirmwareVersion(version) else {
            throw FleetError("'\(version)' is not a firmware version", hint: "1 to 64 of A-Z a-z 0-9 . _ -")
        }
        guard let data = FileManager.default.contents(atPath: artifact), !data.isEmpty else {
            throw FleetError("cannot read the artifact \(artifact)")
        }
        // The version a unit will report is the one stamped in the binary: they must agree,
        // or the rollout would end `not_healthy` on every unit.
        if let stamped = VersionStamp.version(ofBinaryAt: artifact), stamped != version {
            throw FleetError(
                "the artifact reports version \(stamped), not \(version)",
                hint: "stamp it first: fleet-manager firmware stamp --artifact \(artifact) --version \(version) --out edge-agent-\(version)")
        }
        guard let base = urlBase ?? home.settings.firmwareUrlBase else {
            throw FleetError("no URL base for firmware downloads", hint: "pass --url-base http://HOST:PORT (where `serve --firmware-listen` runs)")
        }
        let directory = artifactsDirectory + "/\(version)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try data.write(to: URL(fileURLWithPath: directory + "/edge-agent"))
        let release = FirmwareRelease(
            version: version, sha256: SHA256Hasher.hex(of: data), size: data.count,
            url: base.hasSuffix("/") ? "\(base)\(version)/edge-agent" : "\(base)/\(version)/edge-agent")
        try home.registry.addRelease(release)
        return release
    }

    /// Publishes the signed `firmware` for `version` to the units in waves of `wave` (a
    /// fraction), each wave only after the previous one finished; aborts when failures reach
    /// `maxFailures` (units not started yet are not touched). A unit that reports neither
    /// `installed` nor `failed` within `timeout` counts as failed.
    public func rollout(
        version: String, machines: [MachineID], wave: Double, maxFailures: Int, timeout: Duration,
        client: MQTTClient, progress: @Sendable (String) -> Void = { _ in }
    ) async throws -> RolloutReport {
        guard let release = try home.registry.release(version) else {
            throw FleetError("no release \(version)", hint: "publish it first: fleet-manager firmware publish --version \(version) --artifact FILE")
        }
        guard wave > 0, wave <= 1 else { throw FleetError("--wave must be between 1% and 100%") }
        let (kid, key) = try home.signingKey(.fleet)
        let waveSize = max(1, Int((Double(machines.count) * wave).rounded(.up)))
        var report = RolloutReport()
        let reports = Reports()
        let topics = home.topics
        try await client.subscribe(topics.filter(.firmwareReported))
        let listener = Task {
            for await message in client.messages {
                // Attributed to the machine its topic names; a body naming another is ignored.
                guard let (machine, _) = topics.parse(message.topic),
                    let reported = try? WireCoding.decode(FirmwareReported.self, from: message.payload),
                    reported.machineId == machine, reported.version == version
                else { continue }
                reports.add(reported)
            }
        }
        defer { listener.cancel() }

        var remaining = machines[...]
        while !remaining.isEmpty {
            if report.failed.count >= maxFailures {
                report.aborted = true
                report.untouched = Array(remaining)
                progress("aborted: \(report.failed.count) failure(s) reached --max-failures \(maxFailures); \(remaining.count) unit(s) untouched")
                break
            }
            let units = Array(remaining.prefix(waveSize))
            remaining = remaining.dropFirst(units.count)
            report.waves.append(units)
            reports.startWave(units)
            progress("wave \(report.waves.count): \(units.map(\.rawValue).joined(separator: ", "))")
            for machine in units {
                let update = FirmwareUpdate(
                    machineId: machine, version: release.version, url: release.url, sha256: release.sha256, size: release.size,
                    issuedAt: Int(Date().timeIntervalSince1970 * 1000))
                try await client.publish(
                    topic: topics.topic(.firmwareDesired, for: machine), payload: SignedEnvelope.sign(update, kid: kid, key: key).encoded(),
                    qos: .atLeastOnce, retain: true)
            }
            let outcomes = await reports.wait(for: units, timeout: timeout)
            for machine in units {
                switch outcomes[machine] {
                case .installed?:
                    report.installed.append(machine)
                case .failed(let reason)?:
                    report.failed.append((machine, reason))
                case nil:
                    report.failed.append((machine, "timeout"))
                }
            }
            progress("wave \(report.waves.count) done: \(report.installed.count) installed, \(report.failed.count) failed so far")
        }
        return report
    }
}

/// Firmware reports for the current wave, as they arrive.
private final class Reports: @unchecked Sendable {
    enum Outcome { case installed, failed(String) }
    // @unchecked: every field is behind `lock`.
    private let lock = NSLock()
    private var wave: Set<MachineID> = []
    private var outcomes: [MachineID: Outcome] = [:]
    private var waiter: CheckedContinuation<Void, Never>?

    func startWave(_ units: [MachineID]) {
        lock.withLock {
            wave = Set(units)
            outcomes = [:]
        }
    }

    func add(_ report: FirmwareReported) {
        let resume: CheckedContinuation<Void, Never>? = lock.withLock {
            // Only reports that arrive after the wave was published count (not retained old ones).
            guard wave.contains(report.machineId) else { return nil }
            switch report.state {
            case .installed: outcomes[report.machineId] = .installed
            case .failed: outcomes[report.machineId] = .failed(report.reason ?? "failed")
            default: return nil
            }
            guard outcomes.count == wave.count, let waiter else { return nil }
            self.waiter = nil
            return waiter
        }
        resume?.resume()
    }

    func wait(for units: [MachineID], timeout: Duration) async -> [MachineID: Outcome] {
        let timer = Task {
            // Cancelled when the wave finished in time: it must not wake the next wave's waiter.
            do { try await Task.sleep(for: timeout) } catch { return }
            let resume: CheckedContinuation<Void, Never>? = self.lock.withLock {
                defer { self.waiter = nil }
                return self.waiter
            }
            resume?.resume()
        }
        await withCheckedContinuation { continuation in
            let done = lock.withLock { () -> Bool in
                if outcomes.count == wave.count { return true }
                waiter = continuation
                return false
            }
            if done { continuation.resume() }
        }
        timer.cancel()
        return lock.withLock {
            let result = outcomes
            wave = []
            return result
        }
    }
}
