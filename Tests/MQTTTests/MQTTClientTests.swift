import Foundation
import LocalServices
import Locking
@_spi(Testing) import MQTT
import Testing
import TestSupport

/// The MQTT client against a real mosquitto per test, on its own loopback port.
@Suite(.timeLimit(.minutes(4)))
struct MQTTClientTests {
    static func client(
        _ broker: LocalMosquitto, _ id: String = "c-\(UUID().uuidString.prefix(8).lowercased())",
        configure: (inout MQTTConfiguration) -> Void = { _ in }
    ) throws -> MQTTClient {
        var configuration = MQTTConfiguration(host: broker.host, port: broker.port, clientID: id)
        configuration.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(200))
        configure(&configuration)
        return try MQTTClient(configuration)
    }

    @Test(arguments: [MQTTProtocolVersion.v5, .v311])
    func roundTripAtQoS0AndQoS1(version: MQTTProtocolVersion) async throws {
        try await LocalMosquitto.with { broker in
            let subscriber = try Self.client(broker) { $0.protocolVersion = version }
            let publisher = try Self.client(broker) { $0.protocolVersion = version }
            try await subscriber.connect()
            try await publisher.connect()
            let inbox = Inbox(subscriber)
            try await subscriber.subscribe("t/#", qos: .atLeastOnce)

            try await publisher.publish(topic: "t/zero", payload: Data("0".utf8), qos: .atMostOnce)
            let ack = try await publisher.publish(topic: "t/one", payload: Data("1".utf8), qos: .atLeastOnce)
            #expect(ack.reasonCode == 0)

            let zero = try await inbox.next(on: "t/zero")
            #expect(zero.payload == Data("0".utf8))
            #expect(zero.qos == .atMostOnce)
            let one = try await inbox.next(on: "t/one")
            #expect(one.payload == Data("1".utf8))
            #expect(one.qos == .atLeastOnce)
            #expect(!one.retain)
            await subscriber.close()
            await publisher.close()
        }
    }

    /// Each subscription stream gets the messages its filter matches, and only those; the
    /// catch-all stream gets the rest. A retained message comes with the subscription.
    @Test func subscriptionStreamsGetOnlyTheirOwnMessages() async throws {
        try await LocalMosquitto.with { broker in
            let publisher = try Self.client(broker)
            try await publisher.connect()
            try await publisher.publish(topic: "s/a/kept", payload: Data("r".utf8), retain: true)
            let client = try Self.client(broker)
            try await client.connect()
            let rest = Inbox(client)
            var a = try await client.subscription(to: "s/a/+").makeAsyncIterator()
            var b = try await client.subscription(to: "s/b/#").makeAsyncIterator()
            try await client.subscribe("s/c")
            for topic in ["s/a/1", "s/b/x/y", "s/c", "s/a/2"] {
                try await publisher.publish(topic: topic, payload: Data(topic.utf8))
            }
            let fromA = [await a.next(), await a.next(), await a.next()].map { $0?.topic }
            #expect(fromA == ["s/a/kept", "s/a/1", "s/a/2"])
            #expect(await b.next()?.topic == "s/b/x/y")
            _ = try await rest.next(on: "s/c")
            #expect(await rest.topicsSeen == ["s/c"])
            await client.close()
            // Closing the client ends the streams.
            #expect(await a.next() == nil)
            try await publisher.publish(topic: "s/a/kept", payload: Data(), retain: true)
            await publisher.close()
        }
    }

    /// A subscription stream whose consumer goes away unsubscribes: its topic then reaches no
    /// stream at all (not even the catch-all).
    @Test func droppingASubscriptionStreamUnsubscribes() async throws {
        try await LocalMosquitto.with { broker in
            let client = try Self.client(broker)
            try await client.connect()
            let rest = Inbox(client)
            var marker = try await client.subscription(to: "d/marker").makeAsyncIterator()
            let consumed = Locked(false)
            let consumer = Task {
                for await message in try await client.subscription(to: "d/topic") where message.payload == Data("stop".utf8) { break }
                consumed.withLock { $0 = true }
            }
            // Until the consumer has subscribed and read a message (then it stops reading).
            let subscribedBy = ContinuousClock.now + .seconds(10)
            while !consumed.withLock({ $0 }), ContinuousClock.now < subscribedBy {
                try await client.publish(topic: "d/topic", payload: Data("stop".utf8))
                try await client.publish(topic: "d/marker", payload: Data())
                _ = await marker.next()
            }
            try await consumer.value
            #expect(consumed.withLock { $0 })
            // The UNSUBSCRIBE is sent after the stream ends; until the broker has it, a message on
            // the topic reaches the catch-all. Sent again with a marker until one does not.
            var unsubscribed = false
            let deadline = ContinuousClock.now + .seconds(10)
            while !unsubscribed, ContinuousClock.now < deadline {
                let before = await rest.topicsSeen.count
                try await client.publish(topic: "d/topic", payload: Data("late".utf8))
                try await client.publish(topic: "d/marker", payload: Data())
                _ = await marker.next()
                unsubscribed = await rest.topicsSeen.count == before
            }
            #expect(unsubscribed)
            await client.close()
        }
    }

    @Test func withClientClosesTheClientWhenTheBodyThrows() async throws {
        struct Failed: Error {}
        try await LocalMosquitto.with { broker in
            var configuration = MQTTConfiguration(host: broker.host, port: broker.port, clientID: "scoped")
            configuration.reconnect = MQTTReconnectPolicy(initialDelay: .milliseconds(20), maximumDelay: .milliseconds(200))
            let used = Locked<MQTTClient?>(nil)
            await #expect(throws: Failed.self) {
                try await MQTTClient.withClient(configuration) { client in
                    used.withLock { $0 = client }
                    try await client.publish(topic: "w/1", payload: Data("x".utf8))
                    throw Failed()
                }
            }
            #expect(used.withLock { $0?.connectionState } == .closed)
            // Connected for the body, and what it returns comes back.
            let wasConnected = try await MQTTClient.withClient(configuration) { client in
                try await client.publish(topic: "w/2", payload: Data("y".utf8))
                return client.connectionState.isConnected
            }
            #expect(wasConnected)
        }
    }

    @Test func unsubscribeStopsDeliveryAndIsNotRestored() async throws {
        try await LocalMosquitto.with { broker in
            let client = try Self.client(broker, "unsubscriber")
            try await client.connect()
            let inbox = Inbox(client)
            try await client.subscribe([MQTTSubscription("u/a"), MQTTSubscription("u/marker")])
            try await client.publish(topic: "u/a", payload: Data("1".utf8))
            _ = try await inbox.next(on: "u/a")
            try await client.unsubscribe(["u/a"])
            // After a reconnect the client restores what it is subscribed to, not what it left.
            let states = client.connectionStates()
            client.dropConnectionWithoutDisconnect()
            for await state in states { if case .connected(let session, _) = state, session > 1 { break } }
            try await client.publish(topic: "u/a", payload: Data("2".utf8))
            try await client.publish(topic: "u/marker", payload: Data("m".utf8))
            _ = try await inbox.next(on: "u/marker")
            #expect(await inbox.topicsSeen == ["u/a", "u/marker"])
            await client.close()
        }
    }

    @Test func propertiesTravelOnMQTT5() async throws {
        try await LocalMosquitto.with { broker in
            let subscriber = try Self.client(broker)
            try await subscriber.connect()
            let inbox = Inbox(subscriber)
            try await subscriber.subscribe("p")
            let publisher = try Self.client(broker)
            try await publisher.connect()
            try await publisher.publish(
                topic: "p", payload: Data("{}".utf8), messageExpirySeconds: 600, contentType: "application/json")
            let message = try await inbox.next(on: "p")
            #expect(message.contentType == "application/json")
            #expect((message.messageExpirySeconds ?? 0) > 590)
            await subscriber.close()
            await publisher.close()
        }
    }

    @Test func retainedMessageReachesALateSubscriber() async throws {
        try await LocalMosquitto.with { broker in
            let publisher = try Self.client(broker)
            try await publisher.connect()
            try await publisher.publish(topic: "fleet/m1/status", payload: Data("online".utf8), retain: true)
            await publisher.close()

            let late = try Self.client(broker)
            try await late.connect()
            let inbox = Inbox(late)
            try await late.subscribe("fleet/+/status")
            let message = try await inbox.next(on: "fleet/m1/status")
            #expect(message.retain)
            #expect(message.payload == Data("online".utf8))
            await late.close()
        }
    }

    @Test func willIsPublishedWhenTheConnectionDiesWithoutDisconnect() async throws {
        try await LocalMosquitto.with { broker in
            let watcher = try Self.client(broker)
            try await watcher.connect()
            let inbox = Inbox(watcher)
            try await watcher.subscribe("w/status")

            let dying = try Self.client(broker) {
                $0.will = { session in
                    MQTTOutgoingMessage(topic: "w/status", payload: Data("offline \(session)".utf8), retain: true)
                }
            }
            try await dying.connect()
            dying.dropConnectionWithoutDisconnect()
            let will = try await inbox.next(on: "w/status")
            #expect(will.payload == Data("offline 1".utf8))
            await dying.close()

            // A graceful close sends DISCONNECT: no will.
            let graceful = try Self.client(broker) {
                $0.will = { _ in MQTTOutgoingMessage(topic: "w/graceful", payload: Data("offline".utf8)) }
            }
            try await graceful.connect()
            await graceful.close()
            try await watcher.subscribe("w/graceful")
            try await watcher.publish(topic: "w/marker", payload: Data())
            try await watcher.subscribe("w/marker")
            try await watcher.publish(topic: "w/marker", payload: Data())
            _ = try await inbox.next(on: "w/marker")
            #expect(await !inbox.topicsSeen.contains("w/graceful"))
            await watcher.close()
        }
    }

    @Test func expiredMessageIsNotDeliveredToAReturningSession() async throws {
        try await LocalMosquitto.with { broker in
            let id = "persistent-1"
            let first = try Self.client(broker, id)
            try await first.connect()
            try await first.subscribe("e/#", qos: .atLeastOnce)
            await first.close()

            let publisher = try Self.client(broker)
            try await publisher.connect()
            try await publisher.publish(topic: "e/short", payload: Data("short".utf8), messageExpirySeconds: 1)
            try await publisher.publish(topic: "e/long", payload: Data("long".utf8), messageExpirySeconds: 600)
            await publisher.close()
            // The property under test is time itself: the short message must outlive its 1 s.
            try await Task.sleep(for: .seconds(2))

            let back = try Self.client(broker, id)
            let inbox = Inbox(back)
            try await back.connect()
            // Queued in publish order: had the short one survived it would come first.
            let first_ = try await inbox.next()
            #expect(first_.topic == "e/long")
            #expect(await inbox.topicsSeen == ["e/long"])
            await back.close()
        }
    }

    @Test func reconnectsAfterBrokerRestartAndGetsQueuedMessages() async throws {
        try await LocalMosquitto.with { broker in
            let stayer = try Self.client(broker, "stayer")
            try await stayer.connect()
            let stayerInbox = Inbox(stayer)
            try await stayer.subscribe("r/live")

            let away = try Self.client(broker, "away")
            try await away.connect()
            try await away.subscribe("r/queued")
            await away.close()

            let publisher = try Self.client(broker)
            try await publisher.connect()
            for i in 0..<5 {
                try await publisher.publish(topic: "r/queued", payload: Data("\(i)".utf8))
            }
            await publisher.close()

            let states = stayer.connectionStates()
            try await broker.restart()
            // The stayer reconnects by itself: wait for a second connected session.
            for await state in states {
                if case .connected(let session, _) = state, session > 1 { break }
            }
            let publisher2 = try Self.client(broker)
            try await publisher2.connect()
            try await publisher2.publish(topic: "r/live", payload: Data("after".utf8))
            #expect(try await stayerInbox.next(on: "r/live").payload == Data("after".utf8))

            let back = try Self.client(broker, "away")
            let inbox = Inbox(back)
            try await back.connect()
            var received: [String] = []
            for _ in 0..<5 { received.append(String(decoding: try await inbox.next(on: "r/queued").payload, as: UTF8.self)) }
            #expect(received == ["0", "1", "2", "3", "4"])
            await back.close()
            await stayer.close()
            await publisher2.close()
        }
    }

    @Test func subscriptionsAreRestoredWhenTheBrokerLostTheSession() async throws {
        try await LocalMosquitto.with { broker in
            let client = try Self.client(broker, "forgetful")
            try await client.connect()
            let inbox = Inbox(client)
            try await client.subscribe("s/topic")
            let states = client.connectionStates()
            // SIGKILL before any autosave: the broker comes back without the session.
            await broker.kill()
            try? FileManager.default.removeItem(atPath: broker.directory + "/mosquitto.db")
            try await broker.restart()
            for await state in states {
                if case .connected(let session, let present) = state, session > 1 {
                    #expect(!present)
                    break
                }
            }
            let publisher = try Self.client(broker)
            try await publisher.connect()
            // The restore SUBACK may still be on its way: publish until one arrives.
            try await publisher.publish(topic: "s/topic", payload: Data("x".utf8), retain: true)
            #expect(try await inbox.next(on: "s/topic").payload == Data("x".utf8))
            await publisher.close()
            await client.close()
        }
    }

    @Test func tlsConnectsWithTheRightCAAndNamesTheCertificateWithTheWrongOne() async throws {
        let good = NSTemporaryDirectory() + "pb-tls-\(UUID().uuidString)"
        let other = NSTemporaryDirectory() + "pb-tls-\(UUID().uuidString)"
        for dir in [good, other] {
            let script = LocalMosquitto.brokerConfigDirectory + "/make-dev-ca.sh"
            let status = await (try ChildProcess.spawn("bash", [script, dir])).waitForExit()
            #expect(status == .exited(0))
        }
        let tlsPort = try LoopbackPort.free()
        let extra = """
            listener \(tlsPort) 127.0.0.1
            cafile \(good)/ca.crt
            certfile \(good)/server.crt
            keyfile \(good)/server.key
            """
        try await LocalMosquitto.with(extraConfiguration: extra) { broker in
            let client = try Self.client(broker) {
                $0.port = tlsPort
                $0.tls = MQTTTLS(caFile: "\(good)/ca.crt")
            }
            try await client.connect()
            #expect(client.connectionState.isConnected)
            await client.close()

            let wrong = try Self.client(broker) {
                $0.port = tlsPort
                $0.tls = MQTTTLS(caFile: "\(other)/ca.crt")
            }
            let error = await #expect(throws: MQTTError.self) { try await wrong.connect() }
            guard case .tls(let endpoint, let reason) = error else {
                Issue.record("expected a TLS error, got \(String(describing: error))")
                return
            }
            #expect(endpoint == "127.0.0.1:\(tlsPort)")
            #expect(reason.contains("certificate"))
            await wrong.close()
        }
    }

    @Test func wrongPasswordIsAClearRefusal() async throws {
        let dir = NSTemporaryDirectory() + "pb-pw-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let made = await (try ChildProcess.spawn("mosquitto_passwd", ["-c", "-b", dir + "/passwd", "alice", "s3cret"])).waitForExit()
        #expect(made == .exited(0))
        try await LocalMosquitto.with(extraConfiguration: "password_file \(dir)/passwd") { broker in
            let client = try Self.client(broker) {
                $0.username = "alice"
                $0.password = "wrong"
            }
            let error = await #expect(throws: MQTTError.self) { try await client.connect() }
            guard case .refused(let endpoint, _, let reason) = error else {
                Issue.record("expected a refusal, got \(String(describing: error))")
                return
            }
            #expect(endpoint == "127.0.0.1:\(broker.port)")
            #expect(reason.lowercased().contains("not authorized") || reason.lowercased().contains("bad user"))
            #expect(client.connectionState == .idle)
            await client.close()

            let right = try Self.client(broker) {
                $0.username = "alice"
                $0.password = "s3cret"
            }
            try await right.connect()
            await right.close()
        }
    }

    @Test func absentBrokerIsAClearErrorNamingHostAndPort() async throws {
        // Held closed, so no broker another test starts can take it meanwhile.
        let refusing = try LoopbackPort.refusing()
        let port = refusing.port
        var configuration = MQTTConfiguration(host: "127.0.0.1", port: port, clientID: "nobody-home")
        configuration.connectTimeout = .seconds(5)
        let client = try MQTTClient(configuration)
        let error = await #expect(throws: MQTTError.self) { try await client.connect() }
        #expect(error?.description.contains("127.0.0.1:\(port)") == true)
        #expect(error?.description.contains("refused") == true)
        await client.close()
        withExtendedLifetime(refusing) {}
    }

    @Test func subscriptionAndPublishRefusedByTheACLAreErrors() async throws {
        // Dynamic security denies subscriptions its ACLs do not grant (mosquitto's acl_file
        // never refuses a subscription, it only filters deliveries). A client with no role
        // may subscribe to nothing.
        let dir = NSTemporaryDirectory() + "pb-acl-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let initialised = await (try ChildProcess.spawn(
            "mosquitto_ctrl", ["dynsec", "init", dir + "/dynsec.json", "admin", "adminpw"])).waitForExit()
        #expect(initialised == .exited(0))
        let extra = """
            plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so
            plugin_opt_config_file \(dir)/dynsec.json
            """
        try await LocalMosquitto.with(extraConfiguration: extra) { broker in
            let created = await (try ChildProcess.spawn(
                "mosquitto_ctrl",
                ["-p", "\(broker.port)", "-u", "admin", "-P", "adminpw", "dynsec", "createClient", "bob", "-p", "bobpw"]
            )).waitForExit()
            #expect(created == .exited(0))
            let client = try Self.client(broker) {
                $0.username = "bob"
                $0.password = "bobpw"
            }
            try await client.connect()
            let error = await #expect(throws: MQTTError.self) { try await client.subscribe("forbidden/#") }
            guard case .subscriptionRefused(let filter, let code, _) = error else {
                Issue.record("expected a refused subscription, got \(String(describing: error))")
                return
            }
            #expect(filter == "forbidden/#")
            #expect(code >= 0x80)
            // A refused QoS 1 publish carries the broker's reason code (MQTT 5).
            let refusal = await #expect(throws: MQTTError.self) {
                try await client.publish(topic: "forbidden/x", payload: Data("x".utf8))
            }
            guard case .publishRefused(let topic, let publishCode, _) = refusal else {
                Issue.record("expected a refused publish, got \(String(describing: refusal))")
                return
            }
            #expect(topic == "forbidden/x")
            #expect(publishCode == 0x87)
            await client.close()
        }
    }

    @Test func closeFailsWaitersAndIsIdempotent() async throws {
        try await LocalMosquitto.with { broker in
            let client = try Self.client(broker)
            try await client.connect()
            await client.close()
            await client.close()
            #expect(client.connectionState == .closed)
            await #expect(throws: MQTTError.closed) {
                try await client.publish(topic: "x", payload: Data())
            }
        }
    }

    @Test func startKeepsTryingUntilTheBrokerAppears() async throws {
        let broker = try await LocalMosquitto.start()
        await broker.stop()
        let client = try Self.client(broker)
        try client.start()
        let states = client.connectionStates()
        var sawDisconnected = false
        for await state in states {
            if case .disconnected = state, !sawDisconnected {
                sawDisconnected = true
                try await broker.restart()
            }
            if state.isConnected { break }
        }
        #expect(sawDisconnected)
        #expect(client.connectionState.isConnected)
        await client.close()
        await broker.stop()
    }
}
