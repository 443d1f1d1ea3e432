internal import CCrypt
import Foundation
import Logging
import MQTT
import MessageSchema
import PaymentSDK

#if canImport(Glibc)
    import Glibc
#endif

/// Provisioning for a nats-server cluster (JetStream MQTT, MQTT 3.1.1): the deployment that
/// survives a node (docs/scale.md).
///
/// nats-server 2.9 has no per-user permission templates outside JWT mode, so every identity
/// gets an explicit permissions block of its own (also what keeps a reload from crashing
/// nodes once retained messages exist): a unit may publish and subscribe exactly its
/// PROTOCOL.md topics, as subjects (`fleet/u1/status` is `fleet.u1.status`), plus the
/// `$MQTT.sub.>` deliveries QoS 1 subscriptions need. Passwords are bcrypt hashes. Every change
/// rewrites `auth.conf` (included by every node) atomically, signals every node's pid to
/// reload, and returns once every node's MQTT listener accepts the new probe password.
public final class NATSUsersBackend: FileIdentityBackend {
    public let directory: String
    public let store: IdentityStore

    /// `probe`: the manager's identity (its host:port and alternates are the nodes' MQTT
    /// listeners).
    public init(directory: String, pidFiles: [String], probe: BrokerIdentity, logger: Logger = Logger(label: "pulsebridge.nats-users")) {
        self.directory = directory
        self.store = IdentityStore(directory: directory, files: NATSFiles(directory: directory, pidFiles: pidFiles, probe: probe, logger: logger))
    }

    public convenience init(_ administration: BrokerAdministration, manager: BrokerIdentity) throws {
        guard let directory = administration.directory, let pidFiles = administration.pidFiles, !pidFiles.isEmpty else {
            throw FleetError(
                "settings.json: brokerAdmin of kind nats-users needs a directory and pidFiles",
                hint: "the folder of the auth.conf every node includes, and each node's pid_file")
        }
        self.init(directory: directory, pidFiles: pidFiles, probe: manager)
    }

    /// bcrypt (`$2b$`, cost 6): checked by the node at every connection, so kept cheap; the
    /// passwords themselves are 192-bit random.
    static func bcrypt(_ password: String, cost: Int = 6) -> String {
        var setting = [CChar](repeating: 0, count: Int(CRYPT_GENSALT_OUTPUT_SIZE))
        guard crypt_gensalt_rn("$2b$", UInt(cost), nil, 0, &setting, Int32(setting.count)) != nil else {
            preconditionFailure("crypt_gensalt_rn failed: \(String(cString: strerror(errno)))")
        }
        var data = crypt_data()
        guard let hashed = crypt_r(password, setting, &data) else {
            preconditionFailure("crypt_r failed: \(String(cString: strerror(errno)))")
        }
        return String(cString: hashed)
    }
}

struct NATSFiles: IdentityFiles {
    let directory: String
    let pidFiles: [String]
    let probe: BrokerIdentity
    let logger: Logger

    func hash(_ password: String) -> String { NATSUsersBackend.bcrypt(password) }

    func render(_ table: IdentityTable) throws -> [(path: String, data: Data, mode: mode_t)] {
        [(directory + "/auth.conf", Data(try Self.authFile(table).utf8), 0o600)]
    }

    /// An MQTT topic filter as a NATS subject.
    static func subject(_ topic: String) -> String {
        topic.split(separator: "/", omittingEmptySubsequences: false).map { level in
            level == "+" ? "*" : level == "#" ? ">" : String(level)
        }.joined(separator: ".")
    }

    static func quoted(_ text: String) -> String {
        "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    static func authFile(_ table: IdentityTable) throws -> String {
        let topics = try table.topicRoot.map { try TopicScheme(root: $0) }
        func block(_ rules: [(AccessRules.Right, String)]) -> String {
            let publish = rules.filter { $0.0 == .publish }.map { quoted(subject($0.1)) }
            // QoS 1 subscriptions are delivered through JetStream on $MQTT.sub.
            // An MQTT filter `a/#` also matches `a` itself: NATS subscribes to both subjects.
            let filters = rules.filter { $0.0 == .subscribe }.flatMap { rule in
                rule.1.hasSuffix("/#") ? [String(rule.1.dropLast(2)), rule.1] : [rule.1]
            }
            let subscribe = filters.map { quoted(subject($0)) } + [quoted("$MQTT.sub.>")]
            return "permissions: { publish: { allow: [\(publish.joined(separator: ", "))] }, subscribe: { allow: [\(subscribe.joined(separator: ", "))] } }"
        }
        var lines = ["# Written by fleet-manager from identities.json; edits here are overwritten.", "authorization {", "  users: ["]
        for identity in table.identities.values.sorted(by: { $0.username < $1.username }) {
            let permissions: String
            switch identity.kind {
            case .manager: permissions = topics.map { block(AccessRules.fleetManager($0)) } ?? block([])
            case .paymentServer: permissions = topics.map { block(AccessRules.paymentServer($0)) } ?? block([])
            case .device:
                guard let topics, let machine = MachineID(rawValue: identity.username) else { continue }
                permissions = block(AccessRules.device(machine, topics))
            case .probe:
                permissions = "permissions: { publish: { allow: [\"pulsebridge.probe\"] }, subscribe: { allow: [\"pulsebridge.probe\"] } }"
            }
            lines.append("    { user: \(quoted(identity.username)), password: \(quoted(identity.hash)), \(permissions) }")
        }
        lines += ["  ]", "}", ""]
        return lines.joined(separator: "\n")
    }

    func reload(probePassword: String) async throws {
        let deadline = ContinuousClock.now + .seconds(15)
        for pidFile in pidFiles { try await signalReload(pidFile: pidFile, deadline: deadline) }
        for endpoint in probe.endpoints {
            var node = probe
            node.host = endpoint.host
            node.port = endpoint.port
            node.alternates = nil
            try await probeUntilAccepted(node, password: probePassword, deadline: deadline, logger: logger, what: "the node at \(endpoint)")
        }
    }
}
