import Foundation
import MQTT
import MessageSchema

/// Publishes new configuration versions: next version, signed by the fleet key, retained on
/// the unit's `config/desired`, recorded as desired in the registry.
public struct ConfigPublisher: Sendable {
    let home: FleetHome
    let client: MQTTClient

    public init(home: FleetHome, client: MQTTClient) {
        self.home = home
        self.client = client
    }

    /// Derives the unit's next configuration from its desired one (or the standard profile),
    /// with the fleet's current trust list, validates, signs and publishes it.
    @discardableResult
    public func publish(
        _ machine: MachineID, signingKey: KeyID? = nil, change: (inout MachineProfile) throws -> Void = { _ in }
    ) async throws -> MachineConfig {
        guard let record = try home.registry.machine(machine), record.state == .provisioned else {
            throw FleetError("\(machine) is not a provisioned unit", hint: "`fleet-manager devices` lists the fleet")
        }
        var profile = record.desiredConfig.map(MachineProfile.init) ?? .standardCoin
        try change(&profile)
        let config = try profile.config(
            for: machine, version: try home.registry.nextConfigVersion(machine), currency: home.settings.currency,
            trust: try home.trustEntries())
        let (kid, key): (KeyID, Ed25519PrivateKey)
        if let signingKey {
            (kid, key) = (signingKey, try home.privateKey(signingKey))
        } else {
            (kid, key) = try home.signingKey(.fleet)
        }
        let envelope = SignedEnvelope.sign(config, kid: kid, key: key).encoded()
        try await client.publish(
            topic: home.topics.topic(.configDesired, for: machine), payload: envelope, qos: .atLeastOnce, retain: true)
        try home.registry.setDesiredConfig(config)
        return config
    }
}

/// `fleet-manager keys`: list, add, rotate, retire.
public struct KeyManager: Sendable {
    let home: FleetHome

    public init(home: FleetHome) { self.home = home }

    public func list() throws -> [SigningKeyRecord] { try home.registry.keys() }

    /// Adds a key of `purpose` and pushes the new trust list to every unit.
    @discardableResult
    public func add(_ purpose: KeyPurpose, kid: KeyID?, client: MQTTClient) async throws -> (KeyID, [MachineID]) {
        let kid = kid ?? KeyID(unchecked: "\(purpose == .fleet ? "fleet" : "pay")-\(FleetHome.keyStamp())")
        // A new fleet key is not trusted yet: the trust push is signed by the current one.
        let signer = try home.signingKey(.fleet).kid
        _ = try home.generateKey(purpose: purpose, kid: kid)
        return (kid, try await pushTrust(signedBy: signer, client: client))
    }

    /// Starts a rotation: a new key of `purpose` signs from now on, the old ones become
    /// `retiring` (still trusted) until `retire` — once every unit applied the new trust.
    public func rotate(_ purpose: KeyPurpose, client: MQTTClient) async throws -> (new: KeyID, retiring: [KeyID], pushed: [MachineID]) {
        let old = try home.registry.keys().filter { $0.purpose == purpose && $0.state == .active }.map(\.kid)
        let signer = try home.signingKey(.fleet).kid
        let kid = KeyID(unchecked: "\(purpose == .fleet ? "fleet" : "pay")-\(FleetHome.keyStamp())-\(UInt16.random(in: 0...UInt16.max))")
        _ = try home.generateKey(purpose: purpose, kid: kid)
        for previous in old { try home.registry.setKeyState(previous, .retiring) }
        let pushed = try await pushTrust(signedBy: signer, client: client)
        return (kid, old, pushed)
    }

    /// Removes a retiring key from the fleet's trust. Refuses while a unit has not applied
    /// the configuration that introduced its successor, unless `force`.
    public func retire(_ kid: KeyID, force: Bool, client: MQTTClient) async throws -> [MachineID] {
        guard let record = try home.registry.keys().first(where: { $0.kid == kid }) else {
            throw FleetError("no key '\(kid)'", hint: "`fleet-manager keys list` shows the keys")
        }
        guard record.state == .retiring else {
            throw FleetError("key '\(kid)' is active", hint: "rotate it first: `fleet-manager keys rotate --purpose \(record.purpose.rawValue)`")
        }
        let lagging = try home.registry.machines().filter { machine in
            guard let desired = machine.desiredConfig else { return false }
            return machine.reportedVersion.map { $0 < desired.version } ?? true || machine.reportedStatus != "applied"
        }
        if !lagging.isEmpty && !force {
            throw FleetError(
                "\(lagging.count) unit(s) have not applied the new trust yet: \(lagging.prefix(5).map(\.id.rawValue).joined(separator: ", "))\(lagging.count > 5 ? ", …" : "")",
                hint: "wait until `fleet-manager config status` shows them applied (serve must be running), or use --force")
        }
        try home.registry.removeKey(kid)
        // A retired fleet key cannot sign this push (units will stop trusting it).
        return try await pushTrust(signedBy: try home.signingKey(.fleet).kid, client: client)
    }

    /// Publishes to every unit a new configuration version carrying the current trust list.
    func pushTrust(signedBy signer: KeyID, client: MQTTClient) async throws -> [MachineID] {
        let publisher = ConfigPublisher(home: home, client: client)
        var pushed: [MachineID] = []
        for machine in try home.registry.machines() {
            try await publisher.publish(machine.id, signingKey: signer)
            pushed.append(machine.id)
        }
        return pushed
    }
}
