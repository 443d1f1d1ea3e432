import Foundation
import Logging
import MQTT
import MessageSchema
import PaymentSDK
import Synchronization
import Locking

/// Provisioning through mosquitto's dynamic-security plugin: JSON commands published on
/// `$CONTROL/dynamic-security/v1`, each answered on `…/response` (matched by
/// `correlationData`). Every response is checked; a refusal is an error that says which
/// command failed and why.
public final class DynamicSecurityBackend: ProvisioningBackend {
    static let controlTopic = "$CONTROL/dynamic-security/v1"
    static let responseTopic = "$CONTROL/dynamic-security/v1/response"

    private let client: MQTTClient
    /// Responses by correlation ID: registered before the command leaves, so a response can
    /// never arrive for an unknown ID.
    private let slots = Locked<[String: Slot]>([:])
    private enum Slot {
        case expected
        case waiting(CheckedContinuation<[String: JSONValue], any Error>)
        case arrived([String: JSONValue])
        /// Failed before anyone waited (timed out, closed): the waiter gets this error.
        case failed(any Error)
    }
    private let listener: Task<Void, Never>
    private let timeout: Duration

    /// Connects as `identity` (a dynsec admin, or the manager once bootstrapped).
    public static func connect(_ identity: BrokerIdentity, clientID: String = "fleet-manager-admin-\(UUID().uuidString.prefix(8).lowercased())", logger: Logger = Logger(label: "pulsebridge.dynsec")) async throws -> DynamicSecurityBackend {
        do {
            return try await connectOnce(identity, clientID: clientID, logger: logger)
        } catch let error as MQTTError {
            throw unreachable(identity, error)
        }
    }

    static func unreachable(_ identity: BrokerIdentity, _ error: MQTTError) -> FleetError {
        FleetError(
            "cannot reach the broker's dynamic security as '\(identity.username)': \(error)",
            hint: "check the broker is running with the dynamic-security plugin and the credentials in the fleet settings")
    }

    /// One attempt; the MQTT error as it came.
    private static func connectOnce(_ identity: BrokerIdentity, clientID: String, logger: Logger) async throws -> DynamicSecurityBackend {
        var configuration = MQTTConfiguration(host: identity.host, port: identity.port, clientID: clientID)
        configuration.username = identity.username
        configuration.password = identity.password
        configuration.cleanStart = true
        if let caFile = identity.caFile { configuration.tls = MQTTTLS(caFile: caFile) }
        let client = try MQTTClient(configuration, logger: logger)
        do {
            try await client.connect()
            let backend = DynamicSecurityBackend(client: client)
            try await client.subscribe(responseTopic)
            return backend
        } catch {
            await client.close()
            throw error
        }
    }

    /// Connects, retrying for up to `wait` while the broker refuses TCP connections (it is
    /// still starting); a broker that answers and refuses the credentials fails at once.
    public static func connect(_ identity: BrokerIdentity, waitingUpTo wait: Duration, logger: Logger) async throws -> DynamicSecurityBackend {
        let deadline = ContinuousClock.now + wait
        let clientID = "fleet-manager-admin-\(UUID().uuidString.prefix(8).lowercased())"
        while true {
            do {
                return try await connectOnce(identity, clientID: clientID, logger: logger)
            } catch MQTTError.unreachable where ContinuousClock.now < deadline {
                // No TCP connection yet: the broker is still starting (a broker that answers
                // and refuses the credentials is `.refused`, and fails at once).
                logger.info("the broker does not accept connections yet; retrying")
                try await Task.sleep(for: .milliseconds(200))
            } catch let error as MQTTError {
                throw unreachable(identity, error)
            }
        }
    }

    private init(client: MQTTClient, timeout: Duration = .seconds(30)) {
        self.client = client
        self.timeout = timeout
        let messages = client.messages
        let box = ResponseRouter()
        self.listener = Task {
            for await message in messages {
                box.route(message.payload)
            }
        }
        box.backend = self
    }

