internal import CQREncode
import Foundation
import MessageSchema

/// A machine's payment code: a QR symbol of the operator's payment URL for that machine,
/// made with libqrencode.
public struct PaymentCode: Sendable {
    public let url: String
    /// Modules, row by row; true is dark.
    public let modules: [[Bool]]

    /// Encodes `url` (error correction M: survives a scuffed sticker on a machine).
    public init(url: String) throws {
        guard let symbol = QRcode_encodeString(url, 0, QR_ECLEVEL_M, QR_MODE_8, 1) else {
            throw FleetError("cannot encode '\(url)' as a QR code: \(String(cString: strerror(errno)))")
        }
        defer { QRcode_free(symbol) }
        let width = Int(symbol.pointee.width)
        let data = symbol.pointee.data!
        modules = (0..<width).map { y in (0..<width).map { x in data[y * width + x] & 1 == 1 } }
        self.url = url
    }

    /// The code for `machine` from a template such as `https://pay.example.com/m/{machineId}`.
    public init(machine: MachineID, template: String) throws {
        try self.init(url: template.replacingOccurrences(of: "{machineId}", with: machine.rawValue))
    }

    /// An SVG for printing: one path, 4-module quiet zone, `moduleSize` user units per module.
    public func svg(moduleSize: Int = 10, caption: String? = nil) -> String {
        let quiet = 4
        let size = (modules.count + 2 * quiet) * moduleSize
        let captionHeight = caption == nil ? 0 : moduleSize * 4
        var path = ""
        for (y, row) in modules.enumerated() {
            var x = 0
            while x < row.count {
                guard row[x] else { x += 1; continue }
                var run = 1
                while x + run < row.count && row[x + run] { run += 1 }
                path += "M\((x + quiet) * moduleSize),\((y + quiet) * moduleSize)h\(run * moduleSize)v\(moduleSize)h-\(run * moduleSize)z"
                x += run
            }
        }
        var svg = """
            <?xml version="1.0" encoding="UTF-8"?>
            <svg xmlns="http://www.w3.org/2000/svg" width="\(size)" height="\(size + captionHeight)" viewBox="0 0 \(size) \(size + captionHeight)">
            <rect width="100%" height="100%" fill="#ffffff"/>
            <path fill="#000000" d="\(path)"/>

            """
        if let caption {
            let escaped = caption.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            svg += "<text x=\"\(size / 2)\" y=\"\(size + captionHeight / 2)\" font-family=\"sans-serif\" font-size=\"\(moduleSize * 2)\" text-anchor=\"middle\">\(escaped)</text>\n"
        }
        return svg + "</svg>\n"
    }

    /// For a terminal: two modules per character cell with half blocks, dark on light.
    public func text() -> String {
        let quiet = 2
        let width = modules.count + 2 * quiet
        func dark(_ x: Int, _ y: Int) -> Bool {
            let (mx, my) = (x - quiet, y - quiet)
            guard my >= 0, my < modules.count, mx >= 0, mx < modules.count else { return false }
            return modules[my][mx]
        }
        var lines: [String] = []
        for y in stride(from: 0, to: width, by: 2) {
            var line = ""
            for x in 0..<width {
                // Light is drawn, dark is left blank: reads on dark terminals.
                switch (dark(x, y), dark(x, y + 1)) {
                case (false, false): line += "█"
                case (true, false): line += "▄"
                case (false, true): line += "▀"
                case (true, true): line += " "
                }
            }
            lines.append(line)
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
