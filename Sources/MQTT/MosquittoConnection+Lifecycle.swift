internal import CMosquitto
import Foundation
import Logging
import Locking

// The network thread's life: connect, loop, back off, reconnect; observers of the
// connection state; close.
extension MosquittoConnection {
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

    func setPhase(_ phase: MQTTConnectionState, in s: inout State) {
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
    func failFirstConnect(_ error: MQTTError) {
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
    func runLoop() {
        while !state.withLock({ $0.stopRequested }) {
            let session: UInt64 = state.withLock { s in
                s.session += 1
                s.lastTLSError = nil
                setPhase(.connecting(session: s.session), in: &s)
                return s.session
            }
            setWill(session: session)
            state.withLock { $0.gotConnack = false }
            var rc = connectOnce()
            let connectErrno = errno
            let tcpConnected = rc == MOSQ_ERR_SUCCESS.rawValue
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
            if switchProtocolOrEndpoint(tcpConnected: tcpConnected) { continue }
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

    func connectOnce() -> Int32 {
        var properties: OpaquePointer? = nil
        defer { mosquitto_property_free_all(&properties) }
        let (speaking, endpoint) = state.withLock { s in
            (s.version, configuration.endpoints[s.endpointIndex % configuration.endpoints.count])
        }
        if speaking == .v5 {
            mosquitto_property_add_int32(
                &properties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue), configuration.sessionExpirySeconds)
        }
        return mosquitto_connect_bind_v5(handle, endpoint.host, Int32(endpoint.port), configuration.keepAliveSeconds, nil, properties)
    }

    /// After an attempt or a connection ended: falls back to MQTT 3.1.1 if the broker refused
    /// 5, and moves to the next endpoint of a cluster if there is one. True when the next
    /// attempt should start at once (a fallback, or an untried endpoint while `connect()`
    /// waits for its first connection).
    func switchProtocolOrEndpoint(tcpConnected: Bool) -> Bool {
        var downgrade = false
        let again: Bool = state.withLock { s in
            if s.stopRequested { return false }
            if s.version == .v5, configuration.protocolFallback {
                if s.fallBack {
                    downgrade = true
                } else if tcpConnected, !s.gotConnack {
                    s.closedBeforeConnack += 1
                    downgrade = s.closedBeforeConnack >= 2
                }
            }
            if downgrade {
                s.version = .v311
                s.fallBack = false
                s.connectError = nil
                return true
            }
            if s.gotConnack { s.closedBeforeConnack = 0 }
            // Refused credentials are the cluster's answer, not one node's.
            guard configuration.endpoints.count > 1, s.connectError == nil else { return false }
            s.endpointIndex = (s.endpointIndex + 1) % configuration.endpoints.count
            if s.connectWaiter != nil {
                s.firstRoundTried += 1
                return s.firstRoundTried < configuration.endpoints.count
            }
            return false
        }
        if downgrade {
            mosquitto_int_option(handle, MOSQ_OPT_PROTOCOL_VERSION, Int32(MQTT_PROTOCOL_V311))
        }
        return again
    }

    func setWill(session: UInt64) {
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
    func describeEnd(rc: Int32, errno connectErrno: Int32) -> MQTTError {
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
    func beginClose() -> Bool {
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

    func finishClose() {
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
        router.finishAll()
        messageContinuation.finish()
    }

    func dropSocket() {
        let fd = mosquitto_socket(handle)
        if fd >= 0 { shutdown(fd, Int32(SHUT_RDWR)) }
    }
}
