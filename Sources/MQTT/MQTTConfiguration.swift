import Foundation

/// The MQTT protocol level spoken on the wire.
public enum MQTTProtocolVersion: Sendable, Hashable {
    /// MQTT 5: reason codes, message expiry and session expiry properties.
    case v5
    /// MQTT 3.1.1: every PulseBridge message works over it; properties are dropped.
    case v311
}

/// Quality of service of one publish or subscription.
public enum MQTTQoS: Int32, Sendable, Hashable, Comparable {
    case atMostOnce = 0
    case atLeastOnce = 1
    case exactlyOnce = 2

    public static func < (lhs: MQTTQoS, rhs: MQTTQoS) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// TLS settings of a connection. The broker's certificate is always verified.
public struct MQTTTLS: Sendable, Hashable {
    /// PEM file of the certificate authority that signed the broker's certificate.
    public var caFile: String
    /// Optional client certificate (PEM) for brokers that authenticate clients by certificate.
    public var certificateFile: String?
    /// Private key (PEM) of `certificateFile`.
    public var keyFile: String?

    public init(caFile: String, certificateFile: String? = nil, keyFile: String? = nil) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
    }
}

/// How the client waits between reconnection attempts: capped exponential backoff with
/// full jitter, so a fleet that lost its broker does not come back in lockstep.
public struct MQTTReconnectPolicy: Sendable, Hashable {
    /// The delay cap before the first retry; doubled per failed attempt.
    public var initialDelay: Duration
    /// The largest delay cap.
    public var maximumDelay: Duration

    /// After the broker refused the connection (credentials not authorized, a revoked unit,
    /// a banned client ID), wait at least this long, jittered: retrying every few seconds only
    /// loads the broker and its logs. Nil: the ordinary backoff.
    public var refusedDelay: Duration?

    public init(initialDelay: Duration = .milliseconds(250), maximumDelay: Duration = .seconds(30), refusedDelay: Duration? = nil) {
        self.initialDelay = initialDelay
        self.maximumDelay = maximumDelay
        self.refusedDelay = refusedDelay
    }

    /// The delay before retry number `attempt` (0-based): uniformly random in
    /// `[cap/2, cap]` where `cap = min(maximumDelay, initialDelay × 2^attempt)`.
    public func delay(attempt: Int) -> Duration {
        let initial = initialDelay.seconds
        let maximum = maximumDelay.seconds
        let cap = min(maximum, initial * pow(2, Double(min(attempt, 30))))
        return .nanoseconds(Int64(Double.random(in: (cap / 2)...max(cap, cap / 2)) * 1e9))
    }
}

/// One broker address.
public struct MQTTEndpoint: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    public var description: String { "\(host):\(port)" }
}

/// Everything a client needs to reach its broker. Defaults suit a loopback development broker.
public struct MQTTConfiguration: Sendable {
    /// Broker host name or address.
    public var host: String
    /// Broker TCP port.
    public var port: Int
    /// The MQTT client ID; for a PulseBridge device it is its machine ID.
    public var clientID: String
    /// Protocol level; MQTT 5 unless 3.1.1 is asked for.
    public var protocolVersion: MQTTProtocolVersion = .v5
    /// With MQTT 5: fall back to 3.1.1 when a broker refuses 5 ("unsupported protocol
    /// version", as nats-server does) or twice closes the connection before its CONNACK (as
    /// rabbitmq does). The client then stays on 3.1.1.
    public var protocolFallback = true
    /// Further brokers of the same cluster, tried in turn after `host:port` when a connection
    /// cannot be made or is lost.
    public var alternateEndpoints: [MQTTEndpoint] = []
    public var username: String?
    public var password: String?
    /// TLS, or `nil` for plain TCP.
    public var tls: MQTTTLS?
    /// Keep-alive interval in seconds.
    public var keepAliveSeconds: Int32 = 30
    /// Start with a clean session. Off by default: the broker keeps the session and queues
    /// QoS 1 messages while the client is away.
    public var cleanStart: Bool = false
    /// How long the broker keeps the session after a disconnect (MQTT 5 only).
    public var sessionExpirySeconds: UInt32 = 7 * 24 * 3600
    /// The will for each connection; called before every connection attempt with the
    /// connection's session number (1 for the first connection of this client).
    public var will: (@Sendable (_ session: UInt64) -> MQTTOutgoingMessage)?
    /// Backoff between reconnection attempts.
    public var reconnect = MQTTReconnectPolicy()
    /// Called on the network thread with each incoming message before the next one is read;
    /// returns true if it took the message (it is then not queued on `messages`). For work
    /// that must be done before the client reads on, e.g. making a payment durable: libmosquitto
    /// has acknowledged a QoS 1 message already when it is handed over, so the broker will not
    /// send it again. Keep it short: it holds up every later message.
    public var receiveHook: (@Sendable (MQTTMessage) -> Bool)?
    /// How long `connect()` waits for the first CONNACK.
    public var connectTimeout: Duration = .seconds(10)

    public init(host: String = "127.0.0.1", port: Int = 1883, clientID: String) {
        self.host = host
        self.port = port
        self.clientID = clientID
    }

    /// "host:port", as errors name the broker.
    public var endpoint: String { "\(host):\(port)" }

    /// Every broker address, the first one first.
    public var endpoints: [MQTTEndpoint] { [MQTTEndpoint(host: host, port: port)] + alternateEndpoints }
}

extension Duration {
    /// The duration in seconds, as a floating-point number.
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
    /// The duration in whole nanoseconds.
    var nanoseconds: Int { Int(components.seconds) * 1_000_000_000 + Int(components.attoseconds / 1_000_000_000) }
}
