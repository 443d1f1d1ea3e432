import FleetManager
import Foundation
import MessageSchema
import Testing

/// A unit's history as `serve` writes it while applying what the unit says: presence changes
/// (by status, by heartbeat, by silence), heartbeats per hour, configurations with their
/// diffs, firmware steps; and forgotten after `Registry.historyDays`.
@Suite struct HistoryTests {
    static let hour = 3_600_000
    /// 2026-11-30T00:00:00Z
    static let t0 = 1_795_996_800_000

    static func registry() throws -> Registry {
        let directory = NSTemporaryDirectory() + "pb-history-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return try Registry(path: directory + "/registry.sqlite")
    }

    static func status(_ machine: MachineID, _ state: MachineState, boot: String = "b1", session: Int = 1) -> FleetEvent {
        .status(StatusMessage(machineId: machine, state: state, bootId: boot, session: session, firmware: "1.0", configVersion: 1, at: 0))
    }

    static func heartbeat(_ machine: MachineID, at: Int, outbox: Int = 0, boot: String = "b1") -> FleetEvent {
        .heartbeat(
            Heartbeat(
                machineId: machine, bootId: boot, seq: 1, at: at, uptimeS: 1, firmware: "1.0", configVersion: 1, inhibited: false, relay: .ok,
                outboxDepth: outbox, counters: PaymentCounters()))
    }

    @Test func presenceHeartbeatsConfigurationsAndFirmwareAreKept() throws {
        let registry = try Self.registry()
        let unit: MachineID = "laundry-01"
        try registry.upsertMachine(unit)
        // Online at t0 with a 30 s heartbeat; three heartbeats in the first hour, one 40 min later.
        var config = try MachineProfile.standardCoin.config(for: unit, version: 1, currency: "JPY", trust: nil)
        config.heartbeatS = 30
        try registry.setDesiredConfig(config)
        _ = try registry.apply([Self.status(unit, .online)], now: Self.t0)
        for (offset, outbox) in [(10_000, 0), (40_000, 2), (70_000, 0), (40 * 60_000, 1)] {
            _ = try registry.apply([Self.heartbeat(unit, at: Self.t0 + offset, outbox: outbox)], now: Self.t0 + offset)
        }
        // Silent: offline by timeout; back online with a new boot; offline by its will.
        _ = try registry.markSilentUnitsOffline(now: Self.t0 + Self.hour + 5 * 60_000)
        _ = try registry.apply([Self.status(unit, .online, boot: "b2")], now: Self.t0 + 2 * Self.hour)
        _ = try registry.apply([Self.heartbeat(unit, at: Self.t0 + 2 * Self.hour + 1000, boot: "b2")], now: Self.t0 + 2 * Self.hour + 1000)
        _ = try registry.apply([Self.status(unit, .offline, boot: "b2")], now: Self.t0 + 3 * Self.hour)
        // Twice the same state: one change.
        _ = try registry.apply([Self.status(unit, .offline, boot: "b2")], now: Self.t0 + 3 * Self.hour + 10)

        // A second configuration; firmware steps.
        let firstMaximum = config.maxAmount
        config.version = 2
        config.maxAmount = 2500
        config.outputs[0].pulseMs = 60
        try registry.setDesiredConfig(config)
        for (state, at) in [(FirmwareState.downloading, 1), (.installing, 2), (.installed, 3)] {
            _ = try registry.apply([.firmwareReported(FirmwareReported(machineId: unit, version: "1.1", state: state, reason: nil, at: Self.t0 + at * 1000))], now: Self.t0)
        }

        let history = try registry.history(of: unit, since: Self.t0 - Self.hour)
        #expect(history.presence.map(\.state) == ["online", "offline", "online", "offline"])
        #expect(history.presence.map(\.at) == [Self.t0, Self.t0 + Self.hour + 5 * 60_000, Self.t0 + 2 * Self.hour, Self.t0 + 3 * Self.hour])
        #expect(history.presence[1].reason == "heartbeat timeout")
        #expect(history.heartbeats.map(\.hour) == [Self.t0, Self.t0 + 2 * Self.hour])
        #expect(history.heartbeats[0].count == 4 && history.heartbeats[0].maxOutbox == 2)
        #expect(history.heartbeats[0].maxGapMs == 40 * 60_000 - 70_000, "the silence before the fourth heartbeat")
        #expect(history.configs.map(\.version) == [2, 1])
        let diff = ConfigDiff.changes(from: history.configs[1].json, to: history.configs[0].json)
        #expect(diff.map(\.key) == ["maxAmount", "outputs[0].pulseMs"], "version and issue time are no change")
        #expect(diff[0].old == String(firstMaximum) && diff[0].new == "2500")
        #expect(history.firmware.map(\.state) == ["installed", "installing", "downloading"])

        // A later window starts with the state in force at its beginning.
        let late = try registry.history(of: unit, since: Self.t0 + 2 * Self.hour + 30 * 60_000)
        #expect(late.presence.map(\.state) == ["online", "offline"])

        // Forgotten after historyDays; configurations are kept.
        try registry.pruneHistory(now: Self.t0 + (Registry.historyDays + 1) * 86_400_000)
        let pruned = try registry.history(of: unit, since: 0)
        #expect(pruned.presence.isEmpty && pruned.heartbeats.isEmpty && pruned.firmware.isEmpty)
        #expect(pruned.configs.count == 2)
    }

