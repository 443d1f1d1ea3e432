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
    private let handle: OpaquePointer
    private let configuration: MQTTConfiguration
    private let logger: Logger
    private let messageContinuation: AsyncStream<MQTTMessage>.Continuation
    private let state = Locked(State())
    /// Wakes the network thread out of a backoff wait when the client closes.
    private let wake = DispatchSemaphore(value: 0)
    /// Signalled once when the network thread has returned.
    private let loopExited = DispatchSemaphore(value: 0)

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
    }

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

    private static func from(_ userdata: UnsafeMutableRawPointer?) -> MosquittoConnection {
        Unmanaged<MosquittoConnection>.fromOpaque(userdata!).takeUnretainedValue()
    }

    // MARK: Setup

    private func configure() throws {
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
    private func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws {
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

    // MARK: Connection lifecycle

    var currentState: MQTTConnectionState { state.withLock { $0.phase } }

    func observeStates() -> AsyncStream<MQTTConnectionState> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: MQTTConnectionState.self, bufferingPolicy: .bufferingNewest(64))
        let closed: Bool = state.withLock { s in
            continuation.yield(s.phase)
            if case .closed = s.phase { return true }
            let id = s.nextObserver
            s.nextObserver += 1
            s.observers[id] = continuation
            continuation.onTermination = { [weak self] _ in
                _ = self?.state.withLock { $0.observers.removeValue(forKey: id) }
            }
            return false
        }
        if closed { continuation.finish() }
        return stream
    }

    private func setPhase(_ phase: MQTTConnectionState, in s: inout State) {
        s.phase = phase
        for observer in s.observers.values { observer.yield(phase) }
    }

    func connect() async throws {
        let timeout = configuration.connectTimeout
        let endpoint = configuration.endpoint
        // A strong capture: the timer is cancelled when connect returns, and a weak reference
        // would give the connection a side table that LeakSanitizer reports at a quick exit.
        let timer = Task {
            try await Task.sleep(for: timeout)
            self.failFirstConnect(.connectTimedOut(endpoint: endpoint, seconds: timeout.seconds))
        }
        defer { timer.cancel() }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let refusal: (any Error)? = state.withLock { s in
                if case .closed = s.phase { return MQTTError.closed }
                guard !s.loopRunning else {
                    return MQTTError.invalidArgument("connect() called on a client that is already running")
                }
                s.connectWaiter = continuation
                return nil
            }
            if let refusal {
                continuation.resume(throwing: refusal)
                return
            }
            do {
                try startLoop(waitingForFirstConnection: true)
            } catch {
                failFirstConnect(error as? MQTTError ?? .closed)
            }
        }
    }

    /// Fails a pending `connect()` and stops the loop (the client returns to `idle`).
    private func failFirstConnect(_ error: MQTTError) {
        let waiter: CheckedContinuation<Void, any Error>? = state.withLock { s in
            guard let waiter = s.connectWaiter else { return nil }
            s.connectWaiter = nil
            s.stopRequested = true
            return waiter
        }
        guard let waiter else { return }
        mosquitto_disconnect(handle)
        wake.signal()
        waiter.resume(throwing: error)
    }

    func startLoop(waitingForFirstConnection: Bool) throws {
        try state.withLock { s in
            if case .closed = s.phase { throw MQTTError.closed }
            guard !s.loopRunning else {
                throw MQTTError.invalidArgument("the client is already running")
            }
            s.loopRunning = true
            s.stopRequested = false
        }
        let thread = Thread { [self] in runLoop() }
        thread.name = "mqtt-\(configuration.clientID)"
        thread.start()
    }

    /// The network thread: connect, run libmosquitto's loop until the connection drops, back
    /// off, repeat; until `close()` or a failed first `connect()` asks it to stop.
    private func runLoop() {
        while !state.withLock({ $0.stopRequested }) {
            let session: UInt64 = state.withLock { s in
                s.session += 1
                s.lastTLSError = nil
                setPhase(.connecting(session: s.session), in: &s)
                return s.session
            }
            setWill(session: session)
            var rc = connectOnce()
            let connectErrno = errno
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                var stopIterations = 0
                while true {
                    rc = mosquitto_loop(handle, 1000, 1)
                    if rc != MOSQ_ERR_SUCCESS.rawValue { break }
                    if state.withLock({ $0.stopRequested }) {
                        // Give the queued DISCONNECT a moment to leave, then stop regardless.
                        stopIterations += 1
                        if stopIterations > 3 { break }
                    }
                }
            }
            let failure = describeEnd(rc: rc, errno: connectErrno)
            let retry: Duration? = state.withLock { s in
                switch s.phase {
                case .connected, .connecting: setPhase(.disconnected(reason: failure.description), in: &s)
                case .idle, .disconnected, .closed: break
                }
                if s.stopRequested { return nil }
                var delay = configuration.reconnect.delay(attempt: s.failedAttempts)
                if case .refused = failure, let floor = configuration.reconnect.refusedDelay {
                    delay = max(delay, floor + .milliseconds(Int.random(in: 0...Int(floor.seconds * 500))))
                }
                s.failedAttempts += 1
                return delay
            }
            if state.withLock({ $0.connectWaiter != nil }) {
                failFirstConnect(state.withLock { $0.connectError } ?? failure)
                break
            }
            guard let retry else { break }
            logger.info(
                "MQTT connection down; retrying",
                metadata: ["mqtt.reason": "\(failure)", "mqtt.retry_ms": "\(retry.nanoseconds / 1_000_000)"])
            _ = wake.wait(timeout: .now() + .nanoseconds(retry.nanoseconds))
        }
        let waiters: [CheckedContinuation<Void, Never>] = state.withLock { s in
            s.loopRunning = false
            if case .closed = s.phase {} else { setPhase(.idle, in: &s) }
            defer { s.exitWaiters = [] }
            return s.exitWaiters
        }
        loopExited.signal()
        for waiter in waiters { waiter.resume() }
    }

    private func connectOnce() -> Int32 {
        var properties: OpaquePointer? = nil
        defer { mosquitto_property_free_all(&properties) }
        if configuration.protocolVersion == .v5 {
            mosquitto_property_add_int32(
                &properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), configuration.sessionExpirySeconds)
        }
        return mosquitto_connect_bind_v5(
            handle, configuration.host, Int32(configuration.port), configuration.keepAliveSeconds, nil, properties)
    }

    private func setWill(session: UInt64) {
        guard let will = configuration.will?(session) else {
            mosquitto_will_clear(handle)
            return
        }
        var properties = makeProperties(expiry: will.messageExpirySeconds, contentType: will.contentType)
        defer { mosquitto_property_free_all(&properties) }
        let rc = will.payload.withUnsafeBytes { bytes in
            mosquitto_will_set_v5(
                handle, will.topic, Int32(bytes.count), bytes.baseAddress, will.qos.rawValue, will.retain, properties)
        }
        if rc != MOSQ_ERR_SUCCESS.rawValue {
            logger.error("cannot set the will", metadata: ["mqtt.error": "\(String(cString: mosquitto_strerror(rc)))"])
        }
    }

    /// Turns the end of a connection (or a failed attempt) into an error for humans.
    private func describeEnd(rc: Int32, errno connectErrno: Int32) -> MQTTError {
        let endpoint = configuration.endpoint
        if let refused = state.withLock({ $0.connectError }) { return refused }
        switch mosq_err_t(rawValue: rc) {
        case MOSQ_ERR_ERRNO:
            return .unreachable(endpoint: endpoint, reason: String(cString: strerror(connectErrno)))
        case MOSQ_ERR_EAI, MOSQ_ERR_LOOKUP:
            return .unreachable(endpoint: endpoint, reason: "host name not found")
        case MOSQ_ERR_TLS, MOSQ_ERR_TLS_HANDSHAKE:
            let detail = state.withLock { $0.lastTLSError } ?? "handshake failed"
            let hint = detail.contains("certificate verify failed")
                ? "the broker's certificate did not verify against the CA file \(configuration.tls?.caFile ?? "")"
                : detail
            return .tls(endpoint: endpoint, reason: hint)
        case MOSQ_ERR_CONN_REFUSED, MOSQ_ERR_AUTH, MOSQ_ERR_NOT_SUPPORTED:
            return .refused(endpoint: endpoint, reasonCode: rc, reason: String(cString: mosquitto_strerror(rc)))
        default:
            return .connectionLost(endpoint: endpoint, reason: String(cString: mosquitto_strerror(rc)))
        }
    }

    func close() async {
        guard beginClose() else { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let running = state.withLock { s in
                if s.loopRunning { s.exitWaiters.append(continuation) }
                return s.loopRunning
            }
            if !running { continuation.resume() }
        }
        finishClose()
    }

    /// `deinit` of the owner: the same as `close()`, blocking.
    func closeSynchronouslyIfNeeded() {
        guard beginClose() else { return }
        logger.warning("MQTTClient was released without close(); closing it now")
        if state.withLock({ $0.loopRunning }) { loopExited.wait() }
        finishClose()
    }

    /// Marks the client closed and asks the network thread to stop; false if already closed.
    private func beginClose() -> Bool {
        let first: Bool = state.withLock { s in
            if case .closed = s.phase { return false }
            s.stopRequested = true
            setPhase(.closed, in: &s)
            return true
        }
        guard first else { return false }
        mosquitto_disconnect_v5(handle, 0, nil)
        wake.signal()
        return true
    }

    private func finishClose() {
        let (pending, connectWaiter, observers): ([PendingAck], CheckedContinuation<Void, any Error>?, [AsyncStream<MQTTConnectionState>.Continuation]) =
            state.withLock { s in
                defer {
                    s.acks = AckTable()
                    s.connectWaiter = nil
                    s.observers = [:]
                    s.destroyed = true
                }
                return (s.acks.drainWaiters(), s.connectWaiter, Array(s.observers.values))
            }
        mosquitto_destroy(handle)
        for waiter in pending { waiter.fail(.closed) }
        connectWaiter?.resume(throwing: MQTTError.closed)
        for observer in observers { observer.finish() }
        messageContinuation.finish()
    }

    func dropSocket() {
        let fd = mosquitto_socket(handle)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
    }

    // MARK: Callbacks (network thread)

    private func didConnect(rc: Int32, sessionPresent: Bool) {
        guard rc == 0 else {
            let reason = configuration.protocolVersion == .v5
                ? String(cString: mosquitto_reason_string(rc)) : String(cString: mosquitto_connack_string(rc))
            state.withLock { $0.connectError = .refused(endpoint: configuration.endpoint, reasonCode: rc, reason: reason) }
            logger.warning("MQTT broker refused the connection", metadata: ["mqtt.reason": "\(reason)"])
            return
        }
        let (waiter, restore): (CheckedContinuation<Void, any Error>?, [MQTTSubscription]) = state.withLock { s in
            s.failedAttempts = 0
            s.connectError = nil
            setPhase(.connected(session: s.session, sessionPresent: sessionPresent), in: &s)
            let waiter = s.connectWaiter
            s.connectWaiter = nil
            return (waiter, s.subscriptionOrder.map { MQTTSubscription($0, qos: s.subscriptions[$0]!) })
        }
        logger.debug("MQTT connected", metadata: ["mqtt.session_present": "\(sessionPresent)"])
        if !restore.isEmpty { resubscribe(restore) }
        waiter?.resume()
    }

    /// Sends the client's subscriptions again after a reconnect. With MQTT 5 retained
    /// messages come again only where the broker had lost the subscription.
    private func resubscribe(_ subscriptions: [MQTTSubscription]) {
        let options = configuration.protocolVersion == .v5 ? Int32(MQTT_SUB_OPT_SEND_RETAIN_NEW.rawValue) : 0
        for subscription in subscriptions {
            var mid: Int32 = 0
            let rc = mosquitto_subscribe_v5(handle, &mid, subscription.filter, subscription.qos.rawValue, options, nil)
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                let early = state.withLock { $0.acks.register(mid: mid, .restore(subscription.filter)) }
                if let early { complete(.restore(subscription.filter), with: early) }
            } else {
                logger.warning("cannot restore a subscription", metadata: ["mqtt.filter": "\(subscription.filter)"])
            }
        }
    }

    private func didDisconnect(rc: Int32) {
        logger.debug("MQTT disconnected", metadata: ["mqtt.rc": "\(rc)"])
    }

    private func didAcknowledgePublish(mid: Int32, reasonCode: Int32) {
        acknowledge(mid: mid, .publish(reasonCode: reasonCode))
    }

    private func didAcknowledgeSubscribe(mid: Int32, codes: [Int32]) {
        acknowledge(mid: mid, .subscribe(codes: codes))
    }

    private func didAcknowledgeUnsubscribe(mid: Int32) {
        acknowledge(mid: mid, .unsubscribe)
    }

    private func acknowledge(mid: Int32, _ ack: Ack) {
        let waiter = state.withLock { $0.acks.acknowledge(mid: mid, ack) }
        if let waiter { complete(waiter, with: ack) }
    }

    private func didReceive(_ message: mosquitto_message, properties: OpaquePointer?) {
        let topic = String(cString: message.topic)
        let payload = message.payloadlen > 0
            ? Data(bytes: message.payload, count: Int(message.payloadlen)) : Data()
        var expiry: UInt32 = 0
        let hasExpiry = mosquitto_property_read_int32(
            properties, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), &expiry, false) != nil
        var contentTypePointer: UnsafeMutablePointer<CChar>? = nil
        var contentType: String? = nil
        if mosquitto_property_read_string(
            properties, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), &contentTypePointer, false) != nil,
            let contentTypePointer
        {
            contentType = String(cString: contentTypePointer)
            free(contentTypePointer)  // read_string allocates a copy
        }
        let received = MQTTMessage(
            topic: topic, payload: payload, qos: MQTTQoS(rawValue: message.qos) ?? .atMostOnce,
            retain: message.retain, messageExpirySeconds: hasExpiry ? expiry : nil, contentType: contentType)
        if let hook = configuration.receiveHook, hook(received) { return }
        messageContinuation.yield(received)
    }

    /// libmosquitto logs every packet at debug level: build a Swift string only for errors
    /// (kept to explain a TLS failure) and when trace logging is on.
    private func didLog(level: Int32, text: UnsafePointer<CChar>) {
        if level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING) != 0 {
            let line = String(cString: text)
            if line.contains("OpenSSL Error") || line.contains("certificate verify failed") {
                state.withLock { s in
                    if s.lastTLSError == nil || line.contains("certificate verify failed") { s.lastTLSError = line }
                }
            }
        }
        if logger.logLevel <= .trace {
            logger.trace("libmosquitto: \(String(cString: text))", metadata: ["mqtt.log_level": "\(level)"])
        }
    }

    // MARK: Operations (any thread)

    private func makeProperties(expiry: UInt32?, contentType: String?) -> OpaquePointer? {
        guard configuration.protocolVersion == .v5 else { return nil }
        var properties: OpaquePointer? = nil
        if let expiry {
            mosquitto_property_add_int32(&properties, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), expiry)
        }
        if let contentType {
            mosquitto_property_add_string(&properties, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), contentType)
        }
        return properties
    }

    func publish(_ message: MQTTOutgoingMessage) async throws -> MQTTPublishAck {
        if state.withLock({ $0.destroyed || $0.stopRequested && !$0.loopRunning }) { throw MQTTError.closed }
        var properties = makeProperties(expiry: message.messageExpirySeconds, contentType: message.contentType)
        defer { mosquitto_property_free_all(&properties) }
        var mid: Int32 = 0
        let rc = message.payload.withUnsafeBytes { bytes in
            mosquitto_publish_v5(
                handle, &mid, message.topic, Int32(bytes.count), bytes.baseAddress, message.qos.rawValue,
                message.retain, properties)
        }
        try check(rc, "publish to '\(message.topic)'")
        guard message.qos != .atMostOnce else {
            // libmosquitto reports QoS 0 sends too; reconcile the ID so it is not mistaken later.
            _ = state.withLock { $0.acks.register(mid: mid, .ignored) }
            return MQTTPublishAck(reasonCode: 0)
        }
        let ack = try await awaitAck(mid: mid) { .publish(topic: message.topic, $0) }
        guard case .publish(let reasonCode) = ack else { throw MQTTError.closed }
        if reasonCode >= 0x80 {
            throw MQTTError.publishRefused(
                topic: message.topic, reasonCode: reasonCode, reason: String(cString: mosquitto_reason_string(reasonCode)))
        }
        return MQTTPublishAck(reasonCode: reasonCode)
    }

    func subscribe(_ subscriptions: [MQTTSubscription]) async throws {
        guard !subscriptions.isEmpty else { return }
        if state.withLock({ $0.destroyed || $0.stopRequested && !$0.loopRunning }) { throw MQTTError.closed }
        for subscription in subscriptions {
            var mid: Int32 = 0
            try check(
                mosquitto_subscribe_v5(handle, &mid, subscription.filter, subscription.qos.rawValue, 0, nil),
                "subscribe to '\(subscription.filter)'")
            let ack = try await awaitAck(mid: mid) { .subscribe(filter: subscription.filter, $0) }
            guard case .subscribe(let codes) = ack, let code = codes.first else { throw MQTTError.closed }
            if code >= 0x80 {
                throw MQTTError.subscriptionRefused(
                    filter: subscription.filter, reasonCode: code, reason: String(cString: mosquitto_reason_string(code)))
            }
            state.withLock { s in
                if s.subscriptions.updateValue(subscription.qos, forKey: subscription.filter) == nil {
                    s.subscriptionOrder.append(subscription.filter)
                }
            }
        }
    }

    func unsubscribe(_ filters: [String]) async throws {
        for filter in filters {
            state.withLock { s in
                s.subscriptions[filter] = nil
                s.subscriptionOrder.removeAll { $0 == filter }
            }
            var mid: Int32 = 0
            try check(mosquitto_unsubscribe_v5(handle, &mid, filter, nil), "unsubscribe from '\(filter)'")
            _ = try await awaitAck(mid: mid) { .unsubscribe($0) }
        }
    }

    /// Waits for the acknowledgement of `mid`, which may already have arrived.
    private func awaitAck(
        mid: Int32, _ makeWaiter: @escaping @Sendable (CheckedContinuation<Ack, any Error>) -> PendingAck
    ) async throws -> Ack {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Ack, any Error>) in
                let waiter = makeWaiter(continuation)
                let early: Ack? = state.withLock { s in
                    if s.destroyed { return nil }
                    return s.acks.register(mid: mid, waiter)
                }
                if state.withLock({ $0.destroyed }) {
                    continuation.resume(throwing: MQTTError.closed)
                } else if let early {
                    continuation.resume(returning: early)
                }
            }
        } onCancel: {
            let waiter = state.withLock { $0.acks.cancel(mid: mid) }
            waiter?.fail(nil)
        }
    }

    private func complete(_ waiter: PendingAck, with ack: Ack) {
        switch waiter {
        case .publish(_, let c), .subscribe(_, let c), .unsubscribe(let c):
            c.resume(returning: ack)
        case .restore(let filter):
            if case .subscribe(let codes) = ack, let code = codes.first, code >= 0x80 {
                logger.error(
                    "the broker refused a restored subscription",
                    metadata: ["mqtt.filter": "\(filter)", "mqtt.reason_code": "\(code)"])
                state.withLock { s in
                    s.subscriptions[filter] = nil
                    s.subscriptionOrder.removeAll { $0 == filter }
                }
            }
        case .ignored:
            break
        }
    }
}
