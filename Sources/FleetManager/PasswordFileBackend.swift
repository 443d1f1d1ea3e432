import Foundation
import Logging
import MQTT
import MessageSchema
import PaymentSDK
import Locking

#if canImport(Glibc)
    import Glibc
#endif

/// How `fleet-manager` administers the broker's identities (`settings.json` → `brokerAdmin`).
public struct BrokerAdministration: Codable, Sendable, Hashable {
    public enum Kind: String, Codable, Sendable, CaseIterable {
        /// mosquitto's dynamic-security plugin, driven over MQTT (the default).
        case dynamicSecurity = "dynamic-security"
        /// mosquitto's `password_file` and `acl_file`, written by the manager, which signals
        /// the broker to reload them: for fleets of thousands of units.
        case passwordFile = "password-file"
        /// A nats-server cluster's users file (JetStream MQTT), written by the manager, which
        /// signals every node to reload it: the deployment that survives a node.
        case natsUsers = "nats-users"
    }
    public var kind: Kind
    /// `password-file`: the folder of `passwd`, `acl` and `identities.json` (the broker's
    /// `password_file` is `DIR/passwd`, its `acl_file` `DIR/acl`).
    public var directory: String?
    /// `password-file`: the broker's `pid_file`; the manager sends SIGHUP to that process.
    public var pidFile: String?
    /// `nats-users`: every node's `pid_file` (the manager signals each to reload `auth.conf`
    /// in `directory`).
    public var pidFiles: [String]?

    public init(kind: Kind, directory: String? = nil, pidFile: String? = nil, pidFiles: [String]? = nil) {
        self.kind = kind
        self.directory = directory
        self.pidFile = pidFile
        self.pidFiles = pidFiles
    }
}

/// Provisioning through mosquitto's `password_file` and `acl_file`.
///
/// Why it exists: the dynamic-security plugin (2.0.11) rewrites its whole JSON file after every
/// command and needs a role per unit, so provisioning N units costs O(N²): 81 units/s at 1,000,
/// 25 units/s at 3,000 (`pulsebridge-bench provision`). Here every unit shares one set of
/// `pattern` rules (`%u` is the username, which is the machine ID) and only its password line is
/// its own; changes made meanwhile are written together (one file write and one reload for a
/// whole batch), so 10,000 units provision in seconds.
///
/// The broker must run with `use_username_as_clientid true` on every listener units and payment
/// servers reach (a unit's or payment server's client ID is then its username, whatever it
/// sends), and the fleet manager on a loopback listener of its own (see
/// `broker-config/mosquitto-files.conf`). A reload re-checks every connected client, so a
/// revoked or re-credentialled unit is disconnected.
///
/// `identities.json` is the source of truth (usernames, kinds, `$7$` PBKDF2-SHA512 hashes as
/// `mosquitto_passwd` writes them); `passwd` and `acl` are rendered from it. Every change takes an
/// exclusive lock on `identities.lock`, reads the file, changes it, writes all three atomically
/// (fsynced), sends SIGHUP and waits until the broker accepts a probe identity whose password
/// is new in this write: so two manager processes (serve and the CLI) never lose each other's
/// changes, and a change is reported done only once the broker enforces it.
public final class PasswordFileBackend: FileIdentityBackend {
    public let directory: String
    public let store: IdentityStore

    /// `probe`: where the manager reaches the broker (host, port, TLS); the probe identity's
    /// username and password replace the manager's.
    public init(directory: String, pidFile: String, probe: BrokerIdentity, logger: Logger = Logger(label: "pulsebridge.broker-files")) {
        self.directory = directory
        self.store = IdentityStore(
            directory: directory, files: MosquittoFiles(directory: directory, pidFile: pidFile, probe: probe, logger: logger))
    }

