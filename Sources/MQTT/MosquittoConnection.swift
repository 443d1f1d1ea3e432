internal import CMosquitto
import Foundation
import Logging
import Synchronization
import Locking

/// libmosquitto is initialised once per process, before the first client is made.
private let libraryInitialised: Bool = {
    mosquitto_lib_init()
    return true
}()

/// The libmosquitto object and everything shared between the network thread and callers.
///
/// Thread discipline: libmosquitto runs in "threaded" mode (`mosquitto_threaded_set`) on the
/// one network thread this type owns; callbacks arrive there. Callers publish and subscribe
/// from any thread (libmosquitto locks its queues and wakes the network thread). All Swift
/// state sits in `state`; continuations are resumed outside the lock.
final class MosquittoConnection: @unchecked Sendable {
    // @unchecked: `handle` is a C pointer used under libmosquitto's own locking rules above;
    // everything mutable is behind the lock (`Locked`).
    let handle: OpaquePointer
    let configuration: MQTTConfiguration
    let logger: Logger
    let messageContinuation: AsyncStream<MQTTMessage>.Continuation
    /// Per-subscription streams (`MQTTClient.subscription(to:)`).
    let router = MessageRouter()
    let state = Locked(State())
    /// Wakes the network thread out of a backoff wait when the client closes.
    let wake = DispatchSemaphore(value: 0)
    /// Signalled once when the network thread has returned.
    let loopExited = DispatchSemaphore(value: 0)

    struct State {
        var phase: MQTTConnectionState = .idle
        var session: UInt64 = 0
        var loopRunning = false
        var stopRequested = false
        var destroyed = false
        var failedAttempts = 0
        /// `connect()` waiting for the first CONNACK.
        var connectWaiter: CheckedContinuation<Void, any Error>?
        var connectError: MQTTError?
        var lastTLSError: String?
        /// Message IDs from publish, subscribe and unsubscribe calls, reconciled with their
        /// acknowledgements, which may arrive before the caller records them.
        var acks = AckTable()
        var subscriptions: [String: MQTTQoS] = [:]
        var subscriptionOrder: [String] = []
        var observers: [Int: AsyncStream<MQTTConnectionState>.Continuation] = [:]
        var nextObserver = 0
        var exitWaiters: [CheckedContinuation<Void, Never>] = []
        /// The protocol level spoken now (MQTT 5 may have fallen back to 3.1.1).
        var version: MQTTProtocolVersion = .v5
        /// Set when the broker refused MQTT 5: the next attempt speaks 3.1.1.
        var fallBack = false
        /// MQTT 5 attempts in a row that ended before any CONNACK.
        var closedBeforeConnack = 0
        /// Whether the current attempt got a CONNACK (accepted or not).
        var gotConnack = false
        /// Which of `configuration.endpoints` the next attempt uses.
        var endpointIndex = 0
        /// Endpoints tried while `connect()` waits for its first connection.
        var firstRoundTried = 0
    }

    /// The protocol level spoken now.
    var version: MQTTProtocolVersion { state.withLock { $0.version } }

    init(
        configuration: MQTTConfiguration, messages: AsyncStream<MQTTMessage>.Continuation, logger: Logger
    ) throws {
        _ = libraryInitialised
        self.configuration = configuration
        self.messageContinuation = messages
        var logger = logger
        logger[metadataKey: "mqtt.client"] = "\(configuration.clientID)"
        logger[metadataKey: "mqtt.broker"] = "\(configuration.endpoint)"
        self.logger = logger
        guard let handle = mosquitto_new(configuration.clientID, configuration.cleanStart, nil) else {
            throw MQTTError.library(
                operation: "mosquitto_new", code: Int32(errno), message: String(cString: strerror(errno)))
        }
        self.handle = handle
        state.withLock { $0.version = configuration.protocolVersion }
        // The C object holds its owner unretained: `close` destroys it before `self` can go.
        mosquitto_user_data_set(handle, Unmanaged.passUnretained(self).toOpaque())
        do {
            try configure()
        } catch {
            mosquitto_destroy(handle)
            throw error
        }
    }