    public func close() async {
        await client.close()
        listener.cancel()
        fail(nil, with: MQTTError.closed)
    }

    /// Fails the waiting slots among `ids` (all when nil).
    private func fail(_ ids: [String]?, with error: any Error) {
        let waiting = slots.withLock { slots -> [CheckedContinuation<[String: JSONValue], any Error>] in
            var found: [CheckedContinuation<[String: JSONValue], any Error>] = []
            for id in ids ?? Array(slots.keys) {
                switch slots[id] {
                case .waiting(let continuation)?:
                    found.append(continuation)
                    slots[id] = nil
                case .expected?:
                    slots[id] = .failed(error)
                default:
                    break
                }
            }
            return found
        }
        for waiter in waiting { waiter.resume(throwing: error) }
    }

    fileprivate func deliver(_ payload: Data) {
        guard case .object(let root)? = try? JSONDecoder().decode(JSONValue.self, from: payload),
            case .array(let responses)? = root["responses"]
        else { return }
        for case .object(let response) in responses {
            guard case .string(let id)? = response["correlationData"] else { continue }
            let waiter = slots.withLock { slots -> CheckedContinuation<[String: JSONValue], any Error>? in
                switch slots[id] {
                case .expected: slots[id] = .arrived(response); return nil
                case .waiting(let continuation): slots[id] = nil; return continuation
                default: return nil
                }
            }
            waiter?.resume(returning: response)
        }
    }

    /// Sends `commands` in one message and returns their responses in order. A response with
    /// `error` throws unless `tolerating` says the error is expected (e.g. "already exists").
    @discardableResult
    func run(_ commands: [[String: JSONValue]], tolerating: (String, String) -> Bool = { _, _ in false }) async throws -> [[String: JSONValue]] {
        var tagged: [JSONValue] = []
        var ids: [String] = []
        for var command in commands {
            let id = UUID().uuidString
            command["correlationData"] = .string(id)
            tagged.append(.object(command))
            ids.append(id)
        }
        let payload = try JSONEncoder().encode(JSONValue.object(["commands": .array(tagged)]))
        slots.withLock { slots in for id in ids { slots[id] = .expected } }
        let limit = timeout
        let timer = Task { [ids] in
            try await Task.sleep(for: limit)
            self.fail(ids, with: FleetError(
                "the broker did not answer dynamic-security commands within \(limit)", hint: "is the dynamic-security plugin loaded?"))
        }
        defer { timer.cancel() }
        do {
            try await client.publish(topic: Self.controlTopic, payload: payload, qos: .atLeastOnce)
        } catch {
            fail(ids, with: error)
            throw error
        }
        var responses: [[String: JSONValue]] = []
        for id in ids {
            responses.append(try await withCheckedThrowingContinuation { continuation in
                let ready = slots.withLock { slots -> Result<[String: JSONValue], any Error>? in
                    switch slots[id] {
                    case .arrived(let response): slots[id] = nil; return .success(response)
                    case .expected: slots[id] = .waiting(continuation); return nil
                    case .failed(let error): slots[id] = nil; return .failure(error)
                    default: return .failure(MQTTError.closed)
                    }
                }
                if let ready { continuation.resume(with: ready) }
            })
        }
        for (command, response) in zip(commands, responses) {
            if case .string(let error)? = response["error"] {
                let name = command["command"].flatMap { if case .string(let s) = $0 { s } else { nil } } ?? "?"
                if !tolerating(name, error) {
                    throw BrokerAdminError(command: name, message: error)
                }
            }
        }
        return responses
    }

    // MARK: ProvisioningBackend