    /// From the fleet settings.
    public convenience init(_ administration: BrokerAdministration, manager: BrokerIdentity) throws {
        guard let directory = administration.directory, let pidFile = administration.pidFile else {
            throw FleetError(
                "settings.json: brokerAdmin of kind password-file needs a directory and a pidFile",
                hint: "e.g. \"brokerAdmin\": {\"kind\": \"password-file\", \"directory\": \"/var/lib/pulsebridge/broker\", \"pidFile\": \"/run/mosquitto/mosquitto.pid\"}")
        }
        self.init(directory: directory, pidFile: pidFile, probe: manager)
    }

    /// mosquitto's `$7$` format: PBKDF2-HMAC-SHA512, 101 iterations (mosquitto_passwd's
    /// default), 12-byte salt, base64.
    static func mosquittoHash(_ password: String, iterations: Int = 101) -> String {
        var salt = [UInt8](repeating: 0, count: 12)
        for i in salt.indices { salt[i] = UInt8.random(in: 0...255) }
        let key = PBKDF2.sha512(password: Array(password.utf8), salt: salt, iterations: iterations)
        return "$7$\(iterations)$\(Data(salt).base64EncodedString())$\(Data(key).base64EncodedString())"
    }
}

/// The administrations that keep identities in files the manager writes (`identities.json`,
/// rendered for the broker) and make the broker reload: mosquitto's password and ACL files, a
/// NATS cluster's users file.
public protocol FileIdentityBackend: ProvisioningBackend {
    var directory: String { get }
    var store: IdentityStore { get }
}

extension FileIdentityBackend {
    public func close() async {}

    /// Changes made together cost one write and one reload: many units in flight.
    public var bulkConcurrency: Int { 256 }

    /// The name of a PulseBridge service identity already in the files, or nil.
    public func existingFleetIdentity() throws -> String? {
        let table = try store.read()
        return table.identities.values.first { $0.kind == .manager || $0.kind == .paymentServer }?.username
    }

    public func bootstrap(topics: TopicScheme, manager: BrokerIdentity, paymentServer: BrokerIdentity) async throws {
        let managerHash = store.files.hash(manager.password)
        let paymentHash = store.files.hash(paymentServer.password)
        let directory = self.directory
        try await store.change { table in
            if let existing = table.identities.values.first(where: { $0.kind == .manager || $0.kind == .paymentServer }) {
                throw FleetError(
                    "the broker's identities (\(directory)/identities.json) already hold a PulseBridge fleet (\(existing.username))",
                    hint: "use that fleet's home; one broker serves one fleet, and init never replaces one")
            }
            table.topicRoot = topics.root
            table.identities[manager.username] = .init(username: manager.username, kind: .manager, hash: managerHash)
            table.identities[paymentServer.username] = .init(username: paymentServer.username, kind: .paymentServer, hash: paymentHash)
        }
    }

    public func createDevice(_ machine: MachineID, password: String, topics: TopicScheme) async throws {
        let hash = store.files.hash(password)
        try await store.change { table in
            guard table.identities[machine.rawValue] == nil else {
                throw BrokerAdminError(command: "createDevice", message: "Client already exists")
            }
            table.identities[machine.rawValue] = .init(username: machine.rawValue, kind: .device, hash: hash)
        }
    }

    public func deviceExists(_ machine: MachineID) async throws -> Bool {
        try store.read().identities[machine.rawValue] != nil
    }

    public func isDeviceIdentity(_ machine: MachineID) async throws -> Bool {
        try store.read().identities[machine.rawValue]?.kind == .device
    }

    public func createPaymentServer(_ identity: BrokerIdentity) async throws {
        let hash = store.files.hash(identity.password)
        try await store.change { table in
            guard table.identities[identity.username] == nil else {
                throw BrokerAdminError(command: "createPaymentServer", message: "Client already exists")
            }
            table.identities[identity.username] = .init(username: identity.username, kind: .paymentServer, hash: hash)
        }
    }

    public func deletePaymentServer(username: String) async throws {
        try await store.change { table in
            guard table.identities[username]?.kind == .paymentServer else {
                throw BrokerAdminError(command: "deletePaymentServer", message: "Client not found")
            }
            table.identities[username] = nil
        }
    }

