import ArgumentParser
import Foundation

/// A daemon's settings from a config file and the environment, beneath its command line.
///
/// Every setting is one of the command's own long options, by the same name: the file's
/// `state-dir = "/var/lib/pulsebridge"` and `PULSEBRIDGE_AGENT_STATE_DIR=/var/lib/pulsebridge`
/// both mean `--state-dir /var/lib/pulsebridge`. They are turned into those options and put in
/// front of the real arguments, where the argument parser takes the last value of an option:
/// the command line wins over the environment, which wins over the file. So `--help` and the
/// man page document every setting, validation is the command's own, and nothing can be set
/// in a file that cannot be set on the command line.
///
/// The file is TOML's flat part: `key = value` lines with a basic string (`"…"`, with `\"`,
/// `\\`, `\n`, `\t` escapes), a literal string (`'…'`), an integer or `true`/`false`; `#`
/// comments; blank lines. A key may use `-` or `_`. Tables, arrays, dotted keys and
/// multi-line strings are refused with their line number. `false` leaves a flag off.
public struct LayeredSettings: Sendable {
    /// The command's long options (value) and flags (no value), from its own description.
    public let options: Set<String>
    public let flags: Set<String>
    /// The command as the user names it (`edge-agent run`), for messages.
    public let commandName: String
    /// `PULSEBRIDGE_AGENT_`: environment variables with this prefix are settings.
    public let environmentPrefix: String
    /// The file read when `--config` is not given, if it exists.
    public let defaultFile: String?

    /// Options that are not settings: how the settings are found, and the one-shot ones.
    static let notSettings: Set<String> = ["config", "help", "version", "experimental-dump-help", "generate-completion-script"]

    /// Settings of sibling commands that read the same file (`edge-agent supervise` and the
    /// `run` it starts): skipped, not refused.
    public let siblingSettings: Set<String>

    /// - Parameters:
    ///   - siblings: commands that read the same file and environment; their settings are
    ///     skipped here.
    public init(
        command: any ParsableCommand.Type, commandName: String, environmentPrefix: String, defaultFile: String? = nil,
        siblings: [any ParsableCommand.Type] = []
    ) {
        let (options, flags) = Self.longNames(of: command)
        self.options = options
        self.flags = flags
        self.commandName = commandName
        self.environmentPrefix = environmentPrefix
        self.defaultFile = defaultFile
        self.siblingSettings = siblings.reduce(into: Set<String>()) { all, sibling in
            let (o, f) = Self.longNames(of: sibling)
            all.formUnion(o.union(f))
        }.subtracting(options.union(flags))
    }

    static func longNames(of command: any ParsableCommand.Type) -> (options: Set<String>, flags: Set<String>) {
        var options = Set<String>()
        var flags = Set<String>()
        if let data = command._dumpHelp().data(using: .utf8),
            let dumped = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
            let info = dumped["command"] as? [String: Any],
            let arguments = info["arguments"] as? [[String: Any]]
        {
            for argument in arguments {
                let names = (argument["names"] as? [[String: Any]] ?? []).filter { $0["kind"] as? String == "long" }
                for case let name? in names.map({ $0["name"] as? String }) where !Self.notSettings.contains(name) {
                    switch argument["kind"] as? String {
                    case "option": options.insert(name)
                    case "flag": flags.insert(name)
                    default: break
                    }
                }
            }
        }
        return (options, flags)
    }

