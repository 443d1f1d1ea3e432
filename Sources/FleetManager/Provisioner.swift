import Foundation
import Logging
import MQTT
import MessageSchema

/// What provisioning one unit produced.
public struct ProvisionOutcome: Sendable, Hashable {
    public var machine: MachineID
    public var bundlePath: String
    public var configVersion: Int?
    public var rotated: Bool
}

/// The summary of a bulk run.
public struct BulkReport: Sendable {
    public var provisioned: [MachineID] = []
    public var alreadyProvisioned: [MachineID] = []
    /// Line number (1-based) and why.
    public var failed: [(line: Int, text: String, reason: String)] = []
}

/// Provisions, re-credentials and revokes units: registry, broker identity, signed initial
/// configuration (retained), device bundle.
public final class Provisioner: Sendable {
    let home: FleetHome
    public let backend: any ProvisioningBackend
    /// Connected as the fleet manager: publishes retained configurations, clears topics.
    let publisher: MQTTClient
    let logger: Logger

    public init(home: FleetHome, backend: any ProvisioningBackend, publisher: MQTTClient, logger: Logger = Logger(label: "pulsebridge.provision")) {
        self.home = home
        self.backend = backend
        self.publisher = publisher
        self.logger = logger
    }

    public static func newPassword() -> String {
        var bytes = [UInt8](repeating: 0, count: 24)
        for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255) }
        return Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
    }

    /// Provisions `machine`. An existing unit is an error unless `rotateCredentials`, which
    /// gives it a new password and a new bundle (configuration untouched).
    public func provision(
        _ machine: MachineID, profile: MachineProfile? = nil, rotateCredentials: Bool = false, bundlePath: String? = nil
    ) async throws -> ProvisionOutcome {
        guard !machine.isReserved else {
            throw FleetError(
                "'\(machine)' is reserved for a service identity and cannot name a machine",
                hint: "choose another ID; reserved: \(NameRules.reservedMachineNames.sorted().joined(separator: ", ")) and names starting \(NameRules.reservedMachinePrefixes.joined(separator: ", "))")
        }
        let existing = try home.registry.machine(machine)
        if let existing, existing.state == .revoked {
            throw FleetError("\(machine) was revoked", hint: "machine IDs are not reused; provision the unit under a new ID")
        }
        let password = Self.newPassword()
        let out = bundlePath ?? home.bundlesDirectory + "/\(machine.rawValue).json"
        if existing != nil {
            guard rotateCredentials else {
                throw FleetError(
                    "\(machine) is already provisioned",
                    hint: "to issue new credentials and a new bundle: --rotate-credentials (in the console: tick \"new credentials\")")
            }
            guard try await backend.isDeviceIdentity(machine) else {
                throw FleetError(
                    "the broker identity '\(machine)' is not this unit's", hint: "it was not made by provisioning; nothing was changed")
            }
            try await backend.setDevicePassword(machine, password: password)
            let envelope = try existing?.desiredConfig.map { try sign($0) }
            try writeBundle(machine, password: password, initialConfig: envelope, to: out)
            logger.info("credentials rotated", metadata: ["machine": "\(machine)"])
            return ProvisionOutcome(machine: machine, bundlePath: out, configVersion: existing?.desiredConfig?.version, rotated: true)
        }

        // The configuration is checked before anything is created.
        let config = try (profile ?? .standardCoin).config(
            for: machine, version: 1, currency: home.settings.currency, trust: try home.trustEntries())
        let envelope = try sign(config)
        do {
            try await backend.createDevice(machine, password: password, topics: home.topics)
        } catch let error as BrokerAdminError where error.kind == .alreadyExists {
            // Left over from an interrupted run: take it over with a fresh password, but only
            // if it is this unit's own identity (never a service's or anyone else's).
            guard try await backend.isDeviceIdentity(machine) else {
                throw FleetError(
                    "a broker identity named '\(machine)' exists and is not a unit's", hint: "nothing was changed; choose another machine ID")
            }
            try await backend.setDevicePassword(machine, password: password)
        }
        try home.registry.upsertMachine(machine)
        try await publisher.publish(
            topic: home.topics.topic(.configDesired, for: machine), payload: envelope, qos: .atLeastOnce, retain: true)
        try home.registry.setDesiredConfig(config)
        try writeBundle(machine, password: password, initialConfig: envelope, to: out)
        return ProvisionOutcome(machine: machine, bundlePath: out, configVersion: config.version, rotated: false)
    }

    func sign(_ config: MachineConfig) throws -> Data {
        let (kid, key) = try home.signingKey(.fleet)
        return SignedEnvelope.sign(config, kid: kid, key: key).encoded()
    }

    func writeBundle(_ machine: MachineID, password: String, initialConfig: Data?, to path: String) throws {
        var ca: String?
        if let file = home.settings.deviceCAFile {
            guard let pem = try? String(contentsOfFile: file, encoding: .utf8) else {
                throw FleetError("cannot read the broker CA \(file) named in the fleet settings", hint: "restore it or fix deviceCAFile")
            }
            ca = pem
        }
        var bundle = AgentBundle(
            machineId: machine, brokerUrl: home.settings.deviceBrokerUrl, caCertificate: ca, username: machine.rawValue,
            password: password, topicRoot: home.settings.topicRoot, trust: try home.trustEntries(),
            initialConfig: initialConfig.map { String(decoding: $0, as: UTF8.self) })
        bundle.alternateBrokerUrls = home.settings.deviceBrokerAlternates
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try FleetHome.writePrivate(encoder.encode(bundle), to: path)
    }

    /// Provisions every row of a CSV (`machineId[,profileFile]`, `,` or `;`, RFC 4180 quoting,
    /// `#` comments, optional header). A bad row does not stop the rest; units already provisioned are skipped, so a
    /// re-run is safe. `progress` is called after each row.
    public func provisionAll(
        csv path: String, concurrency: Int? = nil, progress: @escaping @Sendable (Int, Int) -> Void = { _, _ in }
    ) async throws -> BulkReport {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw FleetError("cannot read \(path)", hint: "check the path of the CSV file")
        }
        let base = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var report = BulkReport()
        var jobs: [(line: Int, machine: MachineID, profile: MachineProfile?)] = []
        var seen: [MachineID: Int] = [:]
        let rows: [CSVRows.Row]
        do {
            rows = try CSVRows.parse(text)
        } catch {
            throw FleetError("\(path) is not CSV: \(error)", hint: "machineId[,profileFile] per line; quote fields as RFC 4180 says")
        }
        for (index, record) in rows.enumerated() {
            let line = record.line
            let row = record.text
            let fields = record.fields
            if index == 0, fields[0].lowercased() == "machineid" { continue }
            guard fields.count <= 2 else {
                report.failed.append((line, row, "expected machineId[,profileFile], found \(fields.count) fields"))
                continue
            }
            guard let machine = MachineID(rawValue: fields[0]) else {
                report.failed.append((line, row, "'\(fields[0])' is not a machine ID (\(MachineID.rule))"))
                continue
            }
            if let first = seen[machine] {
                report.failed.append((line, row, "duplicate of line \(first)"))
                continue
            }
            seen[machine] = line
            var profile: MachineProfile?
            if fields.count == 2, !fields[1].isEmpty {
                let file = fields[1].hasPrefix("/") ? fields[1] : base + "/" + fields[1]
                do { profile = try MachineProfile.load(file) } catch {
                    report.failed.append((line, row, "\(error)"))
                    continue
                }
            }
            if let existing = try home.registry.machine(machine), existing.state == .provisioned {
                report.alreadyProvisioned.append(machine)
                continue
            }
            jobs.append((line, machine, profile))
        }

        let total = jobs.count
        let done = Counter()
        await withTaskGroup(of: (Int, MachineID, String?).self) { group in
            var next = 0
            func start() {
                guard next < jobs.count else { return }
                let job = jobs[next]
                next += 1
                group.addTask {
                    do {
                        _ = try await self.provision(job.machine, profile: job.profile)
                        return (job.line, job.machine, nil)
                    } catch {
                        return (job.line, job.machine, "\(error)")
                    }
                }
            }
            for _ in 0..<min(concurrency ?? backend.bulkConcurrency, jobs.count) { start() }
            while let (line, machine, failure) = await group.next() {
                if let failure {
                    report.failed.append((line, machine.rawValue, failure))
                } else {
                    report.provisioned.append(machine)
                }
                progress(done.increment(), total)
                start()
            }
        }
        report.failed.sort { $0.line < $1.line }
        return report
    }

    /// Deletes the unit's broker identity, clears its retained topics and marks it revoked;
    /// its history stays.
    public func revoke(_ machine: MachineID) async throws {
        guard let record = try home.registry.machine(machine) else {
            throw FleetError("\(machine) is not in the registry", hint: "`fleet-manager devices` lists the fleet")
        }
        guard record.state == .provisioned else {
            throw FleetError("\(machine) is already revoked")
        }
        try await backend.deleteDevice(machine)
        for kind in TopicKind.allCases where kind.retained {
            try await publisher.publish(topic: home.topics.topic(kind, for: machine), payload: Data(), qos: .atLeastOnce, retain: true)
        }
        try home.registry.markRevoked(machine)
    }
}

/// A counter shared by the tasks of a bulk run.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func increment() -> Int { lock.withLock { value += 1; return value } }
}
