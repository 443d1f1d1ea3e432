internal import CMosquitto
import Foundation
import Logging
import Locking

// libmosquitto's callbacks, on the network thread: connection, acknowledgements, messages, log.
extension MosquittoConnection {
    func didConnect(rc: Int32, sessionPresent: Bool) {
        let speaking = version
        state.withLock { $0.gotConnack = true }
        guard rc == 0 else {
            // MQTT 5 "unsupported protocol version" (0x84), or a 3.1.1-style "unacceptable
            // protocol version" (1) in answer to a version 5 CONNECT.
            if speaking == .v5, configuration.protocolFallback, rc == 0x84 || rc == 1 {
                state.withLock { $0.fallBack = true }
                logger.notice("the broker does not speak MQTT 5; connecting with MQTT 3.1.1")
                return
            }
            let reason = speaking == .v5
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
    func resubscribe(_ subscriptions: [MQTTSubscription]) {
        let options = version == .v5 ? Int32(MQTT_SUB_OPT_SEND_RETAIN_NEW.rawValue) : 0
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

    func didDisconnect(rc: Int32) {
        logger.debug("MQTT disconnected", metadata: ["mqtt.rc": "\(rc)"])
    }

    func didAcknowledgePublish(mid: Int32, reasonCode: Int32) {
        acknowledge(mid: mid, .publish(reasonCode: reasonCode))
    }

    func didAcknowledgeSubscribe(mid: Int32, codes: [Int32]) {
        acknowledge(mid: mid, .subscribe(codes: codes))
    }

    func didAcknowledgeUnsubscribe(mid: Int32) {
        acknowledge(mid: mid, .unsubscribe)
    }

    func acknowledge(mid: Int32, _ ack: Ack) {
        let waiter = state.withLock { $0.acks.acknowledge(mid: mid, ack) }
        if let waiter { complete(waiter, with: ack) }
    }

    func didReceive(_ message: mosquitto_message, properties: OpaquePointer?) {
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
        if router.deliver(received) { return }
        messageContinuation.yield(received)
    }

    /// libmosquitto logs every packet at debug level: build a Swift string only for errors
    /// (kept to explain a TLS failure) and when trace logging is on.
    func didLog(level: Int32, text: UnsafePointer<CChar>) {
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
}
