import Foundation
import MessageSchema
import Testing

/// Round trips for every message type, the page's exact field names, and each validation
/// rule broken once.
@Suite struct MessageTests {
    static let result = PaymentResult(
        paymentId: "p-20261129-000123", machineId: "laundry-07", status: .credited, reason: nil, amount: 400,
        pulses: [PulseCount(channel: "coin", count: 4)], pulsesFired: 4, decidedAt: 1_764_442_800_412,
        bootId: "6f1c", seq: 57)
    static let status = StatusMessage(
        machineId: "laundry-07", state: .online, bootId: "6f1c", session: 3, firmware: "1.4.0", configVersion: 12,
        at: 1_764_442_790_000)
    static let heartbeat = Heartbeat(
        machineId: "laundry-07", bootId: "6f1c", seq: 120, at: 1_764_442_800_000, uptimeS: 3600, firmware: "1.4.0",
        configVersion: 12, inhibited: false, relay: .ok, outboxDepth: 0,
        counters: PaymentCounters(credited: 31, rejected: 2, duplicate: 1, uncertain: 0, pulses: 98, creditedAmount: 12400))
    static let config = MachineConfig(
        machineId: "laundry-07", version: 12, issuedAt: 1_764_442_700_000, currency: "JPY", maxAmount: 5000,
        heartbeatS: 30, postVendDelayMs: 2000,
        outputs: [
            OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50),
            OutputConfig(channel: "bill", chip: "gpiochip0", line: 27, valuePerPulse: 1000, pulseMs: 100, gapMs: 150),
        ],
        inhibit: InhibitConfig(chip: "gpiochip0", line: 22, activeLow: true), trust: nil)
    static let payment = PaymentCompleted(
        paymentId: "p-20261129-000123", machineId: "laundry-07", amount: 400, currency: "JPY", userId: "u-5f3a9c",
        issuedAt: 1_764_442_800_000, expiresAt: 1_764_442_830_000)
    static let firmware = FirmwareUpdate(
        machineId: "laundry-07", version: "1.5.0", url: "http://updates.example/edge-agent-1.5.0",
        sha256: String(repeating: "ab", count: 32), size: 9_123_456, issuedAt: 1_764_442_700_000)

    func roundTrip<T: Codable & Equatable>(_ value: T) throws {
        let data = WireCoding.encode(value)
        #expect(try WireCoding.decode(T.self, from: data) == value)
    }

    func keys(_ value: some Encodable) throws -> Set<String> {
        let object = try JSONSerialization.jsonObject(with: WireCoding.encode(value)) as! [String: Any]
        return Set(object.keys)
    }

    @Test func everyMessageRoundTrips() throws {
        try roundTrip(Self.payment)
        try roundTrip(Self.result)
        var duplicate = Self.result
        duplicate.status = .duplicate
        duplicate.amount = 0
        duplicate.original = OriginalDecision(status: .credited, reason: nil, amount: 400)
        try roundTrip(duplicate)
        var malformed = Self.result
        malformed.paymentId = nil
        malformed.status = .rejected
        malformed.reason = .malformed
        malformed.amount = 0
        try roundTrip(malformed)
        try roundTrip(Self.status)
        try roundTrip(Self.heartbeat)
        try roundTrip(Self.config)
        var withTrust = Self.config
        withTrust.trust = [TrustEntry(kid: "fleet-1", purpose: .fleet, publicKey: try Ed25519PrivateKey().publicKey.base64)]
        try roundTrip(withTrust)
        try roundTrip(ConfigReported(machineId: "laundry-07", version: 12, status: .applied, reason: nil, at: 1))
        try roundTrip(ConfigReported(machineId: "laundry-07", version: 12, status: .rejected, reason: .badSignature, at: 1))
        try roundTrip(Self.firmware)
        try roundTrip(FirmwareReported(machineId: "laundry-07", version: "1.5.0", state: .failed, reason: "sha256_mismatch", at: 1))
    }

    @Test func encodingUsesExactlyThePagesFieldNames() throws {
        #expect(try keys(Self.payment) == ["type", "paymentId", "machineId", "amount", "currency", "userId", "issuedAt", "expiresAt"])
        #expect(try keys(Self.result) == [
            "v", "type", "paymentId", "machineId", "status", "reason", "amount", "pulses", "pulsesFired", "decidedAt",
            "bootId", "seq",
        ])
        #expect(try keys(Self.status) == ["v", "type", "machineId", "state", "bootId", "session", "firmware", "configVersion", "at"])
        #expect(try keys(Self.heartbeat) == [
            "v", "type", "machineId", "bootId", "seq", "at", "uptimeS", "firmware", "configVersion", "inhibited", "relay",
            "outboxDepth", "counters", "problems",
        ])
        #expect(try keys(Self.config) == [
            "type", "machineId", "version", "issuedAt", "currency", "maxAmount", "heartbeatS", "postVendDelayMs", "outputs",
            "inhibit",
        ])
        #expect(try keys(Self.firmware) == ["type", "machineId", "version", "url", "sha256", "size", "issuedAt"])
        // `reason` and a missing payment ID are explicit nulls, as on the page.
        let text = String(decoding: WireCoding.encode(Self.result), as: UTF8.self)
        #expect(text.contains(#""reason":null"#))
    }

    /// Decoding `base` with one field replaced (or removed, for nil) must fail on that field.
    func expectMalformed<T: Decodable>(
        _ type: T.Type, _ base: some Encodable, _ field: String, _ value: Any?, at expectedField: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        var object = try JSONSerialization.jsonObject(with: WireCoding.encode(base)) as! [String: Any]
        object[field] = value
        let data = try JSONSerialization.data(withJSONObject: object)
        do {
            _ = try WireCoding.decode(T.self, from: data)
            Issue.record("\(field) = \(String(describing: value)) was accepted", sourceLocation: sourceLocation)
        } catch {
            guard case .malformed(let actual, _) = error else {
                Issue.record("expected malformed, got \(error)", sourceLocation: sourceLocation)
                return
            }
            #expect(actual == (expectedField ?? field), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func resultRules() throws {
        try expectMalformed(PaymentResult.self, Self.result, "v", 2)
        try expectMalformed(PaymentResult.self, Self.result, "type", "status")
        try expectMalformed(PaymentResult.self, Self.result, "status", "maybe")
        try expectMalformed(PaymentResult.self, Self.result, "reason", "because")
        try expectMalformed(PaymentResult.self, Self.result, "amount", -1)
        try expectMalformed(PaymentResult.self, Self.result, "seq", "57")
        try expectMalformed(PaymentResult.self, Self.result, "machineId", "LAUNDRY")
        try expectMalformed(PaymentResult.self, Self.result, "pulses", [["channel": "coin", "count": -1]], at: "pulses[0].count")
        try expectMalformed(PaymentResult.self, Self.result, "status", "rejected", at: "reason")
        try expectMalformed(PaymentResult.self, Self.result, "status", "duplicate", at: "original")
        try expectMalformed(PaymentResult.self, Self.result, "decidedAt", nil)
    }

    @Test func statusAndHeartbeatRules() throws {
        try expectMalformed(StatusMessage.self, Self.status, "state", "sleeping")
        try expectMalformed(StatusMessage.self, Self.status, "session", -1)
        try expectMalformed(StatusMessage.self, Self.status, "bootId", nil)
        try expectMalformed(Heartbeat.self, Self.heartbeat, "inhibited", "no")
        try expectMalformed(Heartbeat.self, Self.heartbeat, "relay", "broken")
        try expectMalformed(Heartbeat.self, Self.heartbeat, "counters", ["credited": 1], at: "counters.rejected")
        try expectMalformed(Heartbeat.self, Self.heartbeat, "outboxDepth", 1.5)
    }

    @Test func configRules() throws {
        try expectMalformed(MachineConfig.self, Self.config, "version", -1)
        try expectMalformed(MachineConfig.self, Self.config, "heartbeatS", 3601)
        try expectMalformed(MachineConfig.self, Self.config, "currency", "yen")
        try expectMalformed(MachineConfig.self, Self.config, "inhibit", ["chip": "gpiochip0", "line": 2000, "activeLow": true], at: "inhibit.line")
        try expectMalformed(MachineConfig.self, Self.config, "outputs", [["channel": "", "chip": "gpiochip0", "line": 1, "activeLow": false, "valuePerPulse": 1, "pulseMs": 50, "gapMs": 50]], at: "outputs[0].channel")
        try expectMalformed(ConfigReported.self, ConfigReported(machineId: "m1", version: 1, status: .applied, reason: nil, at: 1), "status", "done")
    }

    @Test func firmwareRules() throws {
        try expectMalformed(FirmwareUpdate.self, Self.firmware, "url", "ftp://x/y")
        try expectMalformed(FirmwareUpdate.self, Self.firmware, "url", "http://x/a b")
        try expectMalformed(FirmwareUpdate.self, Self.firmware, "sha256", "zz")
        try expectMalformed(FirmwareUpdate.self, Self.firmware, "sha256", String(repeating: "g", count: 64))
        try expectMalformed(FirmwareUpdate.self, Self.firmware, "size", 0)
        try expectMalformed(FirmwareUpdate.self, Self.firmware, "version", "1.5.0 beta")
        try expectMalformed(FirmwareReported.self, FirmwareReported(machineId: "m1", version: "1", state: .installed, reason: nil, at: 1), "state", "exploded")
    }

    @Test func expiryIsRoundedUp() {
        #expect(Self.payment.messageExpirySeconds(now: 1_764_442_800_000) == 30)
        #expect(Self.payment.messageExpirySeconds(now: 1_764_442_800_001) == 30)
        #expect(Self.payment.messageExpirySeconds(now: 1_764_442_829_999) == 1)
    }
}

