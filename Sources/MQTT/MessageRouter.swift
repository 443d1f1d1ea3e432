internal import CMosquitto
import Locking

/// Hands each incoming message, on the network thread, to the streams whose topic filter
/// matches it (`MQTTClient.subscription(to:)`): each subscription reads its own messages, in
/// order, and a slow consumer of one does not hold up another. What no stream takes goes to
/// the client's catch-all `messages`.
final class MessageRouter: Sendable {
    private struct Route {
        var filter: String
        var continuation: AsyncStream<MQTTMessage>.Continuation
    }
    private let routes = Locked<(byId: [Int: Route], next: Int, closed: Bool)>(([:], 0, false))

    /// A new stream for `filter`, or nil once the client has closed. `onEnd` runs when its
    /// consumer goes away before the client closes (to unsubscribe).
    func add(filter: String, onEnd: @escaping @Sendable (_ lastForFilter: Bool) -> Void) -> (id: Int, stream: AsyncStream<MQTTMessage>)? {
        let (stream, continuation) = AsyncStream.makeStream(of: MQTTMessage.self, bufferingPolicy: .unbounded)
        let id: Int? = routes.withLock { r in
            guard !r.closed else { return nil }
            defer { r.next += 1 }
            r.byId[r.next] = Route(filter: filter, continuation: continuation)
            return r.next
        }
        guard let id else { return nil }
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            let ended: Bool? = self.routes.withLock { r in
                guard !r.closed, let route = r.byId.removeValue(forKey: id) else { return nil }
                return !r.byId.values.contains { $0.filter == route.filter }
            }
            if let ended { onEnd(ended) }
        }
        return (id, stream)
    }

    /// Drops a stream whose subscription the broker refused.
    func remove(_ id: Int) {
        let route = routes.withLock { $0.byId.removeValue(forKey: id) }
        route?.continuation.finish()
    }

    /// Yields `message` to every stream whose filter matches its topic; false if none did.
    func deliver(_ message: MQTTMessage) -> Bool {
        routes.withLock { r in
            var taken = false
            for route in r.byId.values where Self.matches(filter: route.filter, topic: message.topic) {
                route.continuation.yield(message)
                taken = true
            }
            return taken
        }
    }

    /// The client closed: every stream ends.
    func finishAll() {
        let all = routes.withLock { r -> [Route] in
            r.closed = true
            defer { r.byId = [:] }
            return Array(r.byId.values)
        }
        for route in all { route.continuation.finish() }
    }

    /// MQTT topic-filter matching (`+`, `#`), as the broker does it (libmosquitto's own).
    static func matches(filter: String, topic: String) -> Bool {
        var result = false
        return mosquitto_topic_matches_sub(filter, topic, &result) == MOSQ_ERR_SUCCESS.rawValue && result
    }
}
