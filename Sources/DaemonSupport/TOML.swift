/// The part of TOML 1.0 PulseBridge's config files use, read with the line of every problem.
///
/// Read: comments; bare (`a-b_c`), quoted (`"a b"`, `'a'`) and dotted (`a.b`) keys; `[table]`
/// and `[[array of tables]]` headers; basic strings (escapes `\" \\ \n \t \r \b \f \uXXXX
/// \UXXXXXXXX`) and literal strings on one line; whole numbers (`1_000`, a sign); `true`,
/// `false`; arrays (over several lines, with comments and a trailing comma); inline tables.
/// Refused with their line: multi-line strings, floats, dates, a key or table defined twice.
public indirect enum TOMLValue: Sendable, Equatable {
    case string(String)
    case integer(Int)
    case boolean(Bool)
    case array([TOMLValue])
    case table(TOMLTable)

    /// What it is, for messages ("a table", "a string").
    public var kind: String {
        switch self {
        case .string: "a string"
        case .integer: "a whole number"
        case .boolean: "true or false"
        case .array: "an array"
        case .table: "a table"
        }
    }

    /// The value as `JSONSerialization` objects, each key passed through `key` (so a file in
    /// TOML's `kebab-case` can be decoded by a `Codable` type's `camelCase` keys).
    public func foundationObject(key: (String) -> String = { $0 }) -> Any {
        switch self {
        case .string(let text): return text
        case .integer(let number): return number
        case .boolean(let on): return on
        case .array(let values): return values.map { $0.foundationObject(key: key) }
        case .table(let table):
            var object: [String: Any] = [:]
            for entry in table.entries { object[key(entry.key)] = entry.value.foundationObject(key: key) }
            return object
        }
    }
}

/// One `key = value` of a table, or one table a header began, in the file's order.
public struct TOMLEntry: Sendable, Equatable {
    public var key: String
    public var value: TOMLValue
    /// Where it was set (for a table: its header, or the first key that made it).
    public var line: Int

    public init(key: String, value: TOMLValue, line: Int) {
        self.key = key
        self.value = value
        self.line = line
    }
}

public struct TOMLTable: Sendable, Equatable {
    public var entries: [TOMLEntry]

    public init(entries: [TOMLEntry] = []) { self.entries = entries }

    public subscript(key: String) -> TOMLValue? { entries.first { $0.key == key }?.value }
}

public enum TOMLDocument {
    /// The document's root table. With `flat`, only top-level `key = value` lines of strings,
    /// whole numbers and booleans are allowed (a daemon's settings file): anything else is
    /// refused with its line.
    public static func parse(_ text: String, path: String, flat: Bool = false) throws(SettingsError) -> TOMLTable {
        var parser = TOMLParser(text: text, path: path, flat: flat)
        try parser.document()
        return parser.root.value
    }

    /// `payment-ttl-s` and `payment_ttl_s` → `paymentTtlS`; a key without `-` or `_` is kept.
    public static func camelCase(_ key: String) -> String {
        let parts = key.split(whereSeparator: { $0 == "-" || $0 == "_" })
        guard parts.count > 1 else { return key }
        return String(parts[0]) + parts.dropFirst().map { $0.prefix(1).uppercased() + $0.dropFirst() }.joined()
    }

    /// `paymentTtlS` → `payment-ttl-s`: a `camelCase` key as a TOML file spells it.
    public static func kebabCase(_ key: String) -> String {
        var out = ""
        for character in key {
            if character.isUppercase {
                out += "-" + character.lowercased()
            } else {
                out.append(character)
            }
        }
        return out
    }
}

// MARK: - The parser

/// Tables while they are built: headers and dotted keys reach into them after they are made.
private final class TableNode {
    enum Slot {
        case value(TOMLValue)
        case table(TableNode)
        case tables(ArrayNode)
    }
    var order: [String] = []
    var slots: [String: (slot: Slot, line: Int)] = [:]
    /// Begun by its own `[header]` (a second one is refused).
    var headed = false
    /// Made by a dotted key (`a.b = 1` makes `a`): a header may not open it again.
    var dotted = false
    /// `{ … }`: complete as written.
    var inline = false

    func set(_ key: String, _ slot: Slot, line: Int) {
        if slots[key] == nil { order.append(key) }
        slots[key] = (slot, line)
    }

