import Foundation
import MessageSchema

/// The fleet's home folder: `settings.json`, `registry.sqlite`, `keys/` (private keys, 0600)
/// and `bundles/` (device bundles, 0600).
public final class FleetHome: Sendable {
    public let path: String
    public let settings: FleetSettings
    public let registry: Registry
    public let topics: TopicScheme

    public var settingsPath: String { path + "/settings.json" }
    public var keysDirectory: String { path + "/keys" }
    public var bundlesDirectory: String { path + "/bundles" }
    /// Copies of the CA files given to `init`, so the home does not depend on where they were.
    public var pkiDirectory: String { path + "/pki" }

    /// `$PULSEBRIDGE_HOME`, else `~/.pulsebridge`.
    public static var defaultPath: String {
        if let home = ProcessInfo.processInfo.environment["PULSEBRIDGE_HOME"] { return home }
        return NSHomeDirectory() + "/.pulsebridge"
    }

    private init(path: String, settings: FleetSettings) throws {
        self.path = path
        self.settings = settings
        // The registry holds every customer's user ID: the owner's only.
        let registryPath = path + "/registry.sqlite"
        if !FileManager.default.fileExists(atPath: registryPath) {
            _ = FileManager.default.createFile(atPath: registryPath, contents: nil, attributes: [.posixPermissions: 0o600])
        }
        self.registry = try Registry(path: registryPath)
        for suffix in ["", "-wal", "-shm"] { chmod(registryPath + suffix, 0o600) }
        self.topics = try TopicScheme(root: settings.topicRoot)
    }

    /// Opens an existing fleet home.
    public static func open(at path: String) throws -> FleetHome {
        let settingsPath = path + "/settings.json"
        guard let data = FileManager.default.contents(atPath: settingsPath) else {
            throw FleetError(
                "no fleet at \(path)", hint: "create one with `fleet-manager init`, or point --home / PULSEBRIDGE_HOME at it")
        }
        let settings: FleetSettings
        do {
            settings = try JSONDecoder().decode(FleetSettings.self, from: data)
        } catch {
            throw FleetError("\(settingsPath) is damaged: \(error)", hint: "restore it from a backup of the fleet home")
        }
        return try FleetHome(path: path, settings: settings)
    }

    /// Creates a fleet home with a `fleet` key and a first `payment` key. Refuses to touch an
    /// existing one.
    public static func create(at path: String, settings: FleetSettings) throws -> FleetHome {
        if FileManager.default.fileExists(atPath: path + "/settings.json") {
            throw FleetError(
                "a fleet already exists at \(path)", hint: "use it, or choose another --home; an existing fleet is never overwritten")
        }
        for dir in [path, path + "/keys", path + "/bundles", path + "/pki"] {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try writePrivate(encoder.encode(settings), to: path + "/settings.json")
        let home = try FleetHome(path: path, settings: settings)
        let stamp = Self.keyStamp()
        _ = try home.generateKey(purpose: .fleet, kid: KeyID(unchecked: "fleet-\(stamp)"))
        _ = try home.generateKey(purpose: .payment, kid: KeyID(unchecked: "pay-\(stamp)"))
        return home
    }

    static func keyStamp() -> String {
        let formatter = DateFormatter()
        formatter.dateFormat = "yyyyMMdd-HHmmss"
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: Date())
    }

    /// Writes `data` readable by the owner only (0600), atomically.
    static func writePrivate(_ data: Data, to path: String) throws {
        let temporary = path + ".tmp-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw FleetError("cannot write \(path)", hint: "check that the folder exists and is writable")
        }
        guard rename(temporary, path) == 0 else {
            throw FleetError("cannot write \(path): \(String(cString: strerror(errno)))")
        }
    }

    // MARK: The lock of `serve`

    /// Takes the home's `serve.lock` (an exclusive `flock`, released when the process ends):
    /// two `serve` processes on one home would share a client ID and knock each other off
    /// the broker. Throws naming the holder's pid if another process has it.
    public func lockForServe() throws -> Int32 {
        let lockPath = path + "/serve.lock"
        let fd = Glibc.open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw FleetError("cannot open \(lockPath): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: lockPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            close(fd)
            throw FleetError(
                "another `fleet-manager serve` (pid \(holder)) is already watching the fleet at \(path)",
                hint: "stop it first; one serve per fleet home")
        }
        ftruncate(fd, 0)
        let pid = "\(getpid())\n"
        _ = pid.withCString { write(fd, $0, strlen($0)) }
        return fd
    }

    // MARK: Keys

    /// Makes a key pair, stores the private key (0600) and registers it as active.
    public func generateKey(purpose: KeyPurpose, kid: KeyID) throws -> Ed25519PrivateKey {
        if try registry.keys().contains(where: { $0.kid == kid }) {
            throw FleetError("a key '\(kid)' exists already", hint: "choose another --kid")
        }
        let key = try Ed25519PrivateKey()
        try Self.writePrivate(Data(key.pemRepresentation.utf8), to: privateKeyPath(kid))
        try registry.addKey(kid, purpose: purpose, publicKey: key.publicKey.base64)
        return key
    }

    public func privateKeyPath(_ kid: KeyID) -> String { keysDirectory + "/\(kid.rawValue).pem" }

    public func privateKey(_ kid: KeyID) throws -> Ed25519PrivateKey {
        guard let pem = try? String(contentsOfFile: privateKeyPath(kid), encoding: .utf8) else {
            throw FleetError("the private key of '\(kid)' is missing (\(privateKeyPath(kid)))", hint: "restore keys/ from a backup")
        }
        return try Ed25519PrivateKey(pem: pem)
    }

    /// The key that signs new messages of `purpose`: the newest active one.
    public func signingKey(_ purpose: KeyPurpose) throws -> (kid: KeyID, key: Ed25519PrivateKey) {
        guard let record = try registry.keys().filter({ $0.purpose == purpose && $0.state == .active }).max(by: { $0.createdAt < $1.createdAt })
        else {
            throw FleetError("the fleet has no active \(purpose.rawValue) key", hint: "add one with `fleet-manager keys add --purpose \(purpose.rawValue)`")
        }
        return (record.kid, try privateKey(record.kid))
    }

    /// What units should trust: every active and retiring key.
    public func trustEntries() throws -> [TrustEntry] {
        try registry.keys().map { TrustEntry(kid: $0.kid, purpose: $0.purpose, publicKey: $0.publicKey) }
    }
}