    static func acls(_ rules: [(AccessRules.Right, String)], literal: Bool) -> JSONValue {
        var acls: [JSONValue] = []
        for (right, topic) in rules {
            switch right {
            case .publish:
                acls.append(.object(["acltype": .string("publishClientSend"), "topic": .string(topic), "allow": .bool(true)]))
            case .subscribe:
                acls.append(.object(["acltype": .string(literal ? "subscribeLiteral" : "subscribePattern"), "topic": .string(topic), "allow": .bool(true)]))
                acls.append(.object(["acltype": .string("publishClientReceive"), "topic": .string(topic), "allow": .bool(true)]))
            }
        }
        return .array(acls)
    }

    /// The name of a PulseBridge service client already on this broker (`fleet-manager` or
    /// `payment-server`), or nil: `init` refuses a broker that holds a fleet.
    public func existingFleetIdentity() async throws -> String? {
        for username in ["fleet-manager", "payment-server"] {
            let responses = try await run([["command": .string("getClient"), "username": .string(username)]], tolerating: { _, _ in true })
            if let response = responses.first, response["error"] == nil { return username }
        }
        return nil
    }

    public func bootstrap(topics: TopicScheme, manager: BrokerIdentity, paymentServer: BrokerIdentity) async throws {
        let admin: JSONValue = .array([
            .object(["acltype": .string("publishClientSend"), "topic": .string("$CONTROL/dynamic-security/#"), "allow": .bool(true)]),
            .object(["acltype": .string("publishClientReceive"), "topic": .string("$CONTROL/dynamic-security/#"), "allow": .bool(true)]),
            .object(["acltype": .string("subscribePattern"), "topic": .string("$CONTROL/dynamic-security/#"), "allow": .bool(true)]),
        ])
        let roles: [(String, JSONValue)] = [
            ("fleet-admin", admin),
            ("fleet-manager", Self.acls(AccessRules.fleetManager(topics), literal: false)),
            ("payment-server", Self.acls(AccessRules.paymentServer(topics), literal: false)),
        ]
        // Nothing is allowed unless a role says so.
        try await run([
            [
                "command": .string("setDefaultACLAccess"),
                "acls": .array([
                    .object(["acltype": .string("publishClientSend"), "allow": .bool(false)]),
                    .object(["acltype": .string("publishClientReceive"), "allow": .bool(false)]),
                    .object(["acltype": .string("subscribe"), "allow": .bool(false)]),
                    .object(["acltype": .string("unsubscribe"), "allow": .bool(true)]),
                ]),
            ]
        ])
        for (name, acls) in roles {
            // A role left by an init that failed before its clients existed is recreated so its
            // ACLs are exactly these. A role a client holds is never deleted (mosquitto 2.0.11
            // crashes then, upstream issue 2660): `init` refused a broker with our clients.
            let holders = try await roleHolders(name)
            if holders.isEmpty {
                try await run([["command": .string("deleteRole"), "rolename": .string(name)]], tolerating: { _, _ in true })
                try await run([["command": .string("createRole"), "rolename": .string(name), "acls": acls]])
            } else {
                throw FleetError(
                    "the broker's role '\(name)' is held by \(holders.joined(separator: ", "))",
                    hint: "this broker holds another fleet; nothing was changed")
            }
        }
        // The manager's identity is the broker's administrator (it can change any password), so
        // pinning its client ID would protect nothing; it connects with several client IDs.
        try await run([
            [
                "command": .string("createClient"), "username": .string(manager.username), "password": .string(manager.password),
                "roles": .array(["fleet-manager", "fleet-admin"].map { .object(["rolename": .string($0)]) }),
            ]
        ])
        try await createPaymentServer(paymentServer)
    }

    /// The clients that hold `role` (dynsec `listClients` in verbose form).
    func roleHolders(_ role: String) async throws -> [String] {
        let responses = try await run([["command": .string("listClients"), "verbose": .bool(true)]])
        guard let response = responses.first, case .object(let data)? = response["data"], case .array(let clients)? = data["clients"] else {
            return []
        }
        return clients.compactMap { client in
            guard case .object(let fields) = client, case .string(let username)? = fields["username"], case .array(let roles)? = fields["roles"] else {
                return nil
            }
            let holds = roles.contains { entry in
                if case .object(let role_) = entry, case .string(role)? = role_["rolename"] { return true }
                return false
            }
            return holds ? username : nil
        }
    }

