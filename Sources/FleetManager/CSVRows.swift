/// CSV as RFC 4180 writes it, with the delimiter `,` or `;` (what spreadsheets in many locales
/// save): fields may be quoted, a quote inside a quoted field is doubled, a quoted field may
/// hold the delimiter or a line break. Lines starting with `#` (outside quotes) are comments.
public enum CSVRows {
    /// One record and the line it starts on (1-based).
    public struct Row: Sendable, Hashable {
        public var line: Int
        public var fields: [String]
        /// The record as it stood in the file, for error messages.
        public var text: String
    }

    /// Why a file is not CSV.
    public struct Malformed: Error, Sendable, CustomStringConvertible {
        public var line: Int
        public var problem: String
        public var description: String { "line \(line): \(problem)" }
    }

    /// The delimiter: `;` if the first record has more unquoted `;` than `,`.
    static func delimiter(of text: Substring) -> Character {
        var commas = 0
        var semicolons = 0
        var quoted = false
        for character in text {
            if character == "\"" { quoted.toggle() }
            if (character == "\n" || character == "\r\n") && !quoted { break }
            if !quoted {
                if character == "," { commas += 1 }
                if character == ";" { semicolons += 1 }
            }
        }
        return semicolons > commas ? ";" : ","
    }

    public static func parse(_ text: String) throws(Malformed) -> [Row] {
        let body = Substring(text).drop { $0 == "\u{FEFF}" }  // a spreadsheet's byte-order mark
        let separator = delimiter(of: body.drop { $0 == "\n" || $0 == "\r" || $0 == "\r\n" })
        var rows: [Row] = []
        var fields: [String] = []
        var field = ""
        var raw = ""
        var quoted = false
        var fieldWasQuoted = false
        var afterQuote = false
        var line = 1
        var rowLine = 1
        var index = body.startIndex

        func endRecord() {
            fields.append(fieldWasQuoted ? field : field.trimmingSpaces())
            let isComment = fields.count == 1 && !fieldWasQuoted && fields[0].hasPrefix("#")
            let isBlank = fields.count == 1 && fields[0].isEmpty && !fieldWasQuoted
            if !isComment && !isBlank { rows.append(Row(line: rowLine, fields: fields, text: raw)) }
            fields = []
            field = ""
            raw = ""
            fieldWasQuoted = false
            afterQuote = false
        }

        while index < body.endIndex {
            let character = body[index]
            index = body.index(after: index)
            if quoted {
                if character == "\"" {
                    if index < body.endIndex, body[index] == "\"" {
                        field.append("\"")
                        raw.append("\"\"")
                        index = body.index(after: index)
                    } else {
                        quoted = false
                        afterQuote = true
                        raw.append(character)
                    }
                } else {
                    // "\r\n" is one Character in Swift.
                    if character == "\n" || character == "\r\n" { line += 1 }
                    field.append(character == "\r\n" ? "\n" : character)
                    raw.append(character)
                }
                continue
            }
            switch character {
            case "\"":
                guard field.trimmingSpaces().isEmpty, !afterQuote else {
                    throw Malformed(line: line, problem: "a quote inside an unquoted field (quote the whole field and double the quote)")
                }
                field = ""
                quoted = true
                fieldWasQuoted = true
                raw.append(character)
            case separator:
                fields.append(fieldWasQuoted ? field : field.trimmingSpaces())
                field = ""
                fieldWasQuoted = false
                afterQuote = false
                raw.append(character)
            case "\r":
                continue
            case "\n", "\r\n":
                endRecord()
                line += 1
                rowLine = line
            default:
                if afterQuote, character != " " {
                    throw Malformed(line: line, problem: "text after a closing quote")
                }
                if !afterQuote { field.append(character) }
                raw.append(character)
            }
        }
        if quoted { throw Malformed(line: rowLine, problem: "a quoted field is not closed") }
        if !field.isEmpty || !fields.isEmpty || fieldWasQuoted { endRecord() }
        return rows
    }
}

extension CSVRows {
    /// One field as a spreadsheet should get it: quoted when it holds a delimiter, a quote or a
    /// line break; a text that starts like a formula (`=`, `+`, `-`, `@`, tab, carriage return)
    /// gets a leading apostrophe, so a spreadsheet shows it instead of running it ("CSV
    /// injection": a user ID or machine name is somebody else's text). Whole numbers are left
    /// as they are.
    public static func field(_ text: String) -> String {
        var text = text
        if let first = text.unicodeScalars.first, "=+-@\t\r".unicodeScalars.contains(first), !isWholeNumber(text) {
            text = "'" + text
        }
        guard text.contains(where: { $0 == "," || $0 == ";" || $0 == "\"" || $0 == "\n" || $0 == "\r" || $0 == "\r\n" }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    /// One record, fields joined by `,`, ending in a line break.
    public static func line(_ fields: [String]) -> String {
        fields.map(field).joined(separator: ",") + "\n"
    }

    static func isWholeNumber(_ text: String) -> Bool {
        let digits = text.hasPrefix("-") ? text.dropFirst() : Substring(text)
        return !digits.isEmpty && digits.allSatisfy { $0.isASCII && $0.isNumber }
    }
}

extension String {
    func trimmingSpaces() -> String {
        var text = Substring(self)
        while text.first == " " || text.first == "\t" { text = text.dropFirst() }
        while text.last == " " || text.last == "\t" { text = text.dropLast() }
        return String(text)
    }
}
