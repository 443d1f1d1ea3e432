import Foundation
import MQTT
import MessageSchema

extension EdgeAgent {
    /// On every connection: subscribe (once; the client restores it later), say `online` for
    /// this session, report the applied configuration once per boot, and wake the outbox.
    func watchConnection(_ client: MQTTClient) async {
        for await connection in client.connectionStates() {
            guard case .connected(let session, _) = connection else {
                if case .disconnected(let reason) = connection {
                    link.withLock { $0.connected = false }
                    logger.warning("broker connection lost: \(reason)")
                }
                continue
            }
            link.withLock {
                $0.connected = true
                $0.session = Int(session)
            }
            logger.info("connected to the broker", metadata: ["mqtt.session": "\(session)"])
            if !link.withLock({ $0.subscribed }) {
                do {
                    // Over MQTT 3.1.1 (a NATS cluster) the retained-only topics are QoS 0: each
                    // re-subscription after a reconnect sends the retained message again (the
                    // handlers are idempotent), and a clustered broker sets up no replicated
                    // consumer for them. Payments are always QoS 1.
                    let retainedQoS: MQTTQoS = client.protocolVersion == .v311 ? .atMostOnce : .atLeastOnce
                    try await client.subscribe([
                        MQTTSubscription(topics.topic(.paymentCompleted, for: machine), qos: .atLeastOnce),
                        MQTTSubscription(topics.topic(.configDesired, for: machine), qos: retainedQoS),
                        MQTTSubscription(topics.topic(.firmwareDesired, for: machine), qos: retainedQoS),
                        MQTTSubscription(topics.topic(.status, for: machine), qos: retainedQoS),
                    ])
                    link.withLock { $0.subscribed = true }
                } catch {
                    logger.error("cannot subscribe: \(error); retrying on the next connection")
                    continue
                }
            }
            // Results first: a payment server may void a payment once it sees `online` for a
            // session that began after its expiry with still no result (PROTOCOL.md).
            // If the outbox cannot be flushed now, `online` waits: the publisher says it once it
            // has flushed on this session.
            guard await publishPendingResults(client) else {
                logger.warning("results are waiting to be published; online follows once they are")
                continue
            }
            await announceOnline(client)
            if !link.withLock({ $0.reportedConfigThisBoot }), let version = pipeline.withLock({ $0.config?.version }) {
                await reportConfig(version: version, status: .applied, reason: nil, client: client)
            }
            outboxWake.yield()
        }
    }

    /// What `receive` left on the client's stream: our own status, watched for stale wills;
    /// anything else is not for us.
    func route(_ messages: AsyncStream<MQTTMessage>, client: MQTTClient) async {
        for await message in messages {
            guard let (target, kind) = topics.parse(message.topic), target == machine, kind == .status else {
                logger.debug("ignored a message not addressed to this machine", metadata: ["mqtt.topic": "\(message.topic)"])
                continue
            }
            await checkStatus(message.payload, client: client)
        }
    }

    /// A problem appeared or cleared: the retained status says so at once.
    func publishStatusChanges(_ client: MQTTClient) async {
        for await _ in statusChanges {
            guard client.connectionState.isConnected, link.withLock({ $0.connected && !$0.stopping }) else { continue }
            await publishOnline(client)
        }
    }

    /// An `offline` on our status topic while we are connected is a stale will (an older
    /// session's, delivered late) or a mistake: say `online` again.
    private func checkStatus(_ payload: Data, client: MQTTClient) async {
        guard let status = try? WireCoding.decode(StatusMessage.self, from: payload), status.state == .offline else { return }
        let (connected, stopping, session) = link.withLock { ($0.connected, $0.stopping, $0.session) }
        guard connected, !stopping else { return }
        logger.info(
            "stale offline status seen; publishing online again",
            metadata: ["status.boot_id": "\(status.bootId)", "status.session": "\(status.session)", "mqtt.session": "\(session)"])
        await publishOnline(client)
    }

    func statusMessage(_ machineState: MachineState) -> StatusMessage {
        let (session, began) = link.withLock { ($0.session, $0.sessionStartedAt) }
        let version = pipeline.withLock { $0.config?.version ?? 0 }
        let problems = self.problems.withLock { $0.sorted() }
        var status = StatusMessage(
            machineId: machine, state: machineState, bootId: bootId, session: session, firmware: options.firmwareVersion,
            configVersion: version, at: now())
        status.problems = problems
        status.sessionStartedAt = began
        return status
    }

    func publishOnline(_ client: MQTTClient) async {
        do {
            try await client.publish(
                topic: topics.topic(.status, for: machine), payload: WireCoding.encode(statusMessage(.online)),
                qos: .atLeastOnce, retain: true)
        } catch {
            logger.warning("cannot publish online status: \(error)")
        }
    }

