import Foundation
import GRDB
import Locking
import Prometheus

/// `serve`'s metrics, as OpenMetrics text for Prometheus (`serve --http`, `GET /metrics`;
/// docs/operations.md, "Metrics"). Two kinds:
/// - measured as `serve` works: events ingested, registry write time, completion → result
///   latency, heartbeat transit, the broker connection;
/// - read from the registry at each scrape: units by state, payments by status and
///   settlement, credited amounts, open alerts, alert deliveries, and what the units' own
///   heartbeats say (outbox depth, relay faults, their payment counters).
public final class FleetMetrics: Sendable {
    public let prometheus = PrometheusCollectorRegistry()
    let eventsIngested: Prometheus.Counter
    let registryWrite: DurationHistogram
    let resultLatency: DurationHistogram
    let heartbeatTransit: ValueHistogram
    let brokerConnected: Prometheus.Gauge
    /// The label sets each registry-read gauge was given, so one that disappears reads 0.
    private let seen = Locked<[String: Set<[String]>]>([:])

    public init() {
        eventsIngested = prometheus.makeCounter(descriptor: Self.name("events_ingested", "total", "Messages from units and payment servers written to the registry."))
        registryWrite = prometheus.makeDurationHistogram(
            descriptor: Self.name("registry_write", "seconds", "Time to write one batch of events to the registry (registry write lag)."),
            buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1)])
        resultLatency = prometheus.makeDurationHistogram(
            descriptor: Self.name("payment_result_latency", "seconds", "From a signed completion reaching serve to the unit's result reaching serve."),
            buckets: [.milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10), .seconds(30), .seconds(60)])
        heartbeatTransit = prometheus.makeValueHistogram(
            descriptor: Self.name("heartbeat_lag", "seconds", "A heartbeat's arrival at serve minus its own timestamp (transit plus the unit's clock skew; a negative difference counts as 0)."),
            buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30])
        brokerConnected = prometheus.makeGauge(descriptor: Self.name("broker_connected", "", "1 while serve is connected to the broker."))
    }

    /// The registry's side, read now; then every metric as OpenMetrics text.
    public func scrape(_ registry: Registry, now: Int = Registry.now()) throws -> [UInt8] {
        let counts = try registry.counts(now: now)
        set("units", ["state"], counts.units.map { ([$0.key], Double($0.value)) }, help: "Units by state (revoked units apart).")
        set("payments", ["status", "settlement"], counts.payments.map { ($0.key, Double($0.value)) },
            help: "Payments the fleet recorded, by the unit's decision (none: no result) and settlement (unknown: not yet).")
        set("credited_amount", ["currency"], counts.creditedAmount.map { ([$0.key], Double($0.value)) },
            help: "Sum of credited amounts, in the currency's minor unit (as `fleet-manager report`).")
        set("alerts_open", ["kind"], counts.openAlerts.map { ([$0.key], Double($0.value)) }, help: "Open alerts by kind.")
        set("alert_deliveries", ["state"], counts.deliveries.map { ([$0.key], Double($0.value)) }, help: "Alert events by delivery state.")
        set("unit_reported", ["counter"], counts.reported.map { ([$0.key], Double($0.value)) },
            help: "The units' own counters from their last heartbeats, summed (credited, rejected, duplicate, uncertain, pulses).")
        set("units_outbox_depth", [], [([], Double(counts.outboxDepth))], help: "Results the units hold that the broker has not taken yet, summed.")
        set("units_relay_fault", [], [([], Double(counts.relayFaults))], help: "Units whose last heartbeat says a relay line could not be driven.")
        set("heartbeat_age_max_seconds", [], [([], Double(counts.oldestHeartbeatAgeMs ?? 0) / 1000)],
            help: "The longest an online unit has been silent.")
        set("unit_trains", [], [([], Double(counts.trains))], help: "Pulse trains the units reported firing (heartbeat metrics) while serve watched.")
        set("unit_edge_error_p99_max_seconds", [], [([], Double(counts.edgeErrorP99MaxUs ?? 0) / 1e6)],
            help: "The largest of the units' 99th-percentile relay edge errors (last heartbeat window with trains of each).")
        set("unit_edge_error_max_seconds", [], [([], Double(counts.edgeErrorMaxUs ?? 0) / 1e6)],
            help: "The largest relay edge error among the units' last heartbeat windows with trains.")
        set("unit_journal_commit_max_seconds", [], [([], Double(counts.journalCommitMaxUs ?? 0) / 1e6)],
            help: "The longest journal commit (fsync) of a train start among the units' last heartbeat windows with trains.")
        var buffer: [UInt8] = []
        prometheus.emit(into: &buffer)
        return buffer
    }

    private func set(_ name: String, _ labelNames: [String], _ values: [([String], Double)], help: String) {
        let now = Set(values.map(\.0))
        let earlier = seen.withLock { seen in
            defer { seen[name, default: []].formUnion(now) }
            return seen[name] ?? []
        }
        for (labels, value) in values {
            gauge(name, labelNames, labels, help).set(to: value)
        }
        for labels in earlier.subtracting(now) {
            gauge(name, labelNames, labels, help).set(to: 0)
        }
    }

    private func gauge(_ name: String, _ labelNames: [String], _ labels: [String], _ help: String) -> Prometheus.Gauge {
        prometheus.makeGauge(descriptor: Self.name(name, "", help), labels: Array(zip(labelNames, labels)))
    }

    /// `pulsebridge_NAME_UNIT`.
    static func name(_ name: String, _ unit: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "pulsebridge", metricName: name, unitName: unit, helpText: help)
    }

    func recordBatch(events: Int, took: Duration) {
        eventsIngested.increment(by: Int64(events))
        registryWrite.record(took)
    }

    func recordHeartbeat(sentAt: Int, arrivedAt: Int) {
        heartbeatTransit.record(Double(max(0, arrivedAt - sentAt)) / 1000)
    }
}

