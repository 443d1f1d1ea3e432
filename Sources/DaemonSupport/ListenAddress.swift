/// An address to listen on as operators write it: `127.0.0.1:8090`, `[::1]:8090`, or `:8090`
/// (every address). One parser for every daemon option that takes one.
public struct ListenAddress: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Nil unless `text` is HOST:PORT with a port 0 to 65535 (an IPv6 host in brackets).
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") {
            guard host.hasSuffix("]"), host.count > 2 else { return nil }
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            return nil  // an IPv6 address needs its brackets: [::1]:8090
        }
        self.host = host.isEmpty ? "0.0.0.0" : host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }

    /// What an error says a value should look like.
    public static let examples = "HOST:PORT, e.g. 127.0.0.1:8090, [::1]:8090 or :8090 (every address)"
}
