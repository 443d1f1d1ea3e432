import MessageSchema
import PaymentSDK

/// The broker's user administration: one identity per unit with rights to its own topics
/// only. Mosquitto's dynamic-security plugin is the implementation today
/// (`DynamicSecurityBackend`); a clustered broker's admin API would be another.
public protocol ProvisioningBackend: Sendable {
    /// Creates (or updates, idempotently) the service roles and their clients: `fleet-manager`
    /// (with the right to administer the broker), `payment-server`.
    func bootstrap(topics: TopicScheme, manager: BrokerIdentity, paymentServer: BrokerIdentity) async throws
    /// A broker client whose client ID and username are the machine ID, with `password` and a
    /// role granting exactly the unit's rights of PROTOCOL.md. Throws `BrokerAdminError` of
    /// kind `.alreadyExists` if a client or role of that name exists.
    func createDevice(_ machine: MachineID, password: String, topics: TopicScheme) async throws
    /// Whether the broker knows a client for `machine`.
    func deviceExists(_ machine: MachineID) async throws -> Bool
    /// Whether the broker identity named `machine` is that unit's own (made by
    /// `createDevice`): provisioning never takes over any other identity.
    func isDeviceIdentity(_ machine: MachineID) async throws -> Bool
    /// A payment server's own identity: its username is also the only client ID it may use.
    func createPaymentServer(_ identity: BrokerIdentity) async throws
    func deletePaymentServer(username: String) async throws
    /// Replaces the unit's password (the old one stops working, its connection is dropped).
    func setDevicePassword(_ machine: MachineID, password: String) async throws
    /// Deletes the unit's client and role; a connected unit is disconnected.
    func deleteDevice(_ machine: MachineID) async throws
    func close() async
    /// How many units a bulk run provisions at once: a backend that writes concurrent changes
    /// together wants many in flight.
    var bulkConcurrency: Int { get }
}

extension ProvisioningBackend {
    public var bulkConcurrency: Int { 16 }
}

/// The broker refused an administration command; `kind` is what callers act on, the
/// broker's own words are kept for the operator.
public struct BrokerAdminError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        case alreadyExists
        case notFound
        case refused
    }
    public var command: String
    public var message: String
    public var kind: Kind

    /// `kind` from the broker's message (mosquitto's dynamic-security plugin: "Client already
    /// exists", "Role not found").
    public init(command: String, message: String) {
        self.command = command
        self.message = message
        let lowered = message.lowercased()
        kind = lowered.contains("already exists") ? .alreadyExists : lowered.contains("not found") ? .notFound : .refused
    }

    public var description: String { "the broker refused \(command): \(message)" }
}

/// The access rules of PROTOCOL.md, as (kind, topic) pairs a backend turns into its ACLs.
public enum AccessRules {
    public enum Right: String, Sendable { case publish, subscribe }

    /// A device may read only its own payment/completed, config/desired, firmware/desired and
    /// status, and write only its own payment/result, status, heartbeat, config/reported,
    /// firmware/reported. Literal topics (dynsec in mosquitto 2.0.11 does not expand %c).
    public static func device(_ machine: MachineID, _ topics: TopicScheme) -> [(Right, String)] {
        let reads: [TopicKind] = [.paymentCompleted, .configDesired, .firmwareDesired, .status]
        let writes: [TopicKind] = [.paymentResult, .status, .heartbeat, .configReported, .firmwareReported]
        return reads.map { (.subscribe, topics.topic($0, for: machine)) } + writes.map { (.publish, topics.topic($0, for: machine)) }
    }

    /// A payment server may write `+/payment/completed` and read `+/payment/result` and
    /// `+/status`, nothing else.
    public static func paymentServer(_ topics: TopicScheme) -> [(Right, String)] {
        [
            (.publish, topics.filter(.paymentCompleted)),
            (.subscribe, topics.filter(.paymentResult)),
            (.subscribe, topics.filter(.status)),
        ]
    }

    /// The manager reads everything under the root (status, heartbeats, results, completions
    /// to record who paid, reports) and writes desired configuration and firmware; it may also
    /// clear a revoked unit's retained status and reports.
    public static func fleetManager(_ topics: TopicScheme) -> [(Right, String)] {
        [
            (.subscribe, topics.root + "/#"),
            (.publish, topics.filter(.configDesired)),
            (.publish, topics.filter(.firmwareDesired)),
            (.publish, topics.filter(.status)),
            (.publish, topics.filter(.configReported)),
            (.publish, topics.filter(.firmwareReported)),
        ]
    }
}
