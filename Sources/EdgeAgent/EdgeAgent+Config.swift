import Foundation
import MQTT
import MessageSchema
import RelayOutput

/// What became of a `config/desired`.
enum ConfigOutcome: Equatable {
    case applied(version: Int)
    case rejected(version: Int, reason: RejectionReason)
    /// Not newer than the applied one: nothing to do, nothing to report.
    case ignored
}

extension EdgeAgent {
    func handleConfig(_ payload: Data, client: MQTTClient) async {
        guard !payload.isEmpty else { return }  // retained message cleared
        let outcome = applyConfig(payload, now: now())
        switch outcome {
        case .applied(let version):
            await reportConfig(version: version, status: .applied, reason: nil, client: client)
        case .rejected(let version, let reason):
            await reportConfig(version: version, status: .rejected, reason: reason, client: client)
        case .ignored:
            // The retained copy of what is applied comes back on every (re)subscription.
            if let version = pipeline.withLock({ $0.config?.version }) {
                await reportConfig(version: version, status: .applied, reason: nil, client: client)
            }
        }
    }

    /// Verifies and applies a signed configuration: newer version only, lines re-opened (the
    /// pipeline only gets here between trains), persisted, trust rotated.
    func applyConfig(_ payload: Data, now: Int) -> ConfigOutcome {
        let (trust, current) = pipeline.withLock { ($0.trust, $0.config) }
        let verified: Verified<MachineConfig>
        do {
            verified = try SignedEnvelope.open(payload, as: MachineConfig.self, trust: trust)
        } catch {
            logger.warning("configuration refused: \(error)")
            return .rejected(version: SignedEnvelope.peekBodyField(payload, "version", as: Int.self) ?? 0, reason: error.reason)
        }
        let config = verified.body
        guard config.machineId == machine else {
            logger.warning("configuration for another machine (\(config.machineId)) refused")
            return .rejected(version: config.version, reason: .wrongMachine)
        }
        if let current, config.version <= current.version {
            if config.version < current.version {
                logger.info("configuration version \(config.version) ignored: version \(current.version) is applied")
            }
            return .ignored
        }
        do {
            try PulsePlan.checkPlannable(outputs: config.outputs, maxAmount: config.maxAmount)
        } catch {
            logger.error("configuration \(config.version) rejected: \(error)")
            return .rejected(version: config.version, reason: .amountNotPayable)
        }
        if current?.outputs != config.outputs || current?.inhibit != config.inhibit || pipeline.withLock({ $0.lines }) == nil {
            closeLines()
            if let error = openLines(for: config) {
                // Back to the lines that worked.
                if let current { openLines(for: current) }
                logger.error("configuration \(config.version) rejected: \(error)")
                return .rejected(version: config.version, reason: .lineUnavailable)
            }
        }
        do {
            try store.saveAppliedConfig(config, envelope: String(decoding: payload, as: UTF8.self), at: now)
        } catch {
            logger.error("cannot store configuration \(config.version): \(error)")
            if let current { closeLines(); openLines(for: current) }
            return .rejected(version: config.version, reason: .malformed)
        }
        var rotated: TrustStore?
        if let entries = config.trust { rotated = try? TrustStore(entries: entries) }
        pipeline.withLock { s in
            s.config = config
            if let rotated { s.trust = rotated }
            // Signed by the fleet: the clock cannot truly be earlier than this.
            s.clock.raise(to: config.issuedAt - ProtocolLimits.maxClockLeadMs)
        }
        logger.info(
            "configuration \(config.version) applied",
            metadata: ["config.outputs": "\(config.outputs.map(\.channel))", "config.trust_rotated": "\(rotated != nil)"])
        return .applied(version: config.version)
    }

    func reportConfig(version: Int, status: ConfigApplyStatus, reason: RejectionReason?, client: MQTTClient) async {
        let report = ConfigReported(machineId: machine, version: version, status: status, reason: reason, at: now())
        do {
            try await client.publish(
                topic: topics.topic(.configReported, for: machine), payload: WireCoding.encode(report), qos: .atLeastOnce,
                retain: true)
            link.withLock { $0.reportedConfigThisBoot = true }
        } catch {
            logger.warning("cannot report configuration \(version): \(error)")
        }
    }
}