    var value: TOMLTable {
        TOMLTable(
            entries: order.map { key in
                let (slot, line) = slots[key]!
                switch slot {
                case .value(let value): return TOMLEntry(key: key, value: value, line: line)
                case .table(let table): return TOMLEntry(key: key, value: .table(table.value), line: line)
                case .tables(let array): return TOMLEntry(key: key, value: .array(array.tables.map { .table($0.value) }), line: line)
                }
            })
    }
}

private final class ArrayNode {
    var tables: [TableNode] = []
}

private struct TOMLParser {
    let text: [Unicode.Scalar]
    let path: String
    let flat: Bool
    var index = 0
    var line = 1
    let root = TableNode()

    init(text: String, path: String, flat: Bool) {
        self.text = Array(text.unicodeScalars)
        self.path = path
        self.flat = flat
    }

    func failure(_ message: String, hint: String? = nil, at line: Int? = nil) -> SettingsError {
        SettingsError("\(path) line \(line ?? self.line): \(message)", hint: hint)
    }

    var current: Unicode.Scalar? { index < text.count ? text[index] : nil }

    func peek(_ offset: Int) -> Unicode.Scalar? { index + offset < text.count ? text[index + offset] : nil }

    func looking(at literal: String) -> Bool {
        var offset = 0
        for scalar in literal.unicodeScalars {
            guard peek(offset) == scalar else { return false }
            offset += 1
        }
        return true
    }

    mutating func advance() {
        if current == "\n" { line += 1 }
        index += 1
    }

    mutating func skipSpaces() {
        while current == " " || current == "\t" { advance() }
    }

    mutating func skipComment() {
        if current == "#" { while let c = current, c != "\n" { advance() } }
    }

    /// Spaces, comments and line ends (inside an array).
    mutating func skipBlank() {
        while true {
            skipSpaces()
            skipComment()
            if current == "\n" || (current == "\r" && peek(1) == "\n") {
                advance()
                continue
            }
            return
        }
    }

    /// The end of a line: nothing but spaces and a comment may follow what it holds.
    mutating func endOfLine(after what: String) throws(SettingsError) {
        skipSpaces()
        skipComment()
        if current == "\r" && peek(1) == "\n" { advance() }
        guard current == nil || current == "\n" else {
            var rest = ""
            while let c = current, c != "\n", c != "\r" {
                rest.unicodeScalars.append(c)
                advance()
            }
            throw failure("unexpected '\(rest.trimmingTrailingSpaces)' after the \(what)")
        }
        if current == "\n" { advance() }
    }

    mutating func document() throws(SettingsError) {
        var table = root
        while true {
            skipSpaces()
            skipComment()
            guard let c = current else { return }
            if c == "\n" || (c == "\r" && peek(1) == "\n") {
                if c == "\r" { advance() }
                advance()
                continue
            }
            if c == "[" {
                if flat {
                    throw failure("tables ([…]) are not settings here", hint: "write each setting as key = value at the top level")
                }
                table = try header()
                continue
            }
            try keyValue(into: table)
            try endOfLine(after: "value")
        }
    }