    public func setDevicePassword(_ machine: MachineID, password: String) async throws {
        let hash = store.files.hash(password)
        try await store.change { table in
            guard table.identities[machine.rawValue]?.kind == .device else {
                throw BrokerAdminError(command: "setDevicePassword", message: "Client not found")
            }
            table.identities[machine.rawValue]?.hash = hash
        }
    }

    public func deleteDevice(_ machine: MachineID) async throws {
        try await store.change { table in
            if table.identities[machine.rawValue]?.kind == .device { table.identities[machine.rawValue] = nil }
        }
    }

}

/// The broker's identities as the manager keeps them (`identities.json`).
public struct IdentityTable: Codable, Sendable, Equatable {
    enum Kind: String, Codable, Sendable { case manager, paymentServer = "payment-server", device, probe }
    struct Identity: Codable, Sendable, Equatable {
        var username: String
        var kind: Kind
        var hash: String
    }
    var v = 1
    var topicRoot: String?
    var identities: [String: Identity] = [:]

    /// The username of the identity that proves a reload happened.
    static let probeUsername = "pulsebridge-reload-probe"

    /// `password_file`: one `username:hash` line per identity.
    func passwordFile() -> String {
        identities.values.sorted { $0.username < $1.username }.map { "\($0.username):\($0.hash)\n" }.joined()
    }

    /// `acl_file`: the services by name, every unit by one set of patterns. Read rights are
    /// subscribe and receive; nothing is allowed that no line names.
    func aclFile() throws -> String {
        guard let root = topicRoot else { return "# no fleet yet: nothing is allowed\n" }
        let topics = try TopicScheme(root: root)
        func lines(_ rules: [(AccessRules.Right, String)], keyword: String) -> [String] {
            var rights: [String: Set<AccessRules.Right>] = [:]
            var order: [String] = []
            for (right, topic) in rules {
                if rights[topic] == nil { order.append(topic) }
                rights[topic, default: []].insert(right)
            }
            return order.map { topic in
                let set = rights[topic]!
                let access = set.count == 2 ? "readwrite" : set.contains(.publish) ? "write" : "read"
                return "\(keyword) \(access) \(topic)"
            }
        }
        var text = "# Written by fleet-manager from identities.json; edits here are overwritten.\n"
        for identity in identities.values.sorted(by: { $0.username < $1.username }) {
            switch identity.kind {
            case .manager:
                text += "\nuser \(identity.username)\n" + lines(AccessRules.fleetManager(topics), keyword: "topic").joined(separator: "\n") + "\n"
            case .paymentServer:
                text += "\nuser \(identity.username)\n" + lines(AccessRules.paymentServer(topics), keyword: "topic").joined(separator: "\n") + "\n"
            case .device, .probe:
                continue
            }
        }
        // Patterns apply to every user; a service's username is reserved and never a machine ID,
        // so the topics they name for a service hold nothing.
        text += "\n# Every unit: its own topics (%u is its username, which is its machine ID).\n"
        text += lines(AccessRules.device(MachineID(unchecked: "%u"), topics), keyword: "pattern").joined(separator: "\n") + "\n"
        return text
    }
}

/// What differs between the file-based administrations: the hash format, what the broker
/// reads, and how it is made to read it again.
public protocol IdentityFiles: Sendable {
    /// The password's hash in the broker's format.
    func hash(_ password: String) -> String
    /// The broker's files made from `table`: path, bytes, mode.
    func render(_ table: IdentityTable) throws -> [(path: String, data: Data, mode: mode_t)]
    /// Makes the broker read the files again, and returns once it enforces them: once it
    /// accepts the probe identity with `probePassword`, new in this write.
    func reload(probePassword: String) async throws
}

