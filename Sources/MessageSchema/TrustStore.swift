/// A key the agent trusts, with what it may sign.
public struct TrustedKey: Sendable, Hashable {
    public var kid: KeyID
    public var purpose: KeyPurpose
    public var publicKey: Ed25519PublicKey

    public init(kid: KeyID, purpose: KeyPurpose, publicKey: Ed25519PublicKey) {
        self.kid = kid
        self.purpose = purpose
        self.publicKey = publicKey
    }

    /// From a configuration's `trust` entry.
    public init(_ entry: TrustEntry) throws(KeyError) {
        self.init(kid: entry.kid, purpose: entry.purpose, publicKey: try Ed25519PublicKey(base64: entry.publicKey))
    }

    /// As a configuration's `trust` entry.
    public var entry: TrustEntry { TrustEntry(kid: kid, purpose: purpose, publicKey: publicKey.base64) }
}

/// The trusted public keys, by `kid`.
public struct TrustStore: Sendable, Hashable {
    public private(set) var keys: [KeyID: TrustedKey]

    public init(_ keys: [TrustedKey] = []) {
        self.keys = Dictionary(keys.map { ($0.kid, $0) }, uniquingKeysWith: { _, last in last })
    }

    /// From a configuration's `trust` list.
    public init(entries: [TrustEntry]) throws(KeyError) {
        var keys: [TrustedKey] = []
        for entry in entries { keys.append(try TrustedKey(entry)) }
        self.init(keys)
    }

    public mutating func insert(_ key: TrustedKey) { keys[key.kid] = key }
    public mutating func remove(_ kid: KeyID) { keys[kid] = nil }

    public var entries: [TrustEntry] { keys.values.sorted { $0.kid < $1.kid }.map(\.entry) }

    /// The key `kid` if it is trusted for `purpose`; `unknown_key` otherwise.
    public func key(_ kid: KeyID, for purpose: KeyPurpose) throws(ProtocolError) -> TrustedKey {
        guard let key = keys[kid] else { throw .unknownKey(kid, detail: "no trusted key has this ID") }
        guard key.purpose == purpose else {
            throw .unknownKey(kid, detail: "a \(key.purpose.rawValue) key may not sign this (needs a \(purpose.rawValue) key)")
        }
        return key
    }
}