    /// `[a.b]` or `[[a.b]]`: the table the lines after it fill.
    mutating func header() throws(SettingsError) -> TableNode {
        let headerLine = line
        let array = looking(at: "[[")
        advance()
        if array { advance() }
        skipSpaces()
        let keys = try key()
        skipSpaces()
        guard current == "]", !array || peek(1) == "]" else {
            throw failure("the table header is not closed with \(array ? "]]" : "]")")
        }
        advance()
        if array { advance() }
        try endOfLine(after: "table header")
        let name = keys.joined(separator: ".")
        func failure(_ message: String) -> SettingsError { self.failure(message, at: headerLine) }
        var table = root
        for (position, key) in keys.enumerated() {
            let last = position == keys.count - 1
            switch table.slots[key]?.slot {
            case nil:
                if last && array {
                    let node = ArrayNode()
                    let fresh = TableNode()
                    fresh.headed = true
                    node.tables.append(fresh)
                    table.set(key, .tables(node), line: headerLine)
                    return fresh
                }
                let fresh = TableNode()
                fresh.headed = last
                table.set(key, .table(fresh), line: headerLine)
                table = fresh
            case .table(let existing):
                if last {
                    if array { throw failure("[[\(name)]] names a table, not an array of tables (line \(table.slots[key]!.line))") }
                    if existing.headed || existing.dotted || existing.inline {
                        throw failure("the table [\(name)] is defined again (first on line \(table.slots[key]!.line))")
                    }
                    existing.headed = true
                } else if existing.inline {
                    throw failure("'\(name)' reaches into an inline table (line \(table.slots[key]!.line))")
                }
                table = existing
            case .tables(let existing):
                if last {
                    guard array else {
                        throw failure("[\(name)] names an array of tables (line \(table.slots[key]!.line)); write [[\(name)]] to add one")
                    }
                    let fresh = TableNode()
                    fresh.headed = true
                    existing.tables.append(fresh)
                    return fresh
                }
                table = existing.tables[existing.tables.count - 1]
            case .value:
                throw failure("'\(keys[...position].joined(separator: "."))' is already a value (line \(table.slots[key]!.line)), not a table")
            }
        }
        return table
    }

    /// `key = value` into `table`; a dotted key reaches into (or makes) tables under it.
    mutating func keyValue(into table: TableNode) throws(SettingsError) {
        let keyLine = line
        let keys = try key()
        skipSpaces()
        guard current == "=" else { throw failure("expected key = value") }
        advance()
        skipSpaces()
        let value = try self.value()
        var target = table
        for (position, key) in keys.dropLast().enumerated() {
            let shown = keys[...position].joined(separator: ".")
            switch target.slots[key]?.slot {
            case nil:
                let fresh = TableNode()
                fresh.dotted = true
                target.set(key, .table(fresh), line: keyLine)
                target = fresh
            case .table(let existing) where existing.dotted || (!existing.inline && !existing.headed):
                existing.dotted = true
                target = existing
            default:
                throw failure("'\(shown)' is already set (line \(target.slots[key]!.line)); it cannot take more keys here")
            }
        }
        let last = keys[keys.count - 1]
        if let first = target.slots[last] {
            throw failure("'\(keys.joined(separator: "."))' is set again (first on line \(first.line))", at: keyLine)
        }
        target.set(last, value, line: keyLine)
    }

    /// A key's parts: `a`, `"a b"`, `a.b`.
    mutating func key() throws(SettingsError) -> [String] {
        skipSpaces()
        let start = index
        var parts: [String] = []
        while true {
            skipSpaces()
            switch current {
            case "\"", "'":
                if flat { throw failure("'\(restOfKey(from: start))' is not a plain key (letters, digits, - and _; no dots or quotes)") }
                guard case .string(let text) = try string() else { preconditionFailure("a string value") }
                parts.append(text)
            default:
                var bare = ""
                while let c = current, c.isBareKey {
                    bare.unicodeScalars.append(c)
                    advance()
                }
                guard !bare.isEmpty else {
                    if let c = current, c != "=", c != "\n", c != " ", c != "\t" {
                        throw failure("'\(restOfKey(from: start))' is not a \(flat ? "plain key (letters, digits, - and _; no dots or quotes)" : "key: use letters, digits, - and _, or quote it")")
                    }
                    throw failure("expected key = value")
                }
                parts.append(bare)
            }
            skipSpaces()
            if let c = current, c != "=", c != ".", c != "]", c != "\n", c != "\r", !parts.isEmpty {
                throw failure("'\(restOfKey(from: start))' is not a \(flat ? "plain key (letters, digits, - and _; no dots or quotes)" : "key: use letters, digits, - and _, or quote it")")
            }
            guard current == "." else { return parts }
            if flat { throw failure("'\(restOfKey(from: start))' is not a plain key (letters, digits, - and _; no dots or quotes)") }
            advance()
        }
    }

    /// The key's text from `start` up to `=` or the end of the line, for a message.
    func restOfKey(from start: Int) -> String {
        var out = ""
        var at = start
        while at < text.count, text[at] != "=", text[at] != "\n", text[at] != "\r" {
            out.unicodeScalars.append(text[at])
            at += 1
        }
        return out.trimmingTrailingSpaces
    }

    mutating func value() throws(SettingsError) -> TableNode.Slot {
        switch current {
        case "[":
            if flat { throw failure("arrays and inline tables are not settings here") }
            return .value(try array())
        case "{":
            if flat { throw failure("arrays and inline tables are not settings here") }
            return .table(try inlineTable())
        default:
            return .value(try scalar())
        }
    }

    mutating func plainValue() throws(SettingsError) -> TOMLValue {
        switch try value() {
        case .value(let value): return value
        case .table(let table): return .table(table.value)
        case .tables: preconditionFailure("a value is never an array of tables")
        }
    }

    mutating func array() throws(SettingsError) -> TOMLValue {
        let opened = line
        advance()
        var values: [TOMLValue] = []
        while true {
            skipBlank()
            if current == "]" {
                advance()
                return .array(values)
            }
            guard current != nil else { throw failure("the array opened on line \(opened) is not closed with ]") }
            values.append(try plainValue())
            skipBlank()
            switch current {
            case ",": advance()
            case "]": continue
            default: throw failure("expected , or ] in the array opened on line \(opened)")
            }
        }
    }

    mutating func inlineTable() throws(SettingsError) -> TableNode {
        advance()
        let table = TableNode()
        skipSpaces()
        if current == "}" {
            advance()
            table.inline = true
            return table
        }
        while true {
            try keyValue(into: table)
            skipSpaces()
            switch current {
            case ",":
                advance()
                skipSpaces()
            case "}":
                advance()
                table.inline = true
                return table
            default:
                throw failure("expected , or } in the inline table (it is one line)")
            }
        }
    }

    mutating func scalar() throws(SettingsError) -> TOMLValue {
        switch current {
        case nil, "\n", "\r", "#": throw failure("the value is missing")
        case "\"", "'": return try string()
        default:
            var token = ""
            while let c = current, !(c == " " || c == "\t" || c == "#" || c == "," || c == "]" || c == "}" || c == "\n" || c == "\r") {
                token.unicodeScalars.append(c)
                advance()
            }
            if token == "true" { return .boolean(true) }
            if token == "false" { return .boolean(false) }
            let digits = token.drop { $0 == "+" || $0 == "-" }
            if !digits.isEmpty, !digits.hasPrefix("_"), !digits.hasSuffix("_"), !digits.contains("__"),
                let number = Int(token.replacingOccurrences(of: "_", with: ""))
            {
                return .integer(number)
            }
            if Double(token.replacingOccurrences(of: "_", with: "")) != nil {
                throw failure("'\(token)' is not a whole number; the settings here take whole numbers")
            }
            throw failure("'\(token)' is not a value; quote text (\"…\"), or give a number, true or false")
        }
    }

    /// A basic (`"…"`) or literal (`'…'`) string on one line.
    mutating func string() throws(SettingsError) -> TOMLValue {
        let quote = current!
        if looking(at: quote == "\"" ? "\"\"\"" : "'''") {
            throw failure("multi-line strings are not supported; use one line")
        }
        advance()
        var out = ""
        while let c = current, c != "\n" {
            advance()
            if c == quote { return .string(out) }
            guard quote == "\"", c == "\\" else {
                out.unicodeScalars.append(c)
                continue
            }
            guard let escape = current else { break }
            advance()
            switch escape {
            case "\"": out.append("\"")
            case "\\": out.append("\\")
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "r": out.append("\r")
            case "b": out.append("\u{8}")
            case "f": out.append("\u{c}")
            case "u", "U":
                var hex = ""
                for _ in 0..<(escape == "u" ? 4 : 8) {
                    guard let h = current, h != quote, h != "\n" else { break }
                    hex.unicodeScalars.append(h)
                    advance()
                }
                guard hex.unicodeScalars.count == (escape == "u" ? 4 : 8), hex.unicodeScalars.allSatisfy(\.properties.isASCIIHexDigit),
                    let code = UInt32(hex, radix: 16), let scalar = Unicode.Scalar(code)
                else {
                    throw failure("\\\(escape)\(hex) is not a Unicode character")
                }
                out.unicodeScalars.append(scalar)
            default: throw failure("unknown escape \\\(escape) in a string")
            }
        }
        throw failure("the string is not closed with \(quote)")
    }
}

extension Unicode.Scalar {
    fileprivate var isBareKey: Bool {
        isASCII && (properties.isAlphabetic || ("0"..."9").contains(self) || self == "-" || self == "_")
    }
}

extension String {
    fileprivate var trimmingTrailingSpaces: String {
        var copy = self
        while copy.last == " " || copy.last == "\t" { copy.removeLast() }
        return copy
    }
}
