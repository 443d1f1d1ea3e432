internal import CMosquitto
import Foundation
import Logging
import Locking

// What callers do from any thread: publish, subscribe, unsubscribe, and waiting for the
// broker's acknowledgement.
extension MosquittoConnection {
    func makeProperties(expiry: UInt32?, contentType: String?) -> OpaquePointer? {
        guard version == .v5 else { return nil }
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
        if state.withLock({ $0.destroyed || $0.stopRequested && !$0.loopRunning }) { throw MQTTError.closed }
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
    func awaitAck(
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

    func complete(_ waiter: PendingAck, with ack: Ack) {
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