    /// `arguments` (the command's, after its name) with the file's and the environment's
    /// settings in front of them.
    public func arguments(
        _ arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(SettingsError) -> [String] {
        var fromFile: [String] = []
        if let path = Self.configPath(in: arguments) ?? defaultFile.flatMap({ FileManager.default.fileExists(atPath: $0) ? $0 : nil }) {
            let text = try Self.read(path)
            for entry in try Self.parse(text, path: path) {
                fromFile += try self.arguments(for: entry.key, value: entry.value, source: "\(path) line \(entry.line)")
            }
        }
        var fromEnvironment: [String] = []
        for (name, value) in environment.sorted(by: { $0.key < $1.key }) where name.hasPrefix(environmentPrefix) {
            let key = name.dropFirst(environmentPrefix.count).lowercased().replacingOccurrences(of: "_", with: "-")
            let parsed: TOMLValue = flags.contains(key) ? .boolean(try Self.environmentBoolean(value, name: name)) : .string(value)
            fromEnvironment += try self.arguments(for: key, value: parsed, source: "the environment variable \(name)")
        }
        return fromFile + fromEnvironment + arguments
    }

    /// The long options one setting stands for.
    func arguments(for rawKey: String, value: TOMLValue, source: String) throws(SettingsError) -> [String] {
        let key = rawKey.replacingOccurrences(of: "_", with: "-")
        if siblingSettings.contains(key) { return [] }
        if flags.contains(key) {
            guard case .boolean(let on) = value else {
                throw SettingsError("\(source): '\(rawKey)' is an on/off setting; give it true or false")
            }
            return on ? ["--\(key)"] : []
        }
        guard options.contains(key) else {
            let known = (options.union(flags)).sorted().joined(separator: ", ")
            throw SettingsError(
                "\(source): '\(rawKey)' is not a setting of \(commandName)",
                hint: "the settings are its long options (\(commandName) --help): \(known)")
        }
        switch value {
        case .string(let text): return ["--\(key)", text]
        case .integer(let number): return ["--\(key)", String(number)]
        case .boolean: throw SettingsError("\(source): '\(rawKey)' takes a value, not true or false")
        }
    }

    /// The value of `--config FILE` or `--config=FILE` on the command line.
    static func configPath(in arguments: [String]) -> String? {
        var path: String?
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let argument = arguments[index]
            if argument == "--" { break }
            if argument == "--config", index + 1 < arguments.endIndex {
                path = arguments[index + 1]
                index += 1
            } else if argument.hasPrefix("--config=") {
                path = String(argument.dropFirst("--config=".count))
            }
            index += 1
        }
        return path
    }

    static func environmentBoolean(_ value: String, name: String) throws(SettingsError) -> Bool {
        switch value.lowercased() {
        case "1", "true", "yes", "on": return true
        case "", "0", "false", "no", "off": return false
        default: throw SettingsError("the environment variable \(name)='\(value)' is an on/off setting; give it true or false")
        }
    }

