import Foundation

/// The JSON the protocol accepts (docs/protocol.md, "What the agent accepts as JSON"): I-JSON
/// (RFC 7493) with integers only. Foundation's decoder takes the last of two equal keys and
/// reads `100.0` or `1e2` as the integer 100; a signed body that two parsers read differently
/// is a way to make the manager and the agent disagree on what was paid. So, before any
/// decoding, one linear pass over the bytes refuses:
/// - an object with the same member name twice (compared after unescaping),
/// - a number with a fraction or an exponent, or a leading zero (`012`),
/// - anything that is not JSON text at all (the decoder's own message is kept for the rest).
///
/// It allocates only for member names and the nesting stack, and never recurses.
enum StrictJSON {
    /// The first thing that makes `bytes` unacceptable, or nil.
    static func problem(in bytes: UnsafeBufferPointer<UInt8>) -> String? {
        var scanner = Scanner(bytes: bytes)
        return scanner.scan()
    }

    private struct Scanner {
        let bytes: UnsafeBufferPointer<UInt8>
        var index = 0
        /// One entry per open object (its member names so far) or array (nil).
        var stack: [Set<String>?] = []

        init(bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

        mutating func skipSpace() {
            while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 {
                index += 1
            }
        }

        mutating func scan() -> String? {
            // Expecting a value; after it, a separator or a closer, until the stack is empty.
            var expectingValue = true
            while true {
                skipSpace()
                if expectingValue {
                    guard index < bytes.count else { return "not valid JSON: unexpected end" }
                    switch bytes[index] {
                    case UInt8(ascii: "{"):
                        index += 1
                        stack.append([])
                        skipSpace()
                        if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                            index += 1
                            stack.removeLast()
                            expectingValue = false
                        } else if let problem = memberName() {
                            return problem
                        }
                        continue
                    case UInt8(ascii: "["):
                        index += 1
                        stack.append(nil)
                        skipSpace()
                        if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                            index += 1
                            stack.removeLast()
                            expectingValue = false
                        }
                        continue
                    case UInt8(ascii: "\""):
                        guard skipString() != nil else { return "not valid JSON: unterminated string" }
                    case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                        if let problem = number() { return problem }
                    case UInt8(ascii: "t"): if let problem = literal("true") { return problem }
                    case UInt8(ascii: "f"): if let problem = literal("false") { return problem }
                    case UInt8(ascii: "n"): if let problem = literal("null") { return problem }
                    default: return "not valid JSON"
                    }
                    expectingValue = false
                    continue
                }
                guard let top = stack.last else {
                    return index == bytes.count ? nil : "not valid JSON: text after the value"
                }
                guard index < bytes.count else { return "not valid JSON: unexpected end" }
                let byte = bytes[index]
                index += 1
                switch (byte, top == nil) {
                case (UInt8(ascii: ","), true):
                    expectingValue = true
                case (UInt8(ascii: ","), false):
                    skipSpace()
                    if let problem = memberName() { return problem }
                    expectingValue = true
                case (UInt8(ascii: "]"), true), (UInt8(ascii: "}"), false):
                    stack.removeLast()
                default:
                    return "not valid JSON"
                }
            }
        }

        /// Reads `"name" :` of an object member, refusing a name seen before in that object.
        mutating func memberName() -> String? {
            guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { return "not valid JSON: expected a member name" }
            guard let name = skipString() else { return "not valid JSON: unterminated string" }
            let inserted = stack[stack.count - 1]!.insert(name).inserted
            guard inserted else { return "member \"\(name)\" appears twice in one object (I-JSON forbids it)" }
            skipSpace()
            guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { return "not valid JSON: expected ':'" }
            index += 1
            return nil
        }

        /// Skips a string starting at the opening quote; returns its unescaped text (for
        /// member names), or nil if it does not end.
        mutating func skipString() -> String? {
            index += 1
            let start = index
            var escaped = false
            while index < bytes.count {
                let byte = bytes[index]
                if byte == UInt8(ascii: "\"") {
                    let raw = UnsafeBufferPointer(rebasing: bytes[start..<index])
                    index += 1
                    return escaped ? Self.unescape(raw) : String(decoding: raw, as: UTF8.self)
                }
                if byte == UInt8(ascii: "\\") {
                    escaped = true
                    index += 2
                    continue
                }
                index += 1
            }
            return nil
        }

        /// Integers only: `-?(0|[1-9][0-9]*)`.
        mutating func number() -> String? {
            let start = index
            if bytes[index] == UInt8(ascii: "-") { index += 1 }
            let firstDigit = index
            while index < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(bytes[index]) { index += 1 }
            let digits = index - firstDigit
            guard digits > 0 else { return "not valid JSON: bad number" }
            if digits > 1, bytes[firstDigit] == UInt8(ascii: "0") { return "not valid JSON: a number with a leading zero" }
            if index < bytes.count, [UInt8(ascii: "."), UInt8(ascii: "e"), UInt8(ascii: "E")].contains(bytes[index]) {
                var end = index
                while end < bytes.count, !Self.isDelimiter(bytes[end]) { end += 1 }
                let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
                return "\(text) is not an integer (every number in the protocol is an integer)"
            }
            return nil
        }

        mutating func literal(_ word: StaticString) -> String? {
            let count = word.utf8CodeUnitCount
            guard index + count <= bytes.count else { return "not valid JSON" }
            for offset in 0..<count where bytes[index + offset] != word.utf8Start[offset] { return "not valid JSON" }
            index += count
            return nil
        }

        static func isDelimiter(_ byte: UInt8) -> Bool {
            byte == UInt8(ascii: ",") || byte == UInt8(ascii: "}") || byte == UInt8(ascii: "]") || byte == 0x20 || byte == 0x0A
                || byte == 0x0D || byte == 0x09
        }

        /// A member name with escapes, decoded as JSON decodes it (so `"a"` and `"\u0061"` are
        /// the same name).
        static func unescape(_ raw: UnsafeBufferPointer<UInt8>) -> String {
            var quoted = [UInt8(ascii: "[")] + [UInt8(ascii: "\"")]
            quoted.append(contentsOf: raw)
            quoted.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: "]")])
            // A name JSONDecoder cannot read is refused by it later; any stable text will do here.
            return (try? JSONStringArray.decode(quoted)) ?? String(decoding: raw, as: UTF8.self)
        }
    }
}

private enum JSONStringArray {
    static func decode(_ bytes: [UInt8]) throws -> String? {
        try JSONDecoder().decode([String].self, from: Data(bytes)).first
    }
}