/// What the registry holds, counted (for `/metrics`).
public struct FleetCounts: Sendable, Equatable {
    public var units: [String: Int] = [:]
    /// [status, settlement] → payments.
    public var payments: [[String]: Int] = [:]
    public var creditedAmount: [String: Int] = [:]
    public var openAlerts: [String: Int] = [:]
    public var deliveries: [String: Int] = [:]
    /// The units' own counters, summed over their last heartbeats.
    public var reported: [String: Int] = [:]
    public var outboxDepth = 0
    public var relayFaults = 0
    public var oldestHeartbeatAgeMs: Int?
    /// From the units' `metrics` heartbeat extension: trains they fired while serve watched,
    /// and the worst relay edge error (p99 and max) and journal commit among their last reports.
    public var trains = 0
    public var edgeErrorP99MaxUs: Int?
    public var edgeErrorMaxUs: Int?
    public var journalCommitMaxUs: Int?
}

extension Registry {
    public func counts(now: Int = Registry.now()) throws -> FleetCounts {
        try database.read { db in
            var counts = FleetCounts()
            for row in try Row.fetchAll(
                db,
                sql: """
                    SELECT CASE WHEN m.state = 'revoked' THEN 'revoked' ELSE COALESCE(u.state, 'unknown') END AS s, COUNT(*) AS n
                    FROM machine m LEFT JOIN unitState u ON u.id = m.id GROUP BY s
                    """)
            {
                counts.units[row["s"]] = row["n"]
            }
            for row in try Row.fetchAll(
                db, sql: "SELECT COALESCE(status, 'none') AS s, COALESCE(settlement, 'unknown') AS t, COUNT(*) AS n FROM paymentRecord GROUP BY s, t")
            {
                counts.payments[[row["s"], row["t"]]] = row["n"]
            }
            for row in try Row.fetchAll(
                db,
                sql: "SELECT COALESCE(currency, 'unknown') AS c, SUM(creditedAmount) AS a FROM paymentRecord WHERE status = 'credited' GROUP BY c")
            {
                counts.creditedAmount[row["c"]] = row["a"]
            }
            for row in try Row.fetchAll(db, sql: "SELECT kind, COUNT(*) AS n FROM alert WHERE resolvedAt IS NULL GROUP BY kind") {
                counts.openAlerts[row["kind"]] = row["n"]
            }
            for row in try Row.fetchAll(db, sql: "SELECT state, COUNT(*) AS n FROM alertDelivery GROUP BY state") {
                counts.deliveries[row["state"]] = row["n"]
            }
            if let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT COALESCE(SUM(u.outboxDepth), 0) AS outbox, COALESCE(SUM(u.relay = 'fault'), 0) AS faults,
                        COALESCE(SUM(json_extract(u.counters, '$.credited')), 0) AS credited,
                        COALESCE(SUM(json_extract(u.counters, '$.rejected')), 0) AS rejected,
                        COALESCE(SUM(json_extract(u.counters, '$.duplicate')), 0) AS duplicate,
                        COALESCE(SUM(json_extract(u.counters, '$.uncertain')), 0) AS uncertain,
                        COALESCE(SUM(json_extract(u.counters, '$.pulses')), 0) AS pulses,
                        MIN(CASE WHEN u.state = 'online' THEN u.lastHeartbeatAt END) AS oldest,
                        COALESCE(SUM(u.trains), 0) AS trains, MAX(u.edgeErrorP99Us) AS edgeP99, MAX(u.edgeErrorMaxUs) AS edgeMax,
                        MAX(u.journalCommitMaxUs) AS commitMax
                    FROM unitState u JOIN machine m ON m.id = u.id WHERE m.state != 'revoked'
                    """)
            {
                counts.outboxDepth = row["outbox"]
                counts.relayFaults = row["faults"]
                for counter in ["credited", "rejected", "duplicate", "uncertain", "pulses"] { counts.reported[counter] = row[counter] }
                counts.oldestHeartbeatAgeMs = (row["oldest"] as Int?).map { max(0, now - $0) }
                counts.trains = row["trains"]
                counts.edgeErrorP99MaxUs = row["edgeP99"]
                counts.edgeErrorMaxUs = row["edgeMax"]
                counts.journalCommitMaxUs = row["commitMax"]
            }
            return counts
        }
    }
}