/// Serialises changes to the identity files: changes that arrive while a write is under way
/// are written together by the next one.
public actor IdentityStore {
    let directory: String
    nonisolated let files: any IdentityFiles
    private var pending: [(change: @Sendable (inout IdentityTable) throws -> Void, done: CheckedContinuation<Void, any Error>)] = []
    private var writing = false

    init(directory: String, files: any IdentityFiles) {
        self.directory = directory
        self.files = files
    }

    nonisolated var statePath: String { directory + "/identities.json" }

    /// The last table read or written, and the file it came from: unchanged files are not
    /// decoded again (another manager process replacing it changes its inode).
    private let cache = Locked<(stamp: FileStamp, table: IdentityTable)?>(nil)

    /// The table as written (an absent file is an empty table).
    nonisolated func read() throws -> IdentityTable {
        let path = statePath
        let stamp = FileStamp(path)
        if let stamp, let cached = cache.withLock({ $0 }), cached.stamp == stamp { return cached.table }
        guard let data = FileManager.default.contents(atPath: path) else {
            if FileManager.default.fileExists(atPath: path) {
                throw FleetError("cannot read \(path)", hint: "the fleet manager needs read and write access to \(directory)")
            }
            return IdentityTable()
        }
        do {
            let table = try JSONDecoder().decode(IdentityTable.self, from: data)
            if let stamp { cache.withLock { $0 = (stamp, table) } }
            return table
        } catch {
            throw FleetError("\(path) is damaged: \(error)", hint: "restore it from a backup; the broker's files are made from it")
        }
    }

    /// Applies `change` with whatever else is pending, and returns once the broker enforces it.
    /// A change that throws is left out (its caller gets the error); the others go ahead.
    func change(_ change: @escaping @Sendable (inout IdentityTable) throws -> Void) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            pending.append((change, continuation))
            if !writing {
                writing = true
                Task { await self.writeLoop() }
            }
        }
    }

    private func writeLoop() async {
        while !pending.isEmpty {
            let batch = pending
            pending = []
            var outcomes: [Result<Void, any Error>] = []
            do {
                let lock = try await FileLock.acquire(directory + "/identities.lock")
                defer { lock.release() }
                var table = try read()
                for (change, _) in batch {
                    var changed = table
                    do {
                        try change(&changed)
                        table = changed
                        outcomes.append(.success(()))
                    } catch {
                        outcomes.append(.failure(error))
                    }
                }
                let probePassword = Provisioner.newPassword()
                table.identities[IdentityTable.probeUsername] = .init(
                    username: IdentityTable.probeUsername, kind: .probe, hash: files.hash(probePassword))
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                try DurableFile.write(try encoder.encode(table), to: statePath, mode: 0o600)
                if let stamp = FileStamp(statePath) { cache.withLock { $0 = (stamp, table) } }
                for file in try files.render(table) { try DurableFile.write(file.data, to: file.path, mode: file.mode) }
                try await files.reload(probePassword: probePassword)
            } catch {
                outcomes = batch.map { _ in .failure(error) }
            }
            for ((_, done), outcome) in zip(batch, outcomes) { done.resume(with: outcome) }
        }
        writing = false
    }
}

/// Connects as the probe identity until the broker accepts its new password, within `deadline`.
func probeUntilAccepted(_ endpoint: BrokerIdentity, password: String, deadline: ContinuousClock.Instant, logger: Logger, what: String) async throws {
    var identity = endpoint
    identity.username = IdentityTable.probeUsername
    identity.password = password
    var pause = Duration.milliseconds(1)
    while true {
        let client = try identity.client(clientID: "\(IdentityTable.probeUsername)-\(UUID().uuidString.prefix(8).lowercased())", logger: logger)
        do {
            try await client.connect()
            await client.close()
            return
        } catch let error as MQTTError {
            await client.close()
            guard ContinuousClock.now < deadline else {
                throw FleetError("\(what) did not take the new identities within 15 s (\(error))", hint: "check its configuration and its log")
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(50))
        }
    }
}

/// Sends SIGHUP to the process in `pidFile`, waiting (until `deadline`) for a starting
/// broker's pid file to appear.
func signalReload(pidFile: String, deadline: ContinuousClock.Instant) async throws {
    var pause = Duration.milliseconds(1)
    while true {
        if let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0
        {
            guard kill(pid, SIGHUP) == 0 else {
                throw FleetError(
                    "cannot signal the broker (pid \(pid) from \(pidFile)) to reload: \(String(cString: strerror(errno)))",
                    hint: "is it running, and does the fleet manager run as its user or root?")
            }
            return
        }
        guard ContinuousClock.now < deadline else {
            throw FleetError(
                "cannot read the broker's pid from \(pidFile)",
                hint: "is it running with that pid file? The identities are written; they take effect when it starts")
        }
        try await Task.sleep(for: pause)
        pause = min(pause * 2, .milliseconds(100))
    }
}