    deinit {
        let destroyed = state.withLock { $0.destroyed }
        if !destroyed { mosquitto_destroy(handle) }
    }

    static func from(_ userdata: UnsafeMutableRawPointer?) -> MosquittoConnection {
        Unmanaged<MosquittoConnection>.fromOpaque(userdata!).takeUnretainedValue()
    }

    // MARK: Setup

    func configure() throws {
        let version = configuration.protocolVersion == .v5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311
        try check(mosquitto_int_option(handle, MOSQ_OPT_PROTOCOL_VERSION, Int32(version)), "set protocol version")
        try check(mosquitto_int_option(handle, MOSQ_OPT_TCP_NODELAY, 1), "set TCP_NODELAY")
        try check(mosquitto_threaded_set(handle, true), "mosquitto_threaded_set")
        if configuration.username != nil || configuration.password != nil {
            try check(
                mosquitto_username_pw_set(handle, configuration.username, configuration.password),
                "set username and password")
        }
        if let tls = configuration.tls {
            try check(
                mosquitto_tls_set(handle, tls.caFile, nil, tls.certificateFile, tls.keyFile, nil),
                "set TLS files (CA \(tls.caFile))")
        }
        mosquitto_connect_v5_callback_set(handle) { _, userdata, rc, flags, _ in
            MosquittoConnection.from(userdata).didConnect(rc: rc, sessionPresent: flags & 1 == 1)
        }
        mosquitto_disconnect_v5_callback_set(handle) { _, userdata, rc, _ in
            MosquittoConnection.from(userdata).didDisconnect(rc: rc)
        }
        mosquitto_publish_v5_callback_set(handle) { _, userdata, mid, reasonCode, _ in
            MosquittoConnection.from(userdata).didAcknowledgePublish(mid: mid, reasonCode: reasonCode)
        }
        mosquitto_subscribe_v5_callback_set(handle) { _, userdata, mid, count, granted, _ in
            let codes = (0..<Int(count)).map { granted![$0] }
            MosquittoConnection.from(userdata).didAcknowledgeSubscribe(mid: mid, codes: codes)
        }
        mosquitto_unsubscribe_v5_callback_set(handle) { _, userdata, mid, _ in
            MosquittoConnection.from(userdata).didAcknowledgeUnsubscribe(mid: mid)
        }
        mosquitto_message_v5_callback_set(handle) { _, userdata, message, properties in
            MosquittoConnection.from(userdata).didReceive(message!.pointee, properties: properties)
        }
        mosquitto_log_callback_set(handle) { _, userdata, level, text in
            MosquittoConnection.from(userdata).didLog(level: level, text: text!)
        }
    }

    /// The one checking helper every libmosquitto call goes through: reads errno at once.
    func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws {
        if rc == MOSQ_ERR_SUCCESS.rawValue { return }
        throw MosquittoConnection.error(rc, errno: errno, operation: operation(), endpoint: configuration.endpoint)
    }

    static func error(_ rc: Int32, errno: Int32, operation: String, endpoint: String) -> MQTTError {
        switch mosq_err_t(rawValue: rc) {
        case MOSQ_ERR_ERRNO:
            return .library(operation: operation, code: rc, message: String(cString: strerror(errno)))
        case MOSQ_ERR_NO_CONN:
            return .notConnected(endpoint: endpoint)
        case MOSQ_ERR_INVAL, MOSQ_ERR_PAYLOAD_SIZE, MOSQ_ERR_MALFORMED_UTF8, MOSQ_ERR_OVERSIZE_PACKET:
            return .invalidArgument("\(operation): \(String(cString: mosquitto_strerror(rc)))")
        default:
            return .library(operation: operation, code: rc, message: String(cString: mosquitto_strerror(rc)))
        }
    }
}
