import Logging
import MQTT
import ServiceLifecycle

// The agent's running parts, as Services in one ServiceGroup (`EdgeAgent.run`). The group
// starts them in the order of `EdgeAgent.services` and shuts them down gracefully in reverse,
// each one only after the one before it has returned, so the stop order is the list's order
// read backwards, by construction:
//
//   firmware    cancels a download in progress
//   pipeline    takes no new work; a running train may finish (then is stopped between pulses)
//   outbox      publishes what the last train decided (bounded), deletes acknowledged rows
//   presence    stops heartbeats, publishes `offline` itself (the will is for crashes)
//   connection  closes the MQTT client
//
// Each runs until its own graceful shutdown, then finishes its part and returns. The agent
// itself is a Service too: SIGTERM reaches the inner group through the outer one.

/// The broker connection: subscriptions, `online` per session (after the outbox), our own
/// status topic watched for stale wills. Closes the client last of all.
struct ConnectionService: Service {
    let agent: EdgeAgent
    let client: MQTTClient

    func run() async throws {
        try client.start()
        await withDiscardingTaskGroup { group in
            group.addTask { await agent.watchConnection(client) }
            group.addTask { await agent.route(client.messages, client: client) }
            try? await gracefulShutdown()
            // Closing ends both loops (their streams finish).
            await client.close()
        }
    }
}

/// The unit's presence: status on every change of problems, heartbeats. Says `offline` at a
/// graceful stop.
struct PresenceService: Service {
    let agent: EdgeAgent
    let client: MQTTClient

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await agent.publishStatusChanges(client) }
            group.addTask { await agent.sendHeartbeats(client) }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        await agent.publishOffline(client)
    }
}

/// The durable outbox: results published in order, each removed after its PUBACK. At a
/// graceful stop, after the pipeline: what the last train decided goes out (within 3 s;
/// the rest at the next start), and acknowledged rows are deleted.
struct OutboxService: Service {
    let agent: EdgeAgent
    let client: MQTTClient

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await agent.publishOutbox(client) }
            try? await gracefulShutdown()
            await agent.drainOutbox(within: .seconds(3), client: client)
            group.cancelAll()
        }
        do { try agent.store.flushAcknowledged() } catch { agent.logger.warning("cannot delete acknowledged results: \(error)") }
    }
}

/// The one pipeline (payments, configurations, firmware installs), on the pulse thread. At a
/// graceful stop it takes no new work and lets a running train finish, for up to
/// `trainStopGrace`, then stops it between pulses.
struct PipelineService: Service {
    let agent: EdgeAgent
    let client: MQTTClient

    func run() async throws {
        let (agent, client) = (self.agent, self.client)
        let inputs = agent.inputs
        // On the pulse thread: a completion wakes it directly, and decision, start record and
        // first pulse follow on one thread (PulseEngine.executor).
        let pipeline = Task(executorPreference: agent.engine.executor) { await agent.runPipeline(inputs, client: client) }
        try? await gracefulShutdown()
        agent.logger.info("stopping: no new payments; a running train may finish")
        agent.input.finish()
        let grace = agent.options.trainStopGrace
        let stopper = Task {
            try await Task.sleep(for: grace)
            agent.logger.warning("a train is still running after the stop grace; stopping it between pulses")
            agent.engine.cancel()
        }
        await pipeline.value
        stopper.cancel()
    }
}

/// Firmware: after a restart into a new version, confirms it once online or rolls it back.
/// Downloads run off the pipeline; a graceful stop cancels one in progress.
struct FirmwareService: Service {
    let agent: EdgeAgent
    let client: MQTTClient

    func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await agent.watchFirmwareHealth(client) }
            try? await gracefulShutdown()
            group.cancelAll()
        }
        agent.cancelFirmwareDownload()
    }
}
