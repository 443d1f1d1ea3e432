import ArgumentParser
import Foundation
import Logging
import Synchronization

/// How the daemons and the CLI write their log lines on standard error.
public enum LogFormat: String, CaseIterable, Sendable {
    /// For people and journald: `LEVEL label: message key=value …`. Under systemd
    /// (`JOURNAL_STREAM` is set) each line starts with its syslog priority (`<3>`), which
    /// journald turns into the entry's priority, and has no timestamp (journald adds its own);
    /// elsewhere it starts with an ISO 8601 timestamp.
    case text
    /// One JSON object per line for machines (log shippers): `ts` (ISO 8601, UTC, ms), `level`,
    /// `label`, `msg`, `source`, and every metadata field by its own name (`machine.id`,
    /// `payment.id`, …), values as strings.
    case json
}

extension LogFormat: ExpressibleByArgument {
    /// `--log-format`'s help, the same in every executable.
    public static let help = ArgumentHelp(
        "Log line format on standard error: text (for people and journald) or json (one object per line).")

    /// Bootstraps swift-log for the process: every logger writes `format` at `level` and above
    /// to standard error. Call once, first thing.
    public static func bootstrap(_ format: LogFormat, level: Logger.Level) {
        let journald = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] != nil
        LoggingSystem.bootstrap { label in
            LineLogHandler(label: label, format: format, journald: journald, level: level, sink: .standardError)
        }
    }
}

/// Where a `LineLogHandler` writes: standard error, or (tests) a closure.
public struct LogSink: Sendable {
    let write: @Sendable (String) -> Void

    public init(_ write: @escaping @Sendable (String) -> Void) { self.write = write }

    /// One `write(2)` per line, so lines from threads never interleave.
    public static let standardError = LogSink { line in
        var line = line
        line.withUTF8 { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Foundation.write(2, bytes.baseAddress! + offset, bytes.count - offset)
                if n <= 0 { if n < 0 && errno == EINTR { continue } else { return } }
                offset += n
            }
        }
    }
}

/// A swift-log handler that writes one line per message in a `LogFormat`.
public struct LineLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    let label: String
    let format: LogFormat
    let journald: Bool
    let sink: LogSink

    public init(label: String, format: LogFormat, journald: Bool, level: Logger.Level, sink: LogSink) {
        self.label = label
        self.format = format
        self.journald = journald
        self.logLevel = level
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let provided = metadataProvider?.get() { fields.merge(provided) { _, new in new } }
        if let own = event.metadata { fields.merge(own) { _, new in new } }
        sink.write(Self.line(
            format: format, journald: journald, date: Date(), level: event.level, label: label,
            message: "\(event.message)", source: event.source, fields: fields))
    }

    /// The line for one message (with its newline).
    public static func line(
        format: LogFormat, journald: Bool, date: Date, level: Logger.Level, label: String, message: String,
        source: String, fields: Logger.Metadata
    ) -> String {
        let keys = fields.keys.sorted()
        switch format {
        case .text:
            var line = journald ? "<\(level.syslogPriority)>" : timestamp(date) + " "
            line += "\(level) \(label): \(message)"
            for key in keys { line += " \(key)=\(fields[key]!)" }
            // A message with a newline must stay one line (one journal entry, one record).
            return line.replacingOccurrences(of: "\n", with: "\\n") + "\n"
        case .json:
            var line = "{\"ts\":\"\(timestamp(date))\",\"level\":\"\(level)\",\"label\":" + jsonString(label)
                + ",\"msg\":" + jsonString(message) + ",\"source\":" + jsonString(source)
            for key in keys where !["ts", "level", "label", "msg", "source"].contains(key) {
                line += "," + jsonString(key) + ":" + jsonString("\(fields[key]!)")
            }
            return line + "}\n"
        }
    }

    /// `2026-11-30T21:45:07.123Z`.
    static func timestamp(_ date: Date) -> String {
        let since = date.timeIntervalSince1970
        var seconds = time_t(since.rounded(.down))
        let ms = min(999, Int((since - Double(seconds)) * 1000))
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let millis = ms < 10 ? "00\(ms)" : ms < 100 ? "0\(ms)" : "\(ms)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(millis)Z"
    }

    /// A JSON string literal: quotes, backslashes and control characters escaped.
    static func jsonString(_ text: String) -> String {
        var out = "\""
        out.reserveCapacity(text.utf8.count + 2)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x2028 || scalar.value == 0x2029:
                out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

extension Logger.Level {
    /// The syslog priority journald reads from a `<N>` prefix.
    var syslogPriority: Int {
        switch self {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }
}