/// mosquitto: `passwd` (`$7$` hashes) and `acl`, SIGHUP to its pid.
struct MosquittoFiles: IdentityFiles {
    let directory: String
    let pidFile: String
    let probe: BrokerIdentity
    let logger: Logger

    func hash(_ password: String) -> String { PasswordFileBackend.mosquittoHash(password) }

    func render(_ table: IdentityTable) throws -> [(path: String, data: Data, mode: mode_t)] {
        [(directory + "/passwd", Data(table.passwordFile().utf8), 0o640), (directory + "/acl", Data(try table.aclFile().utf8), 0o644)]
    }

    func reload(probePassword: String) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        try await signalReload(pidFile: pidFile, deadline: deadline)
        try await probeUntilAccepted(probe, password: probePassword, deadline: deadline, logger: logger, what: "the broker")
    }
}

/// Which file a path names and when it last changed: inode, size and modification time.
struct FileStamp: Equatable, Sendable {
    var inode: UInt64
    var size: Int64
    var seconds: Int
    var nanoseconds: Int

    init?(_ path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        seconds = info.st_mtim.tv_sec
        nanoseconds = info.st_mtim.tv_nsec
    }
}

/// An exclusive `flock` on a file, taken without blocking a thread.
struct FileLock {
    let descriptor: Int32

    static func acquire(_ path: String, timeout: Duration = .seconds(30)) async throws -> FileLock {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw FleetError("cannot open \(path): \(String(cString: strerror(errno)))", hint: "the fleet manager needs write access to its folder")
        }
        let deadline = ContinuousClock.now + timeout
        var pause = Duration.milliseconds(1)
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            guard errno == EWOULDBLOCK, ContinuousClock.now < deadline else {
                close(fd)
                throw FleetError("\(path) stayed locked for \(timeout)", hint: "another fleet-manager is changing the broker's identities; try again")
            }
            // Another process holds it for one write and reload (milliseconds); flock has no
            // notification to wait on.
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(20))
        }
        return FileLock(descriptor: fd)
    }

    func release() {
        flock(descriptor, LOCK_UN)
        close(descriptor)
    }
}

/// Writes a file so that after a crash it holds either the old or the new bytes, and the new
/// ones once this returns: temporary file, fsync, rename, fsync of the folder.
enum DurableFile {
    /// The new file keeps the old one's owner and group (mosquitto, dropping to its own user,
    /// reads `passwd` and `acl` through their group: prepare them with `install -m 640 -g
    /// mosquitto`).
    static func write(_ data: Data, to path: String, mode: mode_t) throws {
        let temporary = path + ".tmp-\(getpid())"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw failure("create \(temporary)") }
        var existing = stat()
        if stat(path, &existing) == 0, existing.st_uid != getuid() || existing.st_gid != getgid() {
            _ = fchown(fd, existing.st_uid, existing.st_gid)
        }
        var ok = true
        data.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    ok = false
                    return
                }
                offset += n
            }
        }
        let saved = errno
        if ok, fchmod(fd, mode) != 0 || fsync(fd) != 0 { ok = false }
        close(fd)
        guard ok else {
            errno = saved
            let error = failure("write \(path)")
            unlink(temporary)
            throw error
        }
        guard rename(temporary, path) == 0 else {
            let error = failure("replace \(path)")
            unlink(temporary)
            throw error
        }
        let folder = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if folder >= 0 {
            fsync(folder)
            close(folder)
        }
    }

    static func failure(_ what: String) -> FleetError {
        FleetError("cannot \(what): \(String(cString: strerror(errno)))", hint: "check the disk has space and the folder is writable")
    }
}
