internal import CGPIOLines
import Foundation

/// Real GPIO lines through libgpiod, 1.x or 2.x (whichever the build found; `apiGeneration`):
/// outputs requested as `pulsebridge` with initial value inactive and `activeLow` honoured by
/// the kernel, the inhibit line as an input.
public struct GPIODLineDriver: LineDriver {
    public static let consumer = "pulsebridge"
    public var name: String { "libgpiod \(Self.apiGeneration).x" }

    /// "1" or "2": the libgpiod API this binary was built against.
    public static var apiGeneration: String { String(cString: pb_gpio_api_generation()) }

    public init() {}

    public func open(outputs: [OutputLine], inhibit: InhibitLine?) throws(RelayError) -> any RelayLines {
        try GPIODRelayLines(outputs: outputs, inhibit: inhibit)
    }
}

/// The lines one configuration holds.
final class GPIODRelayLines: RelayLines, @unchecked Sendable {
    // @unchecked: libgpiod handles; one thread at a time drives them (RelayLines' contract),
    // and `closed` flips once, from `close()`.
    let outputs: [OutputLine]
    private let inhibitConfig: InhibitLine?
    private var outputLines: [OpaquePointer] = []
    private var inhibitLine: OpaquePointer?
    private var closed = false

    init(outputs: [OutputLine], inhibit: InhibitLine?) throws(RelayError) {
        self.outputs = outputs
        self.inhibitConfig = inhibit
        do {
            for output in outputs {
                let line = try requestLine(chip: output.chip, offset: output.line, activeLow: output.activeLow, output: true)
                outputLines.append(line)
            }
            if let inhibit {
                inhibitLine = try requestLine(chip: inhibit.chip, offset: inhibit.line, activeLow: inhibit.activeLow, output: false)
            }
        } catch {
            release()
            throw error
        }
    }

    deinit { close() }

    private func requestLine(chip name: String, offset: Int, activeLow: Bool, output: Bool) throws(RelayError) -> OpaquePointer {
        var stage = PB_GPIO_OK
        // Logical 0 is inactive; with active-low the kernel drives the pin high for it. The
        // request itself sets the initial value, so the line is never active for an instant.
        guard let line = pb_gpio_request(name, UInt32(offset), activeLow ? 1 : 0, output ? 1 : 0, GPIODLineDriver.consumer, &stage) else {
            let reason = String(cString: strerror(errno))
            if stage == PB_GPIO_CHIP { throw .chipUnavailable(chip: name, reason: reason) }
            throw .lineUnavailable(chip: name, line: offset, reason: reason)
        }
        return line
    }

    func drive(_ index: Int, active: Bool) throws(RelayError) {
        guard pb_gpio_set(outputLines[index], active ? 1 : 0) == 0 else {
            throw .writeFailed(chip: outputs[index].chip, line: outputs[index].line, reason: String(cString: strerror(errno)))
        }
    }

    func inhibitActive() throws(RelayError) -> Bool {
        guard let inhibitLine, let config = inhibitConfig else { return false }
        let value = pb_gpio_get(inhibitLine)
        guard value >= 0 else {
            throw .readFailed(chip: config.chip, line: config.line, reason: String(cString: strerror(errno)))
        }
        return value == 1
    }

    func close() {
        guard !closed else { return }
        closed = true
        // Only the lines actually requested (a failed open gets here from deinit).
        for index in outputLines.indices { try? drive(index, active: false) }
        release()
    }

    private func release() {
        for line in outputLines { pb_gpio_release(line) }
        if let inhibitLine { pb_gpio_release(inhibitLine) }
        outputLines = []
        inhibitLine = nil
    }
}
