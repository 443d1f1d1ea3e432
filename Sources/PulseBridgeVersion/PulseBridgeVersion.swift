import Foundation

/// The one version of a PulseBridge build, shown by `--version` of every binary and reported
/// by the agent in `status`, `heartbeat` and `firmware.reported`.
///
/// The source of truth is the marker below: a fixed-width string that sits in the binary's
/// read-only data. A release is stamped by rewriting it in the built binary
/// (``VersionStamp/stamp(_:version:to:)``, `fleet-manager firmware stamp`), so the version an
/// artifact reports is the version it was published as, without a rebuild.
public enum PulseBridgeVersion {
    /// The version this binary was stamped with.
    public static var current: String { VersionStamp.read(marker.utf8Start, count: marker.utf8CodeUnitCount) ?? "unknown" }

    /// Prefix, version padded with spaces to the fixed width, and a closing `#`.
    /// Keep the width when changing the version here: `VersionStamp.width`.
    static let marker: StaticString = "@(#)PULSEBRIDGE_VERSION=0.2.0                                           #"
}

/// Reads and rewrites the version marker of a binary.
public enum VersionStamp {
    static let prefix = Array("@(#)PULSEBRIDGE_VERSION=".utf8)
    /// Bytes for the version between the prefix and the closing `#`.
    public static let width = 48

    /// Why a binary cannot be stamped.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    static func read(_ start: UnsafePointer<UInt8>, count: Int) -> String? {
        let bytes = UnsafeBufferPointer(start: start, count: count)
        guard bytes.count == prefix.count + width + 1, Array(bytes.prefix(prefix.count)) == prefix else { return nil }
        return String(decoding: bytes[prefix.count..<(prefix.count + width)], as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }

    /// The version stamped in the binary at `path`, if it has a marker.
    public static func version(ofBinaryAt path: String) -> String? {
        guard let data = FileManager.default.contents(atPath: path), let range = markerRanges(in: data).first else { return nil }
        return data[range].withUnsafeBytes { read($0.bindMemory(to: UInt8.self).baseAddress!, count: range.count) }
    }

    /// Copies the binary at `input` to `output` with every marker rewritten to `version`
    /// (1 to ``width`` characters of `A-Za-z0-9._-`), keeping its permissions.
    public static func stamp(_ input: String, version: String, to output: String) throws {
        guard (1...width).contains(version.utf8.count),
            version.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 | 0x20 >= 0x61 && $0 | 0x20 <= 0x7A) || $0 == 0x2E || $0 == 0x5F || $0 == 0x2D })
        else {
            throw Failure(description: "'\(version)' is not a version (1 to \(width) of A-Z a-z 0-9 . _ -)")
        }
        guard var data = FileManager.default.contents(atPath: input) else { throw Failure(description: "cannot read \(input)") }
        let ranges = markerRanges(in: data)
        guard !ranges.isEmpty else { throw Failure(description: "\(input) has no PulseBridge version marker (not a PulseBridge binary?)") }
        let field = Array(version.utf8) + Array(repeating: UInt8(ascii: " "), count: width - version.utf8.count)
        for range in ranges {
            data.replaceSubrange((range.lowerBound + prefix.count)..<(range.lowerBound + prefix.count + width), with: field)
        }
        let mode = ((try? FileManager.default.attributesOfItem(atPath: input)[.posixPermissions]) as? NSNumber)?.intValue ?? 0o755
        let temporary = output + ".stamp-\(getpid())"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: mode]),
            rename(temporary, output) == 0
        else {
            unlink(temporary)
            throw Failure(description: "cannot write \(output)")
        }
    }

    static func markerRanges(in data: Data) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        let length = prefix.count + width + 1
        data.withUnsafeBytes { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            var index = 0
            while index + length <= bytes.count {
                if bytes[index] == prefix[0], bytes[index + length - 1] == UInt8(ascii: "#"),
                    prefix.indices.allSatisfy({ bytes[index + $0] == prefix[$0] })
                {
                    ranges.append(index..<(index + length))
                    index += length
                } else {
                    index += 1
                }
            }
        }
        return ranges
    }
}