    /// The file's text; the system's reason when it cannot be read. Settings files are small:
    /// more than 1 MiB is refused.
    static func read(_ path: String) throws(SettingsError) -> String {
        func failure(_ reason: String) -> SettingsError {
            SettingsError("cannot read the config file \(path): \(reason)", hint: "check the path given with --config and that this user may read it")
        }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw failure(String(cString: strerror(errno))) }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw failure(String(cString: strerror(errno)))
            }
            if n == 0 { break }
            bytes += buffer[0..<n]
            if bytes.count > 1 << 20 { throw failure("larger than 1 MiB; a settings file is a few lines") }
        }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw failure("not UTF-8 text") }
        return text
    }

    // MARK: The flat part of TOML

    public enum TOMLValue: Sendable, Equatable {
        case string(String)
        case integer(Int)
        case boolean(Bool)
    }

    public struct Entry: Sendable, Equatable {
        public var key: String
        public var value: TOMLValue
        public var line: Int
    }

    /// `key = value` lines. A key given twice is refused (as TOML does).
    public static func parse(_ text: String, path: String) throws(SettingsError) -> [Entry] {
        var entries: [Entry] = []
        var seen: [String: Int] = [:]
        for (offset, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let number = offset + 1
            let where_ = "\(path) line \(number)"
            var line = Substring(rawLine.hasSuffix("\r") ? rawLine.dropLast() : rawLine)
            line = line.drop { $0 == " " || $0 == "\t" }
            if line.isEmpty || line.first == "#" { continue }
            if line.first == "[" {
                throw SettingsError("\(where_): tables ([…]) are not settings here", hint: "write each setting as key = value at the top level")
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw SettingsError("\(where_): expected key = value")
            }
            let key = line[..<equals].trimmingCharacters(in: .whitespaces)
            guard !key.isEmpty, key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }) else {
                throw SettingsError("\(where_): '\(key)' is not a plain key (letters, digits, - and _; no dots or quotes)")
            }
            let normalized = key.replacingOccurrences(of: "_", with: "-")
            if let first = seen[normalized] {
                throw SettingsError("\(where_): '\(key)' is set again (first on line \(first))")
            }
            seen[normalized] = number
            var rest = line[line.index(after: equals)...].drop { $0 == " " || $0 == "\t" }
            let value = try parseValue(&rest, at: where_)
            rest = rest.drop { $0 == " " || $0 == "\t" }
            guard rest.isEmpty || rest.first == "#" else {
                throw SettingsError("\(where_): unexpected '\(rest)' after the value")
            }
            entries.append(Entry(key: key, value: value, line: number))
        }
        return entries
    }

    static func parseValue(_ text: inout Substring, at where_: String) throws(SettingsError) -> TOMLValue {
        guard let first = text.first else { throw SettingsError("\(where_): the value is missing") }
        switch first {
        case "\"":
            if text.hasPrefix("\"\"\"") { throw SettingsError("\(where_): multi-line strings are not supported; use one line") }
            var out = ""
            var index = text.index(after: text.startIndex)
            while index < text.endIndex {
                let c = text[index]
                if c == "\"" {
                    text = text[text.index(after: index)...]
                    return .string(out)
                }
                if c == "\\" {
                    let next = text.index(after: index)
                    guard next < text.endIndex else { break }
                    switch text[next] {
                    case "\"": out.append("\"")
                    case "\\": out.append("\\")
                    case "n": out.append("\n")
                    case "t": out.append("\t")
                    default: throw SettingsError("\(where_): unknown escape \\\(text[next]) in a string")
                    }
                    index = text.index(after: next)
                    continue
                }
                out.append(c)
                index = text.index(after: index)
            }
            throw SettingsError("\(where_): the string is not closed with \"")
        case "'":
            if text.hasPrefix("'''") { throw SettingsError("\(where_): multi-line strings are not supported; use one line") }
            let body = text.dropFirst()
            guard let close = body.firstIndex(of: "'") else { throw SettingsError("\(where_): the string is not closed with '") }
            text = body[body.index(after: close)...]
            return .string(String(body[..<close]))
        case "[", "{":
            throw SettingsError("\(where_): arrays and inline tables are not settings here")
        default:
            let token = text.prefix { !($0 == " " || $0 == "\t" || $0 == "#") }
            text = text[token.endIndex...]
            if token == "true" { return .boolean(true) }
            if token == "false" { return .boolean(false) }
            if let number = Int(token.replacingOccurrences(of: "_", with: "")), !token.hasPrefix("_"), !token.hasSuffix("_") {
                return .integer(number)
            }
            throw SettingsError("\(where_): '\(token)' is not a value; quote text (\"…\"), or give a number, true or false")
        }
    }
}

/// A settings problem: what is wrong, where, and what to do.
public struct SettingsError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public let hint: String?

    public init(_ message: String, hint: String? = nil) {
        self.message = message
        self.hint = hint
    }

    public var description: String { hint.map { "\(message); \($0)" } ?? message }
}

extension AsyncParsableCommand {
    /// `main` with the config file and environment beneath the command line, for the
    /// subcommand (by name) that has settings; a settings error is one line and exit code 2.
    /// (Made only for the subcommand that runs: it reads the command's own description.)
    public static func mainWithSettings(_ settings: [String: @Sendable () -> LayeredSettings]) async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        var failure: String?
        if let name = arguments.first, let layered = settings[name]?() {
            do {
                arguments = [name] + (try layered.arguments(Array(arguments.dropFirst())))
            } catch {
                failure = "\(layered.commandName): \(error)\n"
            }
        }
        if let line = failure {
            FileHandle.standardError.write(Data(line.utf8))
            // Nothing is held at exit (the error is gone with its scope, the line released):
            // LeakSanitizer builds would otherwise report the message as leaked.
            failure = nil
            arguments = []
            Foundation.exit(2)
        }
        await main(arguments)
    }
}
