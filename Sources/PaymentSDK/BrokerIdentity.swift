import Foundation
import Logging
import MQTT

/// How a service (a payment server, the fleet manager) reaches the broker with one identity:
/// the credentials file `fleet-manager payment-servers add` writes.
public struct BrokerIdentity: Codable, Sendable, Hashable {
    public var host: String
    public var port: Int
    /// CA file for TLS, or nil for plain TCP (loopback listener).
    public var caFile: String?
    public var username: String
    public var password: String
    /// Further nodes of a clustered broker ("host:port"), tried in turn when `host:port`
    /// cannot be reached or is lost.
    public var alternates: [String]?

    public init(host: String, port: Int, caFile: String? = nil, username: String, password: String, alternates: [String]? = nil) {
        self.host = host
        self.port = port
        self.caFile = caFile
        self.username = username
        self.password = password
        self.alternates = alternates
    }

    /// Every node, `host:port` first.
    public var endpoints: [MQTTEndpoint] {
        [MQTTEndpoint(host: host, port: port)] + (alternates ?? []).compactMap(MQTTEndpoint.init(parsing:))
    }
}

extension MQTTEndpoint {
    /// "host:port" (a bracketed IPv6 address too), or nil.
    public init?(parsing text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port)
    }
}

extension BrokerIdentity {
    /// An MQTT client for this identity (not connected yet).
    public func client(clientID: String, cleanStart: Bool = true, logger: Logger = Logger(label: "pulsebridge.fleet")) throws -> MQTTClient {
        var configuration = MQTTConfiguration(host: host, port: port, clientID: clientID)
        configuration.username = username
        configuration.password = password
        configuration.cleanStart = cleanStart
        configuration.alternateEndpoints = Array(endpoints.dropFirst())
        if let caFile { configuration.tls = MQTTTLS(caFile: caFile) }
        return try MQTTClient(configuration, logger: logger)
    }

    /// Connects, turning a failure into an operator-facing error.
    public func connect(clientID: String, cleanStart: Bool = true, logger: Logger = Logger(label: "pulsebridge.fleet")) async throws -> MQTTClient {
        let client = try client(clientID: clientID, cleanStart: cleanStart, logger: logger)
        do {
            try await client.connect()
        } catch {
            await client.close()
            throw PaymentSDKError(
                "cannot connect to the broker as '\(username)': \(error)",
                hint: "is the broker running, and are the credentials (host, port, username, password) right?")
        }
        return client
    }

    /// Connects (as `connect` does), runs `body` with the client and closes it, whatever
    /// `body` does: one job, one connection, never left open.
    public func withClient<Result>(
        clientID: String, cleanStart: Bool = true, logger: Logger = Logger(label: "pulsebridge.fleet"),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (MQTTClient) async throws -> Result
    ) async throws -> Result {
        try await connect(clientID: clientID, cleanStart: cleanStart, logger: logger).closing(isolation: isolation, body)
    }
}
