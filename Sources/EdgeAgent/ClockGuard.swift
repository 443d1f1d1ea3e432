import Foundation

/// Whether the agent's wall clock can be trusted to tell that a payment has not expired.
///
/// A unit that boots with its clock behind (a flat RTC battery, no network time yet) would
/// otherwise credit completions that expired while it was offline. Two checks:
/// - the clock must not be behind a floor the unit has seen: its own latest decision (less a
///   minute of tolerance) and the `issuedAt` of the applied configuration, signed by the fleet;
/// - where the operator asks for it (`--require-clock-sync`), the kernel must say the clock
///   is synchronised (NTP's `adjtimex` state is not `TIME_ERROR`).
/// An untrusted clock refuses payments as `expired` and says `clock_untrusted` in status and
/// heartbeats.
public struct ClockGuard: Sendable {
    public enum Verdict: Sendable, Equatable {
        case trusted
        /// The clock reads earlier than `floor`.
        case behind(floor: Int)
        /// The kernel says the clock is not synchronised.
        case unsynchronised
    }

    /// How far behind its own last decision a clock may be (NTP steps, leap smearing).
    public static let toleranceMs = 60_000

    public private(set) var floor: Int
    public var requireSynchronised: Bool
    /// Whether the kernel considers the clock synchronised (replaceable for tests).
    public var kernelSynchronised: @Sendable () -> Bool = ClockGuard.kernelSaysSynchronised

    public init(floor: Int, requireSynchronised: Bool) {
        self.floor = floor
        self.requireSynchronised = requireSynchronised
    }

    /// Raises the floor to `time` (never lowers it).
    public mutating func raise(to time: Int) {
        floor = max(floor, time)
    }

    public func check(now: Int) -> Verdict {
        if now < floor { return .behind(floor: floor) }
        if requireSynchronised, !kernelSynchronised() { return .unsynchronised }
        return .trusted
    }

    /// `adjtimex(2)` with no changes (`modes` = 0): `TIME_ERROR` (5) means the clock is not
    /// synchronised. Glibc's module map leaves `<sys/timex.h>` out, so the C function is
    /// looked up by name; `struct timex` is about 208 bytes, the zeroed buffer is larger.
    @Sendable public static func kernelSaysSynchronised() -> Bool {
        typealias AdjTimex = @convention(c) (UnsafeMutableRawPointer) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "adjtimex") else { return false }
        let adjtimex = unsafeBitCast(symbol, to: AdjTimex.self)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 1024, alignment: 16)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: 1024)
        let timeError: Int32 = 5
        let state = adjtimex(buffer)
        return state >= 0 && state != timeError
    }
}
