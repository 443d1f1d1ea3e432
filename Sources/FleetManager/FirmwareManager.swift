import Foundation
import PulseBridgeVersion
import GRDB
import Locking
import MQTT
import MessageSchema

/// A firmware version the fleet can roll out.
public struct FirmwareRelease: Sendable, Hashable, Codable {
    public var version: String
    public var sha256: String
    public var size: Int
    public var url: String

    public init(version: String, sha256: String, size: Int, url: String) {
        self.version = version
        self.sha256 = sha256
        self.size = size
        self.url = url
    }
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
    /// Units published to, whose report the rollout stopped waiting for (an operator's abort).
    public var abandoned: [MachineID] = []
    public var aborted = false
    public var abortReason: String?
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

    /// Every provisioned unit's firmware, or only the units in `rollout`.
    public func firmwareStatus(rollout: Int? = nil) throws -> [FirmwareStatusRow] {
        try database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT m.id, u.firmware, f.version, f.state, f.reason FROM machine m
                    LEFT JOIN unitState u ON u.id = m.id LEFT JOIN firmwareState f ON f.id = m.id
                    WHERE m.state = 'provisioned' \(rollout == nil ? "" : "AND m.id IN (SELECT machineId FROM rolloutUnit WHERE rolloutId = ?)")
                    ORDER BY m.id
                    """, arguments: StatementArguments(rollout.map { [$0] } ?? [])
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
    /// `installed` nor `failed` within `timeout` counts as failed. Recorded in the registry
    /// (`Registry.rollout`) as it goes.
    public func rollout(
        version: String, machines: [MachineID], wave: Double, maxFailures: Int, timeout: Duration,
        client: MQTTClient, by: String = AuditRecord.cliActor().actor, via: AuditRecord.Via = .cli, abort: RolloutAbort = RolloutAbort(),
        progress: @Sendable (String) -> Void = { _ in }
    ) async throws -> RolloutReport {
        let plan = try self.plan(version: version, machines: machines, wave: wave, maxFailures: maxFailures, timeout: timeout, by: by, via: via)
        return try await run(plan, client: client, abort: abort, progress: progress)
    }

    /// A rollout checked and recorded, not started: `run` starts it.
    public struct RolloutPlan: Sendable {
        public var id: Int
        public var release: FirmwareRelease
        public var waves: [[MachineID]]
        public var maxFailures: Int
        public var timeout: Duration
    }

    /// Checks a rollout (the release exists, the wave size, units named) and records its plan.
    public func plan(
        version: String, machines: [MachineID], wave: Double, maxFailures: Int, timeout: Duration, by: String, via: AuditRecord.Via
    ) throws -> RolloutPlan {
        guard let release = try home.registry.release(version) else {
            throw FleetError("no release \(version)", hint: "publish it first: fleet-manager firmware publish --version \(version) --artifact FILE")
        }
        guard wave > 0, wave <= 1 else { throw FleetError("--wave must be between 1% and 100%") }
        guard !machines.isEmpty else { throw FleetError("no units to roll out to", hint: "name units, or choose all") }
        guard maxFailures >= 1 else { throw FleetError("--max-failures must be at least 1") }
        let waveSize = max(1, Int((Double(machines.count) * wave).rounded(.up)))
        let waves = stride(from: 0, to: machines.count, by: waveSize).map { Array(machines[$0..<min(machines.count, $0 + waveSize)]) }
        let id = try home.registry.beginRollout(
            version: version, waves: waves, waveSize: waveSize, maxFailures: maxFailures, timeoutS: Int(timeout.components.seconds), by: by, via: via)
        return RolloutPlan(id: id, release: release, waves: waves, maxFailures: maxFailures, timeout: timeout)
    }

    /// Runs a recorded plan to its end: every wave, or until failures reach the limit or
    /// `abort` is called.
    public func run(
        _ plan: RolloutPlan, client: MQTTClient, abort: RolloutAbort = RolloutAbort(), progress: @Sendable (String) -> Void = { _ in }
    ) async throws -> RolloutReport {
        let registry = home.registry
        do {
            let report = try await waves(plan, client: client, abort: abort, progress: progress)
            let summary = "installed \(report.installed.count), failed \(report.failed.count), untouched \(report.untouched.count)"
            try registry.endRollout(plan.id, report.aborted ? .aborted : .completed, detail: report.abortReason.map { "\($0); \(summary)" } ?? summary)
            return report
        } catch {
            try? registry.interruptRollout(plan.id, detail: "stopped: \(error)")
            throw error
        }
    }

    private func waves(
        _ plan: RolloutPlan, client: MQTTClient, abort: RolloutAbort, progress: @Sendable (String) -> Void
    ) async throws -> RolloutReport {
        let release = plan.release
        let version = release.version
        let registry = home.registry
        let (kid, key) = try home.signingKey(.fleet)
        var report = RolloutReport()
        let reports = Reports()
        abort.onAbort { reports.wakeNow() }
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

        for (index, units) in plan.waves.enumerated() {
            let stop: String? =
                abort.isAborted
                ? "aborted by \(abort.by ?? "an operator")"
                : report.failed.count >= plan.maxFailures ? "\(report.failed.count) failure(s) reached --max-failures \(plan.maxFailures)" : nil
            if let stop {
                report.aborted = true
                report.abortReason = stop
                report.untouched = plan.waves[index...].flatMap { $0 }
                try registry.setRolloutUnits(plan.id, report.untouched, .untouched)
                progress("aborted: \(stop); \(report.untouched.count) unit(s) untouched")
                break
            }
            report.waves.append(units)
            reports.startWave(units)
            progress("wave \(report.waves.count): \(units.map(\.rawValue).joined(separator: ", "))")
            for machine in units {
                let update = FirmwareUpdate(
                    machineId: machine, version: release.version, url: release.url, sha256: release.sha256, size: release.size,
                    issuedAt: Registry.now())
                try await client.publish(
                    topic: topics.topic(.firmwareDesired, for: machine), payload: SignedEnvelope.sign(update, kid: kid, key: key).encoded(),
                    qos: .atLeastOnce, retain: true)
            }
            try registry.setRolloutUnits(plan.id, units, .sent)
            let outcomes = await reports.wait(for: units, timeout: plan.timeout)
            for machine in units {
                switch outcomes[machine] {
                case .installed?:
                    report.installed.append(machine)
                    try registry.setRolloutUnits(plan.id, [machine], .installed)
                case .failed(let reason)?:
                    report.failed.append((machine, reason))
                    try registry.setRolloutUnits(plan.id, [machine], .failed, reason: reason)
                case nil where abort.isAborted:
                    report.abandoned.append(machine)
                    try registry.setRolloutUnits(plan.id, [machine], .abandoned, reason: "the rollout was aborted before it reported")
                case nil:
                    report.failed.append((machine, "timeout"))
                    try registry.setRolloutUnits(plan.id, [machine], .failed, reason: "timeout")
                }
            }
            progress("wave \(report.waves.count) done: \(report.installed.count) installed, \(report.failed.count) failed so far")
        }
        if abort.isAborted && !report.aborted {
            report.aborted = true
            report.abortReason = "aborted by \(abort.by ?? "an operator") during the last wave"
        }
        return report
    }
}

/// Stops a running rollout: no further wave is published, and the wave being waited for is
/// not waited for any longer (its units that had not reported are `abandoned`).
public final class RolloutAbort: Sendable {
    let state = Locked<(aborted: Bool, by: String?, wake: (@Sendable () -> Void)?)>((false, nil, nil))

    public init() {}

    public func abort(by name: String) {
        let wake = state.withLock { state -> (@Sendable () -> Void)? in
            state.aborted = true
            state.by = name
            return state.wake
        }
        wake?()
    }

    public var isAborted: Bool { state.withLock { $0.aborted } }
    var by: String? { state.withLock { $0.by } }

    func onAbort(_ wake: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            state.wake = wake
            return state.aborted
        }
        if now { wake() }
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
    private var aborted = false

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

    /// Ends the current wait now (an abort).
    func wakeNow() {
        let resume: CheckedContinuation<Void, Never>? = lock.withLock {
            aborted = true
            defer { waiter = nil }
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
                if outcomes.count == wave.count || aborted { return true }
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
