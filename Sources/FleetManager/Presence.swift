/// Whether a unit is online, and the rules that move it: a pure function of (presence, event,
/// now), so `serve`, the CLI and the console agree, and each rule has a test of its own.
///
/// The rules (PROTOCOL.md's status and heartbeat):
/// - `online` from the unit makes it online; a new boot or session restarts `since`.
/// - `offline` (the unit's own, or its will) counts only for the session now online: an older
///   session's will arriving late is stale and changes nothing.
/// - A heartbeat brings back a unit that went silent (never seen, timed out, or offline from an
///   earlier boot); it does not overrule an `offline` the same boot said.
/// - Time: an online unit with no heartbeat for 3 × its interval is offline ("heartbeat timeout").
/// - Going offline opens an `offline` alert; coming back resolves it.
public struct Presence: Sendable, Hashable {
    public enum State: String, Sendable, Hashable, CaseIterable {
        case online, offline, unknown
    }

    public enum OfflineReason: String, Sendable, Hashable {
        /// The unit published `offline`: it stopped, or the broker published its will.
        case status
        /// Silent for 3 × its heartbeat interval.
        case heartbeatTimeout = "heartbeat timeout"
    }

    public enum Event: Sendable, Hashable {
        case status(online: Bool, bootId: String, session: Int)
        case heartbeat(bootId: String)
        /// Time passed with nothing heard.
        case tick
    }

    /// An alert a change opens or resolves (the registry adds the machine).
    public struct Alert: Sendable, Hashable {
        public typealias Change = FleetAlert.Change
        public var change: Change = .open
        public var kind: FleetAlert.Kind
        public var detail: String
    }

    /// Silent for this many heartbeat intervals: offline.
    public static let missedHeartbeats = 3

    public var state: State = .unknown
    public var offlineReason: OfflineReason?
    public var bootId: String?
    public var session: Int?
    /// When `state` last changed (ms).
    public var since: Int?
    public var lastHeartbeatAt: Int?
    /// The unit's heartbeat interval (its desired configuration's).
    public var heartbeatS: Int = 30

    public init(
        state: State = .unknown, offlineReason: OfflineReason? = nil, bootId: String? = nil, session: Int? = nil, since: Int? = nil,
        lastHeartbeatAt: Int? = nil, heartbeatS: Int = 30
    ) {
        self.state = state
        self.offlineReason = offlineReason
        self.bootId = bootId
        self.session = session
        self.since = since
        self.lastHeartbeatAt = lastHeartbeatAt
        self.heartbeatS = heartbeatS
    }

    /// The presence after `event` at `now` (ms), and the alerts the change raises.
    public func applying(_ event: Event, now: Int) -> (Presence, [Alert]) {
        var next = self
        switch event {
        case .status(online: true, let boot, let session):
            let changed = state != .online || bootId != boot || self.session != session
            next.state = .online
            next.offlineReason = nil
            next.bootId = boot
            next.session = session
            next.lastHeartbeatAt = now
            if changed { next.since = now }
            return (next, backOnline())
        case .status(online: false, let boot, let session):
            let thisSession = state != .online || (bootId == boot && self.session == session)
            guard thisSession, state != .offline else { return (self, []) }
            next.state = .offline
            next.offlineReason = .status
            next.bootId = boot
            next.session = session
            next.since = now
            return (next, [Alert(kind: .offline, detail: "published offline (stopped or lost: its will)")])
        case .heartbeat(let boot):
            next.lastHeartbeatAt = now
            let silent = state == .unknown || offlineReason == .heartbeatTimeout || (state == .offline && bootId != boot)
            if silent {
                next.state = .online
                next.offlineReason = nil
                next.bootId = boot
                next.since = now
            }
            return (next, silent ? backOnline() : [])
        case .tick:
            guard state == .online, let last = lastHeartbeatAt, isSilent(lastHeartbeatAt: last, now: now) else { return (self, []) }
            next.state = .offline
            next.offlineReason = .heartbeatTimeout
            next.since = now
            return (next, [Alert(kind: .offline, detail: "no heartbeat for \(Self.missedHeartbeats) × its interval")])
        }
    }

    /// Coming online resolves the offline alert an offline unit has.
    private func backOnline() -> [Alert] {
        state == .offline ? [Alert(change: .resolve, kind: .offline, detail: "back online")] : []
    }

    func isSilent(lastHeartbeatAt last: Int, now: Int) -> Bool {
        last < now - Self.missedHeartbeats * heartbeatS * 1000
    }
}