    /// Every payment server is its own client, pinned to the client ID equal to its username,
    /// so its credentials can never take over a unit's session (a unit's client ID is its
    /// machine ID, and machine IDs never name a service).
    public func createPaymentServer(_ identity: BrokerIdentity) async throws {
        try await run([
            [
                "command": .string("createClient"), "username": .string(identity.username), "clientid": .string(identity.username),
                "password": .string(identity.password), "roles": .array([.object(["rolename": .string("payment-server")])]),
            ]
        ])
    }

    public func deletePaymentServer(username: String) async throws {
        try await run([["command": .string("deleteClient"), "username": .string(username)]])
    }

    public func isDeviceIdentity(_ machine: MachineID) async throws -> Bool {
        let responses = try await run(
            [["command": .string("getClient"), "username": .string(machine.rawValue)]], tolerating: { _, _ in true })
        guard let response = responses.first, response["error"] == nil,
            case .object(let data)? = response["data"], case .object(let client)? = data["client"]
        else { return false }
        guard case .string(machine.rawValue)? = client["clientid"], case .array(let roles)? = client["roles"] else { return false }
        return roles.contains { role in
            if case .object(let fields) = role, case .string("device-\(machine.rawValue)")? = fields["rolename"] { return true }
            return false
        }
    }

    public func createDevice(_ machine: MachineID, password: String, topics: TopicScheme) async throws {
        let role = "device-\(machine.rawValue)"
        try await run([
            ["command": .string("createRole"), "rolename": .string(role), "acls": Self.acls(AccessRules.device(machine, topics), literal: true)],
            [
                "command": .string("createClient"), "username": .string(machine.rawValue), "clientid": .string(machine.rawValue),
                "password": .string(password), "roles": .array([.object(["rolename": .string(role)])]),
            ],
        ])
    }

    public func deviceExists(_ machine: MachineID) async throws -> Bool {
        let responses = try await run(
            [["command": .string("getClient"), "username": .string(machine.rawValue)]], tolerating: { _, _ in true })
        return responses.first?["error"] == nil
    }

    public func setDevicePassword(_ machine: MachineID, password: String) async throws {
        try await run([["command": .string("setClientPassword"), "username": .string(machine.rawValue), "password": .string(password)]])
    }

    public func deleteDevice(_ machine: MachineID) async throws {
        try await run(
            [
                ["command": .string("deleteClient"), "username": .string(machine.rawValue)],
                ["command": .string("deleteRole"), "rolename": .string("device-\(machine.rawValue)")],
            ], tolerating: { _, error in error.contains("not found") })
    }
}

/// Forwards responses to the backend; set once, after the backend exists.
private final class ResponseRouter: @unchecked Sendable {
    // @unchecked: `backend` is written once in the backend's init before any message can
    // arrive (the subscription comes after), then only read.
    weak var backend: DynamicSecurityBackend?
    func route(_ payload: Data) { backend?.deliver(payload) }
}

/// Just enough JSON for dynsec commands and responses.
enum JSONValue: Codable, Sendable, Hashable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case array([JSONValue])
    case object([String: JSONValue])
    case null

    init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() { self = .null }
        else if let value = try? container.decode(Bool.self) { self = .bool(value) }
        else if let value = try? container.decode(Double.self) { self = .number(value) }
        else if let value = try? container.decode(String.self) { self = .string(value) }
        else if let value = try? container.decode([JSONValue].self) { self = .array(value) }
        else { self = .object(try container.decode([String: JSONValue].self)) }
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        switch self {
        case .string(let value): try container.encode(value)
        case .number(let value): try container.encode(value)
        case .bool(let value): try container.encode(value)
        case .array(let value): try container.encode(value)
        case .object(let value): try container.encode(value)
        case .null: try container.encodeNil()
        }
    }
}
