import Foundation

/// JSON in and out of the wire format: the size limit, strict decoding with errors that name
/// the field, and encoders that write the page's field names.
public enum WireCoding {
    /// Decodes a message, enforcing the 8 KiB limit first; every failure is `malformed` with
    /// the offending field.
    public static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws(ProtocolError) -> T {
        guard data.count <= ProtocolLimits.maxPayloadBytes else {
            throw .malformed(field: nil, problem: "payload is \(data.count) bytes, over the 8 KiB limit")
        }
        let strictProblem = data.withUnsafeBytes { raw in
            StrictJSON.problem(in: raw.bindMemory(to: UInt8.self))
        }
        do {
            let value = try JSONDecoder().decode(T.self, from: data)
            // Text the strict pass refuses is refused even where Foundation is lenient (its
            // own errors come first: they name the field).
            if let strictProblem { throw ProtocolError.malformed(field: nil, problem: strictProblem) }
            return value
        } catch let error as ProtocolError {
            throw error
        } catch let error as DecodingError {
            throw malformed(error)
        } catch {
            throw .malformed(field: nil, problem: "\(error)")
        }
    }

    /// Encodes a message as compact JSON with sorted keys (stable bytes for logs and tests).
    public static func encode<T: Encodable>(_ value: T) -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // Our messages hold only strings, integers, booleans and arrays of them: encoding
        // cannot fail.
        return try! encoder.encode(value)
    }

    static func path(_ codingPath: [any CodingKey]) -> String? {
        guard !codingPath.isEmpty else { return nil }
        var text = ""
        for key in codingPath {
            if let index = key.intValue {
                text += "[\(index)]"
            } else {
                text += text.isEmpty ? key.stringValue : "." + key.stringValue
            }
        }
        return text
    }

    static func malformed(_ error: DecodingError) -> ProtocolError {
        switch error {
        case .keyNotFound(let key, let context):
            return .malformed(field: path(context.codingPath + [key]), problem: "missing")
        case .valueNotFound(let type, let context):
            return .malformed(field: path(context.codingPath), problem: "null where \(typeName(type)) is required")
        case .typeMismatch(let type, let context):
            return .malformed(field: path(context.codingPath), problem: "expected \(typeName(type))")
        case .dataCorrupted(let context):
            if context.codingPath.isEmpty {
                return .malformed(field: nil, problem: "not valid JSON")
            }
            return .malformed(field: path(context.codingPath), problem: context.debugDescription)
        @unknown default:
            return .malformed(field: nil, problem: "\(error)")
        }
    }

    private static func typeName(_ type: Any.Type) -> String {
        switch type {
        case is Int.Type, is Int64.Type, is UInt32.Type: "an integer"
        case is String.Type: "a string"
        case is Bool.Type: "a boolean"
        case is [Any].Type: "an array"
        default: "\(type)".contains("Dictionary") ? "an object" : "\(type)"
        }
    }
}

/// A coding key made from any string: the messages decode by the page's field names.
struct WireKey: CodingKey, ExpressibleByStringLiteral {
    var stringValue: String
    var intValue: Int? { nil }
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { nil }
    init(stringLiteral value: String) { stringValue = value }
}

/// Field readers that validate as they decode and throw `malformed` naming the field.
extension KeyedDecodingContainer where Key == WireKey {
    func field<T: Decodable>(_ key: WireKey) throws -> T {
        try decode(T.self, forKey: key)
    }

    func optionalField<T: Decodable>(_ key: WireKey) throws -> T? {
        try decodeIfPresent(T.self, forKey: key)
    }

    func int(_ key: WireKey, in range: ClosedRange<Int>) throws -> Int {
        let value: Int
        do {
            value = try decode(Int.self, forKey: key)
        } catch {
            // Foundation reports a fraction or an out-of-range number as an internal error
            // that surfaces as "not valid JSON" without the field; name the field here.
            if let number = try? decode(Double.self, forKey: key) {
                throw invalid(key, "\(number) is not an integer in \(range.lowerBound)…\(range.upperBound)")
            }
            throw error
        }
        guard range.contains(value) else { throw invalid(key, "\(value) is outside \(range.lowerBound)…\(range.upperBound)") }
        return value
    }

    /// A time: integer milliseconds since the Unix epoch, not negative.
    func time(_ key: WireKey) throws -> Int {
        try int(key, in: 0...Int(Int64.max / 2))
    }

    /// `"type"` must be exactly `expected`.
    func expectType(_ expected: String) throws {
        let type = try decode(String.self, forKey: "type")
        guard type == expected else { throw invalid("type", "is '\(type)', expected '\(expected)'") }
    }

    /// `"v"` must be 1.
    func expectVersion1() throws {
        let v = try decode(Int.self, forKey: "v")
        guard v == 1 else { throw invalid("v", "version \(v) is not supported (expected 1)") }
    }

    func invalid(_ key: WireKey, _ problem: String) -> ProtocolError {
        .malformed(field: WireCoding.path(codingPath + [key]), problem: problem)
    }
}

extension KeyedEncodingContainer where Key == WireKey {
    /// Writes `value`, or an explicit `null`: the page shows nullable fields as `null`.
    mutating func encodeOrNull<T: Encodable>(_ value: T?, forKey key: WireKey) throws {
        if let value { try encode(value, forKey: key) } else { try encodeNil(forKey: key) }
    }
}
