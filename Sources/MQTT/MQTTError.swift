/// Why an MQTT operation failed. Every case names the broker or the topic involved.
public enum MQTTError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The TCP connection could not be made (refused, unreachable, name not found).
    case unreachable(endpoint: String, reason: String)
    /// The broker answered CONNACK with a refusal (bad credentials, not authorised, ...).
    case refused(endpoint: String, reasonCode: Int32, reason: String)
    /// The TLS handshake failed, typically because the broker's certificate did not verify.
    case tls(endpoint: String, reason: String)
    /// No CONNACK arrived in time.
    case connectTimedOut(endpoint: String, seconds: Double)
    /// The connection dropped before the broker answered.
    case connectionLost(endpoint: String, reason: String)
    /// The broker refused a subscription filter (SUBACK reason code ≥ 0x80).
    case subscriptionRefused(filter: String, reasonCode: Int32, reason: String)
    /// The broker refused a publish (PUBACK reason code ≥ 0x80, MQTT 5 only).
    case publishRefused(topic: String, reasonCode: Int32, reason: String)
    /// The operation needs a live connection and there is none.
    case notConnected(endpoint: String)
    /// The client was closed.
    case closed
    /// A value the library rejected (topic with wildcards, oversize payload, ...).
    case invalidArgument(String)
    /// Any other libmosquitto failure.
    case library(operation: String, code: Int32, message: String)

    public var description: String {
        switch self {
        case .unreachable(let endpoint, let reason):
            "cannot reach the MQTT broker at \(endpoint): \(reason)"
        case .refused(let endpoint, let code, let reason):
            "the MQTT broker at \(endpoint) refused the connection: \(reason) (reason code \(code))"
        case .tls(let endpoint, let reason):
            "TLS with the MQTT broker at \(endpoint) failed: \(reason)"
        case .connectTimedOut(let endpoint, let seconds):
            "no answer from the MQTT broker at \(endpoint) within \(seconds) s"
        case .connectionLost(let endpoint, let reason):
            "the connection to the MQTT broker at \(endpoint) was lost: \(reason)"
        case .subscriptionRefused(let filter, let code, let reason):
            "the broker refused the subscription to '\(filter)': \(reason) (reason code \(code))"
        case .publishRefused(let topic, let code, let reason):
            "the broker refused the publish to '\(topic)': \(reason) (reason code \(code))"
        case .notConnected(let endpoint):
            "not connected to the MQTT broker at \(endpoint)"
        case .closed:
            "the MQTT client is closed"
        case .invalidArgument(let what):
            "invalid MQTT argument: \(what)"
        case .library(let operation, let code, let message):
            "\(operation) failed: \(message) (libmosquitto error \(code))"
        }
    }
}
