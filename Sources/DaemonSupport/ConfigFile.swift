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
    /// Whether `--config` names a file of these settings. A command whose `--config` is a
    /// document of its own (the payment server's) takes only the environment here, and
    /// `--config` is one of its settings.
    public let settingsFile: Bool

    /// Options that are not settings: how the settings are found, and the one-shot ones.
    static let notSettings: Set<String> = ["help", "version", "experimental-dump-help", "generate-completion-script"]

    /// Settings of sibling commands that read the same file (`edge-agent supervise` and the
    /// `run` it starts): skipped, not refused.
    public let siblingSettings: Set<String>

    /// - Parameters:
    ///   - siblings: commands that read the same file and environment; their settings are
    ///     skipped here.
    ///   - settingsFile: `false` when `--config` is not a file of these settings.
    public init(
        command: any ParsableCommand.Type, commandName: String, environmentPrefix: String, defaultFile: String? = nil,
        siblings: [any ParsableCommand.Type] = [], settingsFile: Bool = true
    ) {
        var (options, flags) = Self.longNames(of: command)
        if settingsFile { options.remove("config") }
        self.settingsFile = settingsFile
        self.options = options
        self.flags = flags
        self.commandName = commandName
        self.environmentPrefix = environmentPrefix
        self.defaultFile = defaultFile
        self.siblingSettings = siblings.reduce(into: Set<String>()) { all, sibling in
            let (o, f) = Self.longNames(of: sibling)
            all.formUnion(o.union(f))
        }.subtracting(options.union(flags)).subtracting(["config"])
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
        if settingsFile, let path = Self.configPath(in: arguments) ?? defaultFile.flatMap({ FileManager.default.fileExists(atPath: $0) ? $0 : nil }) {
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
        case .array, .table: throw SettingsError("\(source): '\(rawKey)' takes one value, not \(value.kind)")
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
    public static func read(_ path: String) throws(SettingsError) -> String {
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

    public typealias Entry = TOMLEntry

    /// `key = value` lines (TOMLDocument's flat form). A key given twice is refused, as TOML
    /// does, and so is the same key spelt with `_` for `-`: both name one option.
    public static func parse(_ text: String, path: String) throws(SettingsError) -> [Entry] {
        let entries = try TOMLDocument.parse(text, path: path, flat: true).entries
        var seen: [String: Int] = [:]
        for entry in entries {
            let normalized = entry.key.replacingOccurrences(of: "_", with: "-")
            if let first = seen[normalized] {
                throw SettingsError("\(path) line \(entry.line): '\(entry.key)' is set again (first on line \(first))")
            }
            seen[normalized] = entry.line
        }
        return entries
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
    ///
    /// With `defaultSubcommand`, a command line that names no subcommand (`payment-server
    /// --config x`) has that one's settings; the top level's `--help` and `--version` are left
    /// alone.
    public static func mainWithSettings(_ settings: [String: @Sendable () -> LayeredSettings], defaultSubcommand: String? = nil) async {
        var arguments = Array(CommandLine.arguments.dropFirst())
        var failure: String?
        if let name = defaultSubcommand, arguments.first.map({ $0.hasPrefix("-") }) ?? true,
            !arguments.contains(where: { ["-h", "--help", "--version"].contains($0) || $0.hasPrefix("--experimental-dump-help") || $0.hasPrefix("--generate-completion-script") })
        {
            arguments.insert(name, at: 0)
        }
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
        // A usage error (an unknown option, a value not among an enum's): ArgumentParser's own
        // exit keeps its message alive at exit(), which LeakSanitizer builds report as a leak
        // (and exit 23, not 64). Parsed here, the message is printed and released first.
        var usage: (text: String, code: Int32)?
        var parsed: (any ParsableCommand)?
        do {
            parsed = try parseAsRoot(arguments)
        } catch {
            usage = (fullMessage(for: error), exitCode(for: error).rawValue)
        }
        if let message = usage {
            if !message.text.isEmpty {
                (message.code == 0 ? FileHandle.standardOutput : FileHandle.standardError).write(Data((message.text + "\n").utf8))
            }
            let code = message.code
            usage = nil
            arguments = []
            Foundation.exit(code)
        }
        guard var command = parsed else { return }
        parsed = nil
        do {
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}
