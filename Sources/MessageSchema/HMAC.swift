import Foundation

/// HMAC-SHA256 (RFC 2104) over OpenSSL's SHA-256: the payment provider's webhook signatures,
/// CSRF tokens, the fleet's alert webhooks.
public enum HMAC {
    public static func sha256Hex(key: [UInt8], message: [UInt8]) -> String {
        var key = key
        if key.count > 64 { key = hexBytes(SHA256Hasher.hex(of: Data(key))) }
        key += [UInt8](repeating: 0, count: 64 - key.count)
        let inner = SHA256Hasher()
        inner.update(Data(key.map { $0 ^ 0x36 } + message))
        let outer = SHA256Hasher()
        outer.update(Data(key.map { $0 ^ 0x5c } + hexBytes(inner.finalizeHex())))
        return outer.finalizeHex()
    }

    public static func sha256Hex(key: String, message: some Collection<UInt8>) -> String {
        sha256Hex(key: Array(key.utf8), message: Array(message))
    }

    static func hexBytes(_ hex: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var iterator = hex.utf8.makeIterator()
        while let high = iterator.next(), let low = iterator.next() {
            bytes.append(UInt8(String(decoding: [high, low], as: UTF8.self), radix: 16) ?? 0)
        }
        return bytes
    }

    /// Compares without leaking where the first difference is.
    public static func equal(_ a: String, _ b: String) -> Bool {
        let (x, y) = (Array(a.utf8), Array(b.utf8))
        guard x.count == y.count else { return false }
        return zip(x, y).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }
}