    /// Graceful stop: `offline` ourselves (the will is for crashes), bounded in time.
    func publishOffline(_ client: MQTTClient) async {
        link.withLock { $0.stopping = true }
        guard client.connectionState.isConnected else { return }
        let offline = statusMessage(.offline)
        let topic = topics.topic(.status, for: machine)
        _ = await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                (try? await client.publish(topic: topic, payload: WireCoding.encode(offline), qos: .atLeastOnce, retain: true)) != nil
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(3))
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first
        }
    }

    /// Publishes the outbox whenever woken.
    func publishOutbox(_ client: MQTTClient) async {
        for await _ in outboxWakes {
            let flushed = await publishPendingResults(client)
            let (connected, session, announced) = link.withLock { ($0.connected, $0.session, $0.onlineSession) }
            if flushed, connected, announced != session { await announceOnline(client) }
        }
    }

    /// `online` for this session, once its results are out.
    func announceOnline(_ client: MQTTClient) async {
        let now = now()
        let session = link.withLock { s in
            if s.onlineSession != s.session { s.sessionStartedAt = now }
            return s.session
        }
        await publishOnline(client)
        link.withLock { $0.onlineSession = session }
        onlineSignal.yield()
    }

    /// Publishes the outbox in order, removing each result only after the broker's PUBACK,
    /// then what the journal could not take. True when nothing readable is left. Called on
    /// every connection before `online` (PROTOCOL.md), and by the publisher loop; a result the
    /// two send at once goes out twice with the same `seq` (consumers de-duplicate).
    func publishPendingResults(_ client: MQTTClient) async -> Bool {
        while !Task.isCancelled, client.connectionState.isConnected {
            let entries: [OutboxEntry]
            do {
                entries = try store.outbox(limit: 64)
            } catch {
                logger.error("cannot read the outbox: \(error)")
                return false
            }
            if entries.isEmpty, await publishUnjournaled(client) { continue }
            if entries.isEmpty {
                // Rows the store cannot decode are skipped; they stay (and count in
                // heartbeats' outboxDepth) for someone to look at.
                if let depth = try? store.outboxDepth(), depth > 0 {
                    logger.error("\(depth) outbox row(s) cannot be read as results and are not published", metadata: ["state.path": "\(store.path)"])
                }
                return pipeline.withLock { !$0.unjournaled.contains { $0.publishFromMemory && !$0.published } }
            }
            for entry in entries {
                let result = stamps.stamp(entry.result, outboxId: entry.id)
                do {
                    try await client.publish(
                        topic: topics.topic(.paymentResult, for: machine), payload: WireCoding.encode(result),
                        qos: .atLeastOnce, retain: false)
                    store.acknowledge(entry.id)
                    stamps.acknowledged(outboxId: entry.id)
                } catch {
                    logger.warning("result not published yet: \(error)", metadata: ["payment.id": "\(result.paymentId?.rawValue ?? "-")"])
                    return false
                }
            }
        }
        return false
    }

    /// Publishes, from memory, the results the journal could not take that must not wait
    /// (pulses fired, or answers that decide nothing); true if any were sent.
    private func publishUnjournaled(_ client: MQTTClient) async -> Bool {
        let waiting = pipeline.withLock { s in s.unjournaled.indices.filter { s.unjournaled[$0].publishFromMemory && !s.unjournaled[$0].published } }
        var sent = false
        for index in waiting {
            guard let unstamped = pipeline.withLock({ $0.unjournaled.indices.contains(index) ? $0.unjournaled[index].result : nil }) else { break }
            let result = stamps.stamp(unstamped)
            do {
                try await client.publish(
                    topic: topics.topic(.paymentResult, for: machine), payload: WireCoding.encode(result), qos: .atLeastOnce)
                pipeline.withLock { s in
                    if let i = s.unjournaled.firstIndex(where: { $0.result.paymentId == result.paymentId && $0.result.decidedAt == result.decidedAt }) {
                        s.unjournaled[i].published = true
                    }
                }
                sent = true
            } catch {
                logger.warning("result not published yet: \(error)", metadata: ["payment.id": "\(result.paymentId?.rawValue ?? "-")"])
                break
            }
        }
        return sent
    }

    /// Every `heartbeatS` seconds while connected, QoS 0.
    func sendHeartbeats(_ client: MQTTClient) async {
        while !Task.isCancelled {
            let interval = pipeline.withLock { $0.config?.heartbeatS } ?? options.defaultHeartbeatS
            do {
                try await Task.sleep(for: .seconds(interval))
            } catch {
                return
            }
            if pipeline.withLock({ !$0.unjournaled.isEmpty }) || store.hasAcknowledged { submit(.retryJournal) }
            guard client.connectionState.isConnected else { continue }
            let heartbeat = await makeHeartbeat()
            do {
                try await client.publish(
                    topic: topics.topic(.heartbeat, for: machine), payload: WireCoding.encode(heartbeat), qos: .atMostOnce)
            } catch {
                logger.debug("heartbeat not sent: \(error)")
            }
        }
    }

    func makeHeartbeat() async -> Heartbeat {
        // Only the pulse thread touches the lines (RelayLines' contract): the inhibit input is
        // read there, in turn with trains and configuration changes, never beside them.
        let inhibited = await withTaskExecutorPreference(engine.executor) {
            (try? self.pipeline.withLock { $0.lines }?.inhibitActive()) ?? false
        }
        let seq = link.withLock { s in
            s.heartbeatSeq += 1
            return s.heartbeatSeq
        }
        let (version, relay) = pipeline.withLock { ($0.config?.version ?? 0, $0.relay) }
        let problems = self.problems.withLock { $0.sorted() }
        var heartbeat = Heartbeat(
            machineId: machine, bootId: bootId, seq: seq, at: now(),
            uptimeS: Int((ContinuousClock.now - startedAt).components.seconds), firmware: options.firmwareVersion,
            configVersion: version, inhibited: inhibited, relay: relay, outboxDepth: (try? store.outboxDepth()) ?? 0,
            counters: (try? store.counters()) ?? PaymentCounters())
        heartbeat.problems = problems
        heartbeat.metrics = measurements.take()
        return heartbeat
    }
}