@Suite struct TopicTests {
    @Test func buildsAndParsesEveryTopic() throws {
        let scheme = try TopicScheme(root: "acme/fleet")
        for kind in TopicKind.allCases {
            let topic = scheme.topic(kind, for: "laundry-07")
            #expect(topic == "acme/fleet/laundry-07/\(kind.rawValue)")
            let parsed = try #require(scheme.parse(topic))
            #expect(parsed.machine == "laundry-07")
            #expect(parsed.kind == kind)
        }
        #expect(TopicScheme.default.filter(.status) == "fleet/+/status")
        #expect(TopicKind.heartbeat.qos == 0 && !TopicKind.heartbeat.retained)
        #expect(TopicKind.status.retained && TopicKind.configDesired.retained && !TopicKind.paymentCompleted.retained)
    }

    @Test(arguments: ["fleet/+/status", "fleet/#", "fleet/a/b/status", "fleet/LAUNDRY/status", "fleet/m1/unknown", "other/m1/status", "fleet/m1"])
    func refusesTopicsOutsideTheScheme(_ topic: String) {
        #expect(TopicScheme.default.parse(topic) == nil)
    }

    @Test(arguments: ["a+b", "x/#", "bad/", "/lead", "", "a//b", "$SYS"])
    func refusesBadMachineIDsAndRoots(_ text: String) {
        #expect(MachineID(rawValue: text) == nil)
        if text != "a+b" || true { #expect(throws: ProtocolError.self) { try TopicScheme(root: text + (text.isEmpty ? "" : "+")) } }
    }

    /// Roots every engine carries unchanged: a '.', a space, '*' or '>' would change meaning
    /// or close the connection on a NATS cluster.
    @Test(arguments: ["acme.fleet", "my fleet", "fleet*", "fleet/>", "$SYS", "fleet/\u{7f}", "flöte"])
    func refusesRootsOneEngineWouldMisread(_ root: String) {
        #expect(throws: ProtocolError.self) { try TopicScheme(root: root) }
    }

    @Test(arguments: ["fleet", "acme/fleet-eu_2", "A/B/C"])
    func acceptsPortableRoots(_ root: String) throws {
        _ = try TopicScheme(root: root)
    }

    @Test func machineIDRules() {
        #expect(MachineID(rawValue: "ab") != nil)
        #expect(MachineID(rawValue: "a") == nil)
        #expect(MachineID(rawValue: String(repeating: "a", count: 63)) != nil)
        #expect(MachineID(rawValue: String(repeating: "a", count: 64)) == nil)
        #expect(MachineID(rawValue: "-ab") == nil)
        #expect(MachineID(rawValue: "laundry-07") != nil)
    }
}

/// The heartbeat's `metrics` extension: carried when present, absent from older agents,
/// refused when it makes no sense.
@Suite struct HeartbeatMetricsTests {
    @Test func metricsRoundTripAndOlderAgentsStillDecode() throws {
        var heartbeat = MessageTests.heartbeat
        #expect(try WireCoding.decode(Heartbeat.self, from: WireCoding.encode(heartbeat)).metrics == nil)
        #expect(!String(decoding: WireCoding.encode(heartbeat), as: UTF8.self).contains("metrics"))
        heartbeat.metrics = AgentMetrics(trains: 3, edgeErrorMaxUs: 180, edgeErrorP99Us: 95, journalCommitMaxUs: 2400)
        let decoded = try WireCoding.decode(Heartbeat.self, from: WireCoding.encode(heartbeat))
        #expect(decoded.metrics == heartbeat.metrics)
        let idle = AgentMetrics(trains: 0)
        heartbeat.metrics = idle
        let text = String(decoding: WireCoding.encode(heartbeat), as: UTF8.self)
        #expect(text.contains(#""metrics":{"trains":0}"#))
        var bad = text.replacingOccurrences(of: #""metrics":{"trains":0}"#, with: #""metrics":{"trains":1,"edgeErrorMaxUs":-5}"#)
        #expect(throws: ProtocolError.self) { try WireCoding.decode(Heartbeat.self, from: Data(bad.utf8)) }
        bad = text.replacingOccurrences(of: #""metrics":{"trains":0}"#, with: #""metrics":{"trains":-1}"#)
        #expect(throws: ProtocolError.self) { try WireCoding.decode(Heartbeat.self, from: Data(bad.utf8)) }
    }
}
