import PulseBridgeVersion

/// The version this agent reports (`firmware` in status, heartbeats and firmware reports): the
/// build's stamped version (`PulseBridgeVersion`).
public enum AgentVersion {
    public static var built: String { PulseBridgeVersion.current }
    /// No real clock reads earlier than this build's source: 2026-11-01T00:00:00Z. A unit
    /// whose clock does (a reset RTC) has an untrusted clock (ClockGuard).
    public static let buildTimeMs = 1_793_491_200_000
}
