import EdgeAgent
import Foundation
import MessageSchema
import NIOCore
import NIOPosix
import RelayOutput

/// One simulated unit: its own MQTT session with its bundle's credentials, behaving as
/// PROTOCOL.md says (a will, `online`, heartbeats, configuration reports, payments decided by
/// the agent's own `DecisionCore`, results). Everything it owns is touched on its event loop
/// only.
final class SimulatedUnit: @unchecked Sendable {
    // @unchecked: every `var` below is read and written on `loop` only (NIO callbacks and tasks
    // scheduled there).
    let machine: MachineID
    let bundle: AgentBundle
    let topics: TopicScheme
    let trust: TrustStore
    let loop: any EventLoop
    let fleet: UnitFleet
    let bootId = UUID().uuidString.lowercased()
    let createdAt: Int

    var channel: (any Channel)?
    var connected = false
    var online = false
    var stopped = false
    var session = 0
    var attempts = 0
    var packetID: UInt16 = 0
    var heartbeatSeq = 0
    var config: MachineConfig?
    var decided: [PaymentID: OriginalDecision] = [:]
    var counters = PaymentCounters()
    var timers: [RepeatedTask] = []
    /// Which of the fleet's ports the next connection uses.
    var endpointIndex = 0
    /// QoS 1 publishes the broker has not acknowledged, by packet ID: sent again after a
    /// reconnection, as the agent's outbox does (results are never dropped).
    var unacknowledged: [UInt16: (topic: String, payload: [UInt8], retain: Bool)] = [:]

    init(bundle: AgentBundle, loop: any EventLoop, fleet: UnitFleet) throws {
        self.bundle = bundle
        self.machine = bundle.machineId
        self.topics = try TopicScheme(root: bundle.topicRoot)
        self.trust = try TrustStore(entries: bundle.trust)
        self.loop = loop
        self.fleet = fleet
        self.createdAt = UnitFleet.nowMs() - 60_000
        if let initial = bundle.initialConfig, let opened = try? SignedEnvelope.open(Data(initial.utf8), as: MachineConfig.self, trust: trust),
            opened.body.machineId == machine
        {
            config = opened.body
        }
    }

    // MARK: Connection

