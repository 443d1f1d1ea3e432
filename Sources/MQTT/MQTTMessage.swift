import Foundation

/// A message received from the broker, copied out of libmosquitto's memory.
public struct MQTTMessage: Sendable, Hashable {
    public var topic: String
    public var payload: Data
    public var qos: MQTTQoS
    /// The broker delivered it as a retained message (to a new subscription).
    public var retain: Bool
    /// MQTT 5 message expiry interval left, in seconds, when the broker sent it.
    public var messageExpirySeconds: UInt32?
    /// MQTT 5 content type.
    public var contentType: String?

    public init(
        topic: String, payload: Data, qos: MQTTQoS = .atMostOnce, retain: Bool = false,
        messageExpirySeconds: UInt32? = nil, contentType: String? = nil
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.messageExpirySeconds = messageExpirySeconds
        self.contentType = contentType
    }
}

/// A message to publish (or to leave as the connection's will).
public struct MQTTOutgoingMessage: Sendable, Hashable {
    public var topic: String
    public var payload: Data
    public var qos: MQTTQoS
    public var retain: Bool
    /// MQTT 5 message expiry interval; ignored on MQTT 3.1.1.
    public var messageExpirySeconds: UInt32?
    /// MQTT 5 content type; ignored on MQTT 3.1.1.
    public var contentType: String?

    public init(
        topic: String, payload: Data, qos: MQTTQoS = .atLeastOnce, retain: Bool = false,
        messageExpirySeconds: UInt32? = nil, contentType: String? = nil
    ) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.messageExpirySeconds = messageExpirySeconds
        self.contentType = contentType
    }
}

/// The broker's answer to a QoS 1 or 2 publish.
public struct MQTTPublishAck: Sendable, Hashable {
    /// The MQTT 5 reason code (0 success, 16 "no matching subscribers"); 0 on MQTT 3.1.1.
    public var reasonCode: Int32
}

/// A subscription request.
public struct MQTTSubscription: Sendable, Hashable {
    public var filter: String
    public var qos: MQTTQoS

    public init(_ filter: String, qos: MQTTQoS = .atLeastOnce) {
        self.filter = filter
        self.qos = qos
    }
}

/// Where the connection stands.
public enum MQTTConnectionState: Sendable, Hashable, CustomStringConvertible {
    /// `connect()` has not been called, or it failed.
    case idle
    /// A connection attempt is under way.
    case connecting(session: UInt64)
    /// CONNACK accepted; `session` counts connection attempts of this client, 1-based.
    case connected(session: UInt64, sessionPresent: Bool)
    /// The connection dropped; the client is retrying.
    case disconnected(reason: String)
    /// `close()` ran.
    case closed

    public var isConnected: Bool {
        if case .connected = self { return true }
        return false
    }

    public var description: String {
        switch self {
        case .idle: "idle"
        case .connecting(let s): "connecting (session \(s))"
        case .connected(let s, let present): "connected (session \(s)\(present ? ", resumed" : ""))"
        case .disconnected(let reason): "disconnected: \(reason)"
        case .closed: "closed"
        }
    }
}
