/// The version of this build of the agent, reported as `firmware` in status and heartbeats.
/// `PULSEBRIDGE_FIRMWARE_VERSION` in the environment overrides it (packaging stamps releases).
public enum AgentVersion {
    public static let built = "0.1.0"
    /// No real clock reads earlier than this build's source: 2026-11-01T00:00:00Z. A unit
    /// whose clock does (a reset RTC) has an untrusted clock (ClockGuard).
    public static let buildTimeMs = 1_793_491_200_000
}
