import EdgeAgent
import Testing

/// Finding 9: time checks trusted any wall clock. A clock behind what the unit has already
/// seen, or unsynchronised where synchronisation is required, is not trusted.
@Suite struct ClockGuardTests {
    @Test func aClockBehindTheFloorIsNotTrusted() {
        var guardian = ClockGuard(floor: 1_000_000, requireSynchronised: false)
        #expect(guardian.check(now: 999_999) == .behind(floor: 1_000_000))
        #expect(guardian.check(now: 1_000_000) == .trusted)
        guardian.raise(to: 2_000_000)
        guardian.raise(to: 1_500_000)  // never lowered
        #expect(guardian.floor == 2_000_000)
        #expect(guardian.check(now: 1_999_999) == .behind(floor: 2_000_000))
    }

    @Test func synchronisationIsRequiredOnlyWhenAsked() {
        var guardian = ClockGuard(floor: 0, requireSynchronised: true)
        guardian.kernelSynchronised = { false }
        #expect(guardian.check(now: 5) == .unsynchronised)
        guardian.kernelSynchronised = { true }
        #expect(guardian.check(now: 5) == .trusted)
        guardian.requireSynchronised = false
        guardian.kernelSynchronised = { false }
        #expect(guardian.check(now: 5) == .trusted)
    }

    @Test func theBuildTimeIsAFloor() {
        // A reset RTC reads 1970 or the image's date: earlier than this source was written.
        #expect(AgentVersion.buildTimeMs > 1_790_000_000_000)
        let guardian = ClockGuard(floor: AgentVersion.buildTimeMs, requireSynchronised: false)
        #expect(guardian.check(now: 0) != .trusted)
    }
}