    @Test func aDiffTellsBooleansNumbersAndStringsApartAndSeesAddedAndRemovedKeys() {
        let old = #"{"a":1,"b":true,"c":"x","list":[1,2],"gone":{"k":null},"version":1}"#
        let new = #"{"a":1.5,"b":1,"c":"x","list":[1],"added":{"k":false},"version":2}"#
        let changes = ConfigDiff.changes(from: old, to: new)
        #expect(changes == [
            ConfigDiff.Change(key: "a", old: "1", new: "1.5"), ConfigDiff.Change(key: "added.k", old: nil, new: "false"),
            ConfigDiff.Change(key: "b", old: "true", new: "1"), ConfigDiff.Change(key: "gone.k", old: "null", new: nil),
            ConfigDiff.Change(key: "list[1]", old: "2", new: nil),
        ])
        #expect(ConfigDiff.changes(from: nil, to: #"{"x":1}"#) == [ConfigDiff.Change(key: "x", old: nil, new: "1")])
    }
}

/// The fleet page's query in SQL against the whole fleet's overviews filtered in Swift.
@Suite struct UnitQueryTests {
    @Test func searchStatePagingAndCountsAgreeWithTheWholeList() throws {
        let registry = try HistoryTests.registry()
        var generator = SeededGenerator(seed: 5)
        let now = Registry.now()
        for i in 0..<250 {
            let unit = MachineID(unchecked: String(format: i % 3 == 0 ? "wash-%03d" : "laundry-%03d", i))
            try registry.upsertMachine(unit)
            switch Int.random(in: 0..<4, using: &generator) {
            case 0: _ = try registry.apply([HistoryTests.status(unit, .online)], now: now)
            case 1: _ = try registry.apply([HistoryTests.status(unit, .online), HistoryTests.status(unit, .offline)], now: now)
            default: break  // never seen: unknown
            }
        }
        let all = try registry.overviews(now: now)
        #expect(all.count == 250)
        var expectedCounts: [String: Int] = [:]
        for unit in all { expectedCounts[unit.state, default: 0] += 1 }
        #expect(try registry.unitStateCounts() == expectedCounts)
        for (search, state) in [("", nil), ("wash", nil), ("", "online"), ("laundry-1", "offline"), ("", "unknown"), ("zzz", nil)] as [(String, String?)] {
            let expected = all.filter { (search.isEmpty || $0.machineId.contains(search)) && (state == nil || $0.state == state) }.map(\.machineId)
            var query = UnitQuery(search: search, state: state)
            #expect(try registry.unitCount(matching: query) == expected.count)
            var paged: [String] = []
            query.limit = 30
            while true {
                let page = try registry.overviews(now: now, matching: query).map(\.machineId)
                paged += page
                query.offset += 30
                if page.count < 30 { break }
            }
            #expect(paged == expected, "\(search) \(state ?? "-")")
        }
        let picked = [all[3].machineId, all[200].machineId, "no-such-unit"]
        #expect(try registry.overviews(now: now, matching: UnitQuery(ids: picked)).map(\.machineId) == [all[3].machineId, all[200].machineId].sorted())
        #expect(try registry.overviews(now: now, matching: UnitQuery(ids: [])).isEmpty)
    }
}
