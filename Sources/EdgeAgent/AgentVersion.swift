/// The version of this build of the agent, reported as `firmware` in status and heartbeats.
/// `PULSEBRIDGE_FIRMWARE_VERSION` in the environment overrides it (packaging stamps releases).
public enum AgentVersion {
    public static let built = "0.1.0"
}
