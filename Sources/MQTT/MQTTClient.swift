import Foundation
import Logging
import Synchronization

/// An MQTT client over libmosquitto: the one MQTT implementation of PulseBridge, used by the
/// edge agent, the fleet manager and the payment-server SDK.
///
/// The client owns one network thread (libmosquitto's callbacks run there). Incoming
/// messages arrive on ``messages``; publishes and subscriptions are `async` and await the
/// broker's acknowledgement. After the first connection the client reconnects by itself
/// with capped, jittered exponential backoff and restores its subscriptions.
///
/// ``close()`` must be called: it sends DISCONNECT, stops the network thread and frees the
/// library's memory. A client dropped without it is closed by `deinit`, with a warning.
public final class MQTTClient: Sendable {
    /// The settings the client was made with.
    public let configuration: MQTTConfiguration
    /// Every message the broker delivers that no ``subscription(to:qos:)`` stream takes, in
    /// order, for all other subscriptions. One consumer.
    public let messages: AsyncStream<MQTTMessage>

    let connection: MosquittoConnection

    /// Makes a client; nothing touches the network until ``connect()`` or ``start()``.
    public init(_ configuration: MQTTConfiguration, logger: Logger = Logger(label: "pulsebridge.mqtt")) throws {
        self.configuration = configuration
        let (stream, continuation) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .unbounded)
        self.messages = stream
        self.connection = try MosquittoConnection(configuration: configuration, messages: continuation, logger: logger)
    }

    deinit {
        connection.closeSynchronouslyIfNeeded()
    }

    /// Connects and waits for the broker's CONNACK. Fails fast, naming the broker, when the
    /// broker is unreachable, refuses the credentials, fails TLS or does not answer within
    /// `connectTimeout`; after that first success, connection losses are retried by itself.
    public func connect() async throws {
        try await connection.connect()
    }

    /// Starts connecting in the background and returns at once: the client keeps trying
    /// (with backoff) until the broker answers. For devices, where a broker that is away at
    /// power-up is normal. Watch ``connectionStates()`` to see it come up.
    public func start() throws {
        try connection.startLoop(waitingForFirstConnection: false)
    }

    /// The connection's state now.
    public var connectionState: MQTTConnectionState { connection.currentState }
    /// The protocol level spoken now: MQTT 5, or 3.1.1 if asked for or fallen back to.
    public var protocolVersion: MQTTProtocolVersion { connection.version }

    /// The current state, then every change, until the client closes.
    public func connectionStates() -> AsyncStream<MQTTConnectionState> {
        connection.observeStates()
    }

    /// Subscribes and waits for the SUBACK. A filter the broker refuses (for example by its
    /// ACL) throws ``MQTTError/subscriptionRefused(filter:reasonCode:reason:)`` and is not
    /// restored on reconnect.
    public func subscribe(_ subscriptions: [MQTTSubscription]) async throws {
        try await connection.subscribe(subscriptions)
    }

    /// Subscribes to one filter and waits for the SUBACK.
    public func subscribe(_ filter: String, qos: MQTTQoS = .atLeastOnce) async throws {
        try await connection.subscribe([MQTTSubscription(filter, qos: qos)])
    }

    /// Subscribes to `filter` and returns the subscription's own stream: every message whose
    /// topic matches the filter, in order, and no other (those no longer reach ``messages``).
    /// Retained messages sent with the SUBACK are in it. The stream ends when the client
    /// closes; when its consumer goes away first, the client unsubscribes (unless another
    /// stream has the same filter). A filter the broker refuses throws
    /// ``MQTTError/subscriptionRefused(filter:reasonCode:reason:)``.
    public func subscription(to filter: String, qos: MQTTQoS = .atLeastOnce) async throws -> AsyncStream<MQTTMessage> {
        let connection = self.connection
        // Routed before the SUBSCRIBE leaves: a retained message may arrive before the SUBACK.
        guard let (id, stream) = connection.router.add(filter: filter, onEnd: { last in
            guard last else { return }
            Task { try? await connection.unsubscribe([filter]) }
        }) else { throw MQTTError.closed }
        do {
            try await connection.subscribe([MQTTSubscription(filter, qos: qos)])
        } catch {
            connection.router.remove(id)
            throw error
        }
        return stream
    }

    /// Unsubscribes and waits for the UNSUBACK.
    public func unsubscribe(_ filters: [String]) async throws {
        try await connection.unsubscribe(filters)
    }

    /// Publishes. For QoS 1 and 2 it returns when the broker acknowledged the message and
    /// throws ``MQTTError/publishRefused(topic:reasonCode:reason:)`` when the broker refused it
    /// (MQTT 5). A QoS 1 message published while the connection is down is sent when it
    /// comes back; the call waits until then (cancel the task to stop waiting).
    @discardableResult
    public func publish(_ message: MQTTOutgoingMessage) async throws -> MQTTPublishAck {
        try await connection.publish(message)
    }

    /// Publishes `payload` on `topic`; see ``publish(_:)``.
    @discardableResult
    public func publish(
        topic: String, payload: Data, qos: MQTTQoS = .atLeastOnce, retain: Bool = false,
        messageExpirySeconds: UInt32? = nil, contentType: String? = nil
    ) async throws -> MQTTPublishAck {
        try await connection.publish(
            MQTTOutgoingMessage(
                topic: topic, payload: payload, qos: qos, retain: retain,
                messageExpirySeconds: messageExpirySeconds, contentType: contentType))
    }

    /// Sends DISCONNECT (so no will is published), stops the network thread, fails what is
    /// still waiting with ``MQTTError/closed`` and frees libmosquitto's memory. Idempotent.
    /// Must not be called from inside a libmosquitto callback (it never is by this module).
    public func close() async {
        await connection.close()
    }

    /// Breaks the TCP connection without DISCONNECT, as a crash or a cut cable would: the
    /// broker publishes the will. The client then reconnects by itself. For tests.
    @_spi(Testing)
    public func dropConnectionWithoutDisconnect() {
        connection.dropSocket()
    }
}

extension MQTTClient {
    /// Makes a client, connects it, runs `body` with it and closes it, whatever `body` does
    /// (returns, throws, or is cancelled): the scoped way to use a client for one job.
    public static func withClient<Result>(
        _ configuration: MQTTConfiguration, logger: Logger = Logger(label: "pulsebridge.mqtt"),
        isolation: isolated (any Actor)? = #isolation,
        _ body: (MQTTClient) async throws -> Result
    ) async throws -> Result {
        try await MQTTClient(configuration, logger: logger).closing(isolation: isolation) { client in
            try await client.connect()
            return try await body(client)
        }
    }

    /// Runs `body` with this client and closes it afterwards, whatever `body` does.
    public func closing<Result>(
        isolation: isolated (any Actor)? = #isolation,
        _ body: (MQTTClient) async throws -> Result
    ) async throws -> Result {
        do {
            let result = try await body(self)
            await close()
            return result
        } catch {
            await close()
            throw error
        }
    }
}
