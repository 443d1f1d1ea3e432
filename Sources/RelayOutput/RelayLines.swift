
/// Why a relay line could not be opened, driven or read. Each case names the chip and line.
public enum RelayError: Error, Sendable, Hashable, CustomStringConvertible {
    case chipUnavailable(chip: String, reason: String)
    case lineUnavailable(chip: String, line: Int, reason: String)
    case writeFailed(chip: String, line: Int, reason: String)
    case readFailed(chip: String, line: Int, reason: String)

    public var description: String {
        switch self {
        case .chipUnavailable(let chip, let reason): "cannot open GPIO chip '\(chip)': \(reason)"
        case .lineUnavailable(let chip, let line, let reason): "cannot request line \(line) of GPIO chip '\(chip)': \(reason)"
        case .writeFailed(let chip, let line, let reason): "cannot drive line \(line) of GPIO chip '\(chip)': \(reason)"
        case .readFailed(let chip, let line, let reason): "cannot read line \(line) of GPIO chip '\(chip)': \(reason)"
        }
    }
}

/// An opened set of relay outputs and the optional inhibit input. Values are logical:
/// `active` means the relay contact is closed whatever the line's polarity.
///
/// Only one thread drives the lines at a time (the pulse engine during a train, the agent
/// between trains); implementations need not lock.
public protocol RelayLines: AnyObject, Sendable {
    /// The outputs, in configuration order; `drive` takes an index into it.
    var outputs: [OutputLine] { get }
    /// Drives output `index` active (contact closed) or inactive.
    func drive(_ index: Int, active: Bool) throws(RelayError)
    /// Whether the machine's inhibit input is active; false when there is none.
    func inhibitActive() throws(RelayError) -> Bool
    /// Drives every output inactive and releases the lines. Idempotent.
    func close()
    /// The engine is about to start a train (on its timing thread).
    func trainWillStart()
}

extension RelayLines {
    public func trainWillStart() {}

    /// Drives every output inactive; tries them all and reports the first failure.
    public func driveAllInactive() throws(RelayError) {
        var firstError: RelayError?
        for index in outputs.indices {
            do { try drive(index, active: false) } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
    }
}

/// Opens relay lines: libgpiod on a unit, or the simulated driver.
public protocol LineDriver: Sendable {
    /// Opens the outputs and drives each inactive before anything else; opens the inhibit
    /// input. A missing chip or line is an error that names it.
    func open(outputs: [OutputLine], inhibit: InhibitLine?) throws(RelayError) -> any RelayLines
    /// What the driver is, for logs (`libgpiod`, `simulated (edge log …)`).
    var name: String { get }
}
