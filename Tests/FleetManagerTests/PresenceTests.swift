import FleetManager
import Testing

/// The presence rules, one row each: (presence, event, now) → (presence, alerts).
@Suite struct PresenceTests {
    typealias P = Presence
    static let online = P(state: .online, bootId: "b1", session: 1, since: 1_000, lastHeartbeatAt: 50_000, heartbeatS: 10)

    struct Row: Sendable, CustomTestStringConvertible {
        var name: String
        var before: P
        var event: P.Event
        var now: Int
        var after: P
        /// The alert opened (`.open`), resolved (`.resolve`), or none.
        var alerted: P.Alert.Change?

        var testDescription: String { name }
    }

    static let rows: [Row] = [
        Row(
            name: "first online", before: P(), event: .status(online: true, bootId: "b1", session: 1), now: 5,
            after: P(state: .online, bootId: "b1", session: 1, since: 5, lastHeartbeatAt: 5), alerted: nil),
        Row(
            name: "online again, same session: since kept", before: online, event: .status(online: true, bootId: "b1", session: 1), now: 60_000,
            after: P(state: .online, bootId: "b1", session: 1, since: 1_000, lastHeartbeatAt: 60_000, heartbeatS: 10), alerted: nil),
        Row(
            name: "online, new session: since restarts", before: online, event: .status(online: true, bootId: "b1", session: 2), now: 60_000,
            after: P(state: .online, bootId: "b1", session: 2, since: 60_000, lastHeartbeatAt: 60_000, heartbeatS: 10), alerted: nil),
        Row(
            name: "offline from the session online", before: online, event: .status(online: false, bootId: "b1", session: 1), now: 60_000,
            after: P(state: .offline, offlineReason: .status, bootId: "b1", session: 1, since: 60_000, lastHeartbeatAt: 50_000, heartbeatS: 10),
            alerted: .open),
        Row(
            name: "online again after offline: resolves",
            before: P(state: .offline, offlineReason: .status, bootId: "b1", session: 1, since: 9),
            event: .status(online: true, bootId: "b2", session: 1), now: 70,
            after: P(state: .online, bootId: "b2", session: 1, since: 70, lastHeartbeatAt: 70), alerted: .resolve),
        Row(
            name: "a stale will from an older session", before: online, event: .status(online: false, bootId: "b0", session: 7), now: 60_000,
            after: online, alerted: nil),
        Row(
            name: "offline twice: one alert", before: P(state: .offline, offlineReason: .status, bootId: "b1", session: 1, since: 9),
            event: .status(online: false, bootId: "b1", session: 1), now: 60_000,
            after: P(state: .offline, offlineReason: .status, bootId: "b1", session: 1, since: 9), alerted: nil),
        Row(
            name: "a heartbeat does not overrule the same boot's offline",
            before: P(state: .offline, offlineReason: .status, bootId: "b1", session: 1, since: 9), event: .heartbeat(bootId: "b1"), now: 70,
            after: P(state: .offline, offlineReason: .status, bootId: "b1", session: 1, since: 9, lastHeartbeatAt: 70), alerted: nil),
        Row(
            name: "a heartbeat from a new boot brings it back",
            before: P(state: .offline, offlineReason: .status, bootId: "b1", session: 1, since: 9), event: .heartbeat(bootId: "b2"), now: 70,
            after: P(state: .online, bootId: "b2", session: 1, since: 70, lastHeartbeatAt: 70), alerted: .resolve),
        Row(
            name: "a heartbeat after a timeout brings it back",
            before: P(state: .offline, offlineReason: .heartbeatTimeout, bootId: "b1", session: 1, since: 9), event: .heartbeat(bootId: "b1"),
            now: 70, after: P(state: .online, bootId: "b1", session: 1, since: 70, lastHeartbeatAt: 70), alerted: .resolve),
        Row(
            name: "a heartbeat from a unit never seen", before: P(), event: .heartbeat(bootId: "b1"), now: 70,
            after: P(state: .online, bootId: "b1", since: 70, lastHeartbeatAt: 70), alerted: nil),
        Row(
            name: "a heartbeat keeps an online unit's since", before: online, event: .heartbeat(bootId: "b1"), now: 60_000,
            after: P(state: .online, bootId: "b1", session: 1, since: 1_000, lastHeartbeatAt: 60_000, heartbeatS: 10), alerted: nil),
        Row(name: "silent for exactly 3 intervals: still online", before: online, event: .tick, now: 80_000, after: online, alerted: nil),
        Row(
            name: "silent for longer: offline", before: online, event: .tick, now: 80_001,
            after: P(state: .offline, offlineReason: .heartbeatTimeout, bootId: "b1", session: 1, since: 80_001, lastHeartbeatAt: 50_000, heartbeatS: 10),
            alerted: .open),
        Row(
            name: "time does not touch an offline unit", before: P(state: .offline, offlineReason: .status, since: 9, lastHeartbeatAt: 0),
            event: .tick, now: 1_000_000, after: P(state: .offline, offlineReason: .status, since: 9, lastHeartbeatAt: 0), alerted: nil),
        Row(name: "nor one never seen", before: P(), event: .tick, now: 1_000_000, after: P(), alerted: nil),
    ]

    @Test(arguments: rows)
    func rule(_ row: Row) {
        let (after, alerts) = row.before.applying(row.event, now: row.now)
        #expect(after == row.after)
        #expect(alerts.map(\.kind) == (row.alerted == nil ? [] : [.offline]))
        #expect(alerts.map(\.change) == (row.alerted.map { [$0] } ?? []))
    }

    /// Whatever happens, the state says why it is offline exactly when it is offline, and a
    /// change of state is the only thing that moves `since`.
    @Test func invariantsOverEverySequence() {
        let events: [P.Event] = [
            .status(online: true, bootId: "a", session: 1), .status(online: false, bootId: "a", session: 1),
            .status(online: true, bootId: "b", session: 1), .status(online: false, bootId: "a", session: 2),
            .heartbeat(bootId: "a"), .heartbeat(bootId: "b"), .tick,
        ]
        var checked = 0
        func walk(_ presence: P, depth: Int, now: Int) {
            guard depth > 0 else { return }
            for event in events {
                for step in [1, 40_000] {
                    let (next, alerts) = presence.applying(event, now: now + step)
                    #expect((next.state == .offline) == (next.offlineReason != nil), "\(presence) + \(event)")
                    for alert in alerts {
                        switch alert.change {
                        case .open: #expect(next.state == .offline && presence.state != .offline)
                        case .resolve: #expect(next.state == .online && presence.state == .offline)
                        }
                    }
                    if next.state != presence.state { #expect(next.since == now + step) }
                    checked += 1
                    walk(next, depth: depth - 1, now: now + step)
                }
            }
        }
        walk(P(heartbeatS: 10), depth: 4, now: 0)
        #expect(checked > 10_000)
    }
}
