import Foundation
import MQTT

/// A test waited for a message that did not come.
public struct InboxTimeout: Error, CustomStringConvertible {
    public var waitedFor: String
    public var received: [String]
    public var description: String {
        "no message \(waitedFor) arrived in time; received: \(received.isEmpty ? "nothing" : received.joined(separator: ", "))"
    }
    public init(waitedFor: String, received: [String]) {
        self.waitedFor = waitedFor
        self.received = received
    }
}

/// Collects a client's incoming messages so a test can wait for the one it expects, with a
/// timeout instead of a sleep.
public actor Inbox {
    private var buffered: [MQTTMessage] = []
    private var seen: [String] = []
    private var waiters: [UUID: (predicate: @Sendable (MQTTMessage) -> Bool, continuation: CheckedContinuation<MQTTMessage, any Error>)] = [:]
    private var consumer: Task<Void, Never>?

    public init(_ client: MQTTClient) {
        let messages = client.messages
        Task { await self.consume(messages) }
    }

    private func consume(_ messages: AsyncStream<MQTTMessage>) async {
        for await message in messages { deliver(message) }
    }

    private func deliver(_ message: MQTTMessage) {
        seen.append(message.topic)
        for (id, waiter) in waiters where waiter.predicate(message) {
            waiters[id] = nil
            waiter.continuation.resume(returning: message)
            return
        }
        buffered.append(message)
    }

    /// The first message (already received or still to come) matching `predicate`; it is
    /// taken out of the inbox.
    public func next(
        _ description: String = "", timeout: Duration = .seconds(10),
        where predicate: @escaping @Sendable (MQTTMessage) -> Bool = { _ in true }
    ) async throws -> MQTTMessage {
        if let index = buffered.firstIndex(where: predicate) { return buffered.remove(at: index) }
        let id = UUID()
        let timer = Task {
            try await Task.sleep(for: timeout)
            self.expire(id, description: description)
        }
        defer { timer.cancel() }
        return try await withCheckedThrowingContinuation { continuation in
            waiters[id] = (predicate, continuation)
        }
    }

    /// The next message on `topic`.
    public func next(on topic: String, timeout: Duration = .seconds(10)) async throws -> MQTTMessage {
        try await next("on \(topic)", timeout: timeout) { $0.topic == topic }
    }

    private func expire(_ id: UUID, description: String) {
        guard let waiter = waiters.removeValue(forKey: id) else { return }
        waiter.continuation.resume(throwing: InboxTimeout(waitedFor: description, received: seen))
    }

    /// Messages received and not taken yet.
    public var pending: [MQTTMessage] { buffered }

    /// Topics of every message received so far.
    public var topicsSeen: [String] { seen }
}
