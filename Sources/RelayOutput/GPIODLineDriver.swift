internal import CGPIOD
import Foundation

/// Real GPIO lines through libgpiod 1.6: outputs requested as `pulsebridge` with initial value
/// inactive and `activeLow` honoured by the kernel, the inhibit line as an input.
public struct GPIODLineDriver: LineDriver {
    public static let consumer = "pulsebridge"
    public var name: String { "libgpiod" }

    public init() {}

    public func open(outputs: [OutputLine], inhibit: InhibitLine?) throws(RelayError) -> any RelayLines {
        try GPIODRelayLines(outputs: outputs, inhibit: inhibit)
    }
}

/// The chips and lines one configuration holds.
final class GPIODRelayLines: RelayLines, @unchecked Sendable {
    // @unchecked: libgpiod handles; one thread at a time drives them (RelayLines' contract),
    // and `closed` flips once, from `close()`.
    let outputs: [OutputLine]
    private let inhibitConfig: InhibitLine?
    private var chips: [String: OpaquePointer] = [:]
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

    private func chip(_ name: String) throws(RelayError) -> OpaquePointer {
        if let open = chips[name] { return open }
        // Accepts a name (gpiochip0), a path (/dev/gpiochip0), a label or a number.
        guard let opened = gpiod_chip_open_lookup(name) else {
            throw .chipUnavailable(chip: name, reason: String(cString: strerror(errno)))
        }
        chips[name] = opened
        return opened
    }

    private func requestLine(chip name: String, offset: Int, activeLow: Bool, output: Bool) throws(RelayError) -> OpaquePointer {
        let chip = try chip(name)
        guard let line = gpiod_chip_get_line(chip, UInt32(offset)) else {
            throw .lineUnavailable(chip: name, line: offset, reason: String(cString: strerror(errno)))
        }
        let flags = activeLow ? Int32(GPIOD_LINE_REQUEST_FLAG_ACTIVE_LOW) : 0
        // Logical 0 is inactive; with ACTIVE_LOW the kernel drives the pin high for it. The
        // request itself sets the initial value, so the line is never active for an instant.
        let rc = output
            ? gpiod_line_request_output_flags(line, GPIODLineDriver.consumer, flags, 0)
            : gpiod_line_request_input_flags(line, GPIODLineDriver.consumer, flags)
        guard rc == 0 else {
            throw .lineUnavailable(chip: name, line: offset, reason: String(cString: strerror(errno)))
        }
        return line
    }

    func drive(_ index: Int, active: Bool) throws(RelayError) {
        guard gpiod_line_set_value(outputLines[index], active ? 1 : 0) == 0 else {
            throw .writeFailed(chip: outputs[index].chip, line: outputs[index].line, reason: String(cString: strerror(errno)))
        }
    }

    func inhibitActive() throws(RelayError) -> Bool {
        guard let inhibitLine, let config = inhibitConfig else { return false }
        let value = gpiod_line_get_value(inhibitLine)
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
        for line in outputLines { gpiod_line_release(line) }
        if let inhibitLine { gpiod_line_release(inhibitLine) }
        outputLines = []
        inhibitLine = nil
        for chip in chips.values { gpiod_chip_close(chip) }
        chips = [:]
    }
}