    func connect() {
        loop.assertInEventLoop()
        guard !stopped else { return }
        let options = fleet.options
        ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(UnitHandler(unit: self)) }
            }
            .connect(host: options.host, port: ([options.port] + options.alternatePorts)[endpointIndex % (1 + options.alternatePorts.count)])
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    self.channel = channel
                    self.sendConnect(channel)
                case .failure:
                    self.fleet.count(\.failedConnects)
                    self.endpointIndex += 1
                    self.reconnectLater()
                }
            }
    }

    private func sendConnect(_ channel: any Channel) {
        session += 1
        let offline = StatusMessage(
            machineId: machine, state: .offline, bootId: bootId, session: session, firmware: fleet.options.firmware,
            configVersion: config?.version ?? 0, at: UnitFleet.nowMs())
        let will = MQTTEncoder.Will(
            topic: topics.topic(.status, for: machine), payload: Array(WireCoding.encode(offline)), qos: 1, retain: true)
        var buffer = channel.allocator.buffer(capacity: 256)
        MQTTEncoder.connect(
            into: &buffer, clientID: machine.rawValue, username: bundle.username, password: bundle.password, will: will,
            cleanSession: false, keepAlive: UInt16(fleet.options.keepAliveSeconds))
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// The connection ended (closed by either side, refused, broker gone).
    func closed() {
        loop.assertInEventLoop()
        if connected { fleet.count(\.connected, -1) }
        if online { fleet.count(\.online, -1) }
        connected = false
        online = false
        channel = nil
        for timer in timers { timer.cancel() }
        timers = []
        endpointIndex += 1
        reconnectLater()
    }

    /// Capped exponential backoff with full jitter, as the agent's MQTT client waits.
    private func reconnectLater() {
        guard !stopped else { return }
        attempts += 1
        let cap = min(fleet.options.maximumBackoff, 0.25 * pow(2, Double(min(attempts, 20))))
        let delay = Double.random(in: (cap / 2)...cap)
        loop.scheduleTask(in: .milliseconds(Int64(delay * 1000))) { self.connect() }
    }

    func stop(graceful: Bool) {
        loop.assertInEventLoop()
        stopped = true
        guard let channel else { return }
        if graceful {
            var buffer = channel.allocator.buffer(capacity: 2)
            MQTTEncoder.disconnect(into: &buffer)
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
        } else {
            // As a unit that loses power: no DISCONNECT, so the broker sends the will.
            channel.close(mode: .all, promise: nil)
        }
    }

    // MARK: Packets

    func receive(_ packet: MQTTPacket) {
        switch packet {
        case .connack(_, let code):
            guard code == 0 else {
                fleet.count(\.refusedConnects)
                channel?.close(promise: nil)
                return
            }
            attempts = 0
            connected = true
            resendUnacknowledged()
            fleet.count(\.connected)
            fleet.count(\.connacks)
            fleet.firstConnect(machine)
            subscribe()
        case .suback(_, let codes):
            guard !codes.contains(0x80) else {
                fleet.count(\.refusedSubscriptions)
                return
            }
            publishStatus(.online)
            online = true
            fleet.count(\.online)
            startTimers()
        case .publish(let topic, var payload, let qos, _, let packetID):
            if qos > 0, let packetID { write { MQTTEncoder.puback(into: &$0, packetID: packetID) } }
            let bytes = Data(payload.readBytes(length: payload.readableBytes) ?? [])
            route(topic, bytes)
        case .puback(let packetID):
            unacknowledged[packetID] = nil
        case .pingresp, .other:
            break
        }
    }

    private func subscribe() {
        let filters: [(String, UInt8)] = [
            // As the agent over MQTT 3.1.1: payments QoS 1, the retained-only topics QoS 0 (a
            // re-subscription sends the retained message again).
            (topics.topic(.paymentCompleted, for: machine), 1), (topics.topic(.configDesired, for: machine), 0),
            (topics.topic(.firmwareDesired, for: machine), 0),
        ]
        write { MQTTEncoder.subscribe(into: &$0, packetID: self.nextPacketID(), filters) }
    }

    private func startTimers() {
        let heartbeat = TimeAmount.seconds(Int64(config?.heartbeatS ?? fleet.options.heartbeatSeconds))
        let first = TimeAmount.milliseconds(Int64.random(in: 0...Int64(heartbeat.nanoseconds / 1_000_000)))
        timers.append(loop.scheduleRepeatedTask(initialDelay: first, delay: heartbeat) { _ in self.sendHeartbeat() })
        let ping = TimeAmount.seconds(Int64(max(1, fleet.options.keepAliveSeconds / 2)))
        timers.append(loop.scheduleRepeatedTask(initialDelay: ping, delay: ping) { _ in self.write { MQTTEncoder.pingreq(into: &$0) } })
    }

    private func route(_ topic: String, _ payload: Data) {
        if topic == topics.topic(.paymentCompleted, for: machine) {
            handlePayment(payload)
        } else if topic == topics.topic(.configDesired, for: machine) {
            applyConfig(payload)
        }
        // firmware/desired: simulated units do not update (the fleet sees no report).
    }

    // MARK: Protocol behaviour

    private func publishStatus(_ state: MachineState) {
        let status = StatusMessage(
            machineId: machine, state: state, bootId: bootId, session: session, firmware: fleet.options.firmware,
            configVersion: config?.version ?? 0, at: UnitFleet.nowMs())
        publish(.status, status, qos: 1, retain: true)
    }

    private func sendHeartbeat() {
        heartbeatSeq += 1
        let heartbeat = Heartbeat(
            machineId: machine, bootId: bootId, seq: heartbeatSeq, at: UnitFleet.nowMs(), uptimeS: 0, firmware: fleet.options.firmware,
            configVersion: config?.version ?? 0, inhibited: false, relay: .ok, outboxDepth: 0, counters: counters)
        publish(.heartbeat, heartbeat, qos: 0, retain: false)
        fleet.count(\.heartbeats)
    }

    private func applyConfig(_ payload: Data) {
        guard !payload.isEmpty, let opened = try? SignedEnvelope.open(payload, as: MachineConfig.self, trust: trust),
            opened.body.machineId == machine
        else { return }
        let desired = opened.body
        if desired.version > (config?.version ?? 0) {
            config = desired
            fleet.count(\.configsApplied)
        }
        guard desired.version == config?.version else { return }
        let report = ConfigReported(machineId: machine, version: desired.version, status: .applied, reason: nil, at: UnitFleet.nowMs())
        publish(.configReported, report, qos: 1, retain: true)
    }

    private func handlePayment(_ payload: Data) {
        fleet.count(\.paymentsReceived)
        let opened = Result { () throws(Refusal) in try SignedEnvelope.open(payload, as: PaymentCompleted.self, trust: trust) }
        var first: OriginalDecision?
        if case .success(let verified) = opened, verified.body.machineId == machine { first = decided[verified.body.paymentId] }
        let answer = DecisionCore.decide(
            DecisionCore.Facts(
                opened: opened, machine: machine, first: first, now: UnitFleet.nowMs(), clock: .trusted, journalCreatedAt: createdAt,
                config: config, waitMs: 0))
        switch answer {
        case .refused(let reason, let paymentId):
            var refusal = result(paymentId, .rejected, reason)
            refusal.payloadSha256 = SHA256Hasher.hex(of: payload)
            send(refusal)
        case .wrongMachine(let payment):
            send(result(payment.paymentId, .rejected, .wrongMachine))
        case .duplicate(let payment, let original):
            var duplicate = result(payment.paymentId, .duplicate, nil)
            duplicate.original = original
            counters.duplicate += 1
            send(duplicate)
        case .rejected(let payment, let reason, let pulses):
            var rejected = result(payment.paymentId, .rejected, reason)
            rejected.pulses = pulses
            decided[payment.paymentId] = OriginalDecision(status: .rejected, reason: reason, amount: 0)
            counters.rejected += 1
            send(rejected)
        case .fire(let payment, let plan):
            // Decided as the journal's "train started" would: a duplicate arriving during the
            // train is answered with this decision.
            decided[payment.paymentId] = OriginalDecision(status: .credited, reason: nil, amount: payment.amount)
            let train = fleet.options.realTrainTime ? TimeAmount.milliseconds(Int64(plan.durationMs)) : .zero
            loop.scheduleTask(in: train) {
                var credited = self.result(payment.paymentId, .credited, nil)
                credited.amount = payment.amount
                credited.pulses = plan.pulseCounts
                credited.pulsesFired = plan.totalPulses
                self.counters.credited += 1
                self.counters.creditedAmount += payment.amount
                self.counters.pulses += plan.totalPulses
                self.send(credited)
            }
        }
    }

    private func result(_ paymentId: PaymentID?, _ status: PaymentStatus, _ reason: RejectionReason?) -> PaymentResult {
        PaymentResult(
            paymentId: paymentId, machineId: machine, status: status, reason: reason, amount: 0, pulses: [], pulsesFired: 0,
            decidedAt: UnitFleet.nowMs(), bootId: bootId, seq: heartbeatSeq)
    }

    private func send(_ result: PaymentResult) {
        publish(.paymentResult, result, qos: 1, retain: false)
        fleet.count(\.resultsSent)
    }

    private func publish(_ kind: TopicKind, _ message: some Encodable, qos: UInt8, retain: Bool) {
        let payload = WireCoding.encode(message)
        let id: UInt16? = qos > 0 ? nextPacketID() : nil
        let topic = topics.topic(kind, for: machine)
        // A result is kept until acknowledged; a status or report is sent again on the next
        // connection anyway.
        if let id, kind == .paymentResult { unacknowledged[id] = (topic, Array(payload), retain) }
        write { MQTTEncoder.publish(into: &$0, topic: topic, payload: Array(payload), qos: qos, retain: retain, packetID: id) }
    }

    private func resendUnacknowledged() {
        let pending = unacknowledged.sorted { $0.key < $1.key }.map(\.value)
        unacknowledged = [:]
        for message in pending {
            let id = nextPacketID()
            unacknowledged[id] = message
            write { MQTTEncoder.publish(into: &$0, topic: message.topic, payload: message.payload, qos: 1, retain: message.retain, packetID: id) }
        }
    }

    private func write(_ encode: (inout ByteBuffer) -> Void) {
        guard let channel else { return }
        var buffer = channel.allocator.buffer(capacity: 256)
        encode(&buffer)
        channel.writeAndFlush(buffer, promise: nil)
    }

    private func nextPacketID() -> UInt16 {
        packetID = packetID == UInt16.max ? 1 : packetID + 1
        return packetID
    }
}

/// Frames incoming bytes into packets for its unit.
final class UnitHandler: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked: used on its channel's event loop only.
    typealias InboundIn = ByteBuffer
    let unit: SimulatedUnit
    var pending: ByteBuffer?

    init(unit: SimulatedUnit) { self.unit = unit }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if pending == nil { pending = incoming } else { pending!.writeBuffer(&incoming) }
        do {
            while let packet = try MQTTPacket.decode(&pending!) { unit.receive(packet) }
            pending!.discardReadBytes()
        } catch {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        unit.closed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
