import Foundation
import Logging
import MQTT

extension BrokerIdentity {
    /// An MQTT client for this identity (not connected yet).
    public func client(clientID: String, cleanStart: Bool = true, logger: Logger = Logger(label: "pulsebridge.fleet")) throws -> MQTTClient {
        var configuration = MQTTConfiguration(host: host, port: port, clientID: clientID)
        configuration.username = username
        configuration.password = password
        configuration.cleanStart = cleanStart
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
            throw FleetError(
                "cannot connect to the broker as '\(username)': \(error)",
                hint: "is the broker running, and are the fleet settings (settings.json) right?")
        }
        return client
    }
}
