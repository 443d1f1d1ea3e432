internal import COpenSSL
internal import CSodium
import Foundation

/// libsodium is initialised once per process (its own call is thread-safe and idempotent;
/// this keeps it off the payment path).
private let sodiumReady: Bool = sodium_init() >= 0

/// Why a key could not be made or read.
public enum KeyError: Error, Sendable, Hashable, CustomStringConvertible {
    case invalidPublicKey(String)
    case invalidPrivateKey(String)
    case openSSL(operation: String, detail: String)

    public var description: String {
        switch self {
        case .invalidPublicKey(let why): "invalid Ed25519 public key: \(why)"
        case .invalidPrivateKey(let why): "invalid Ed25519 private key: \(why)"
        case .openSSL(let operation, let detail): "OpenSSL \(operation) failed: \(detail)"
        }
    }
}

/// The oldest error OpenSSL queued for this thread, for humans; clears the queue.
private func openSSLError() -> String {
    let code = ERR_get_error()
    ERR_clear_error()
    guard code != 0 else { return "no detail" }
    var buffer = [CChar](repeating: 0, count: 256)
    ERR_error_string_n(code, &buffer, buffer.count)
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// An owned `EVP_PKEY`. Immutable after creation; OpenSSL allows concurrent use of one key
/// from several signing or verifying contexts.
final class OwnedKey: @unchecked Sendable {
    let pointer: OpaquePointer
    init(_ pointer: OpaquePointer) { self.pointer = pointer }
    deinit { EVP_PKEY_free(pointer) }
}

/// A verification context initialised once for a key (`EVP_DigestVerifyInit` looks the
/// algorithm up in OpenSSL 3's provider store: ~40 µs of a ~175 µs verification here). Each
/// verification works on a copy; the template itself is only read.
final class VerifyTemplate: @unchecked Sendable {
    let context: OpaquePointer?
    init(_ key: OwnedKey) {
        var made = EVP_MD_CTX_new()
        if let context = made, EVP_DigestVerifyInit(context, nil, nil, nil, key.pointer) != 1 {
            ERR_clear_error()
            EVP_MD_CTX_free(context)
            made = nil
        }
        context = made
    }
    deinit { EVP_MD_CTX_free(context) }
}

/// An Ed25519 public key (RFC 8032). Verified with libsodium (`crypto_sign_verify_detached`:
/// ~86 µs here against OpenSSL 3's ~171 µs, `pulsebridge-bench verify`); OpenSSL's verification
/// stays as the reference the tests hold libsodium's to.
public struct Ed25519PublicKey: Sendable, Hashable {
    let key: OwnedKey
    let template: VerifyTemplate
    /// The 32 raw bytes.
    public let rawRepresentation: Data
    /// The same, for libsodium.
    let keyBytes: [UInt8]

    public init(rawRepresentation raw: Data) throws(KeyError) {
        guard raw.count == 32 else { throw .invalidPublicKey("\(raw.count) bytes, expected 32") }
        let made = raw.withUnsafeBytes { bytes in
            EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nil, bytes.bindMemory(to: UInt8.self).baseAddress, 32)
        }
        guard let made else { throw .invalidPublicKey(openSSLError()) }
        key = OwnedKey(made)
        template = VerifyTemplate(key)
        rawRepresentation = raw
        keyBytes = Array(raw)
    }

    /// From standard base64 of the 32 raw bytes, as PulseBridge carries public keys.
    public init(base64: String) throws(KeyError) {
        guard let raw = Data(base64Encoded: base64) else { throw .invalidPublicKey("not valid base64") }
        try self.init(rawRepresentation: raw)
    }

    /// Standard base64 of the 32 raw bytes.
    public var base64: String { rawRepresentation.base64EncodedString() }

    /// Whether `signature` is a valid Ed25519 signature of `message` by this key.
    public func isValidSignature(_ signature: some DataProtocol, for message: some DataProtocol) -> Bool {
        guard signature.count == 64, sodiumReady else { return false }
        let signatureBytes = Array(signature)
        let messageBytes = Array(message)
        return crypto_sign_verify_detached(signatureBytes, messageBytes, UInt64(messageBytes.count), keyBytes) == 0
    }

    /// The same check through OpenSSL (the reference libsodium's answers are tested against).
    func isValidSignatureOpenSSL(_ signature: some DataProtocol, for message: some DataProtocol) -> Bool {
        guard signature.count == 64 else { return false }
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        let ready: Bool
        if let template = template.context {
            ready = EVP_MD_CTX_copy_ex(context, template) == 1
        } else {
            ready = EVP_DigestVerifyInit(context, nil, nil, nil, key.pointer) == 1
        }
        guard ready else {
            ERR_clear_error()
            return false
        }
        let signatureBytes = Array(signature)
        let messageBytes = Array(message)
        let verdict = EVP_DigestVerify(context, signatureBytes, 64, messageBytes, messageBytes.count)
        if verdict != 1 { ERR_clear_error() }
        return verdict == 1
    }

    public static func == (lhs: Self, rhs: Self) -> Bool { lhs.rawRepresentation == rhs.rawRepresentation }
    public func hash(into hasher: inout Hasher) { hasher.combine(rawRepresentation) }
}

/// An Ed25519 private key; stored as PKCS#8 PEM so any Ed25519 library can use it.
public struct Ed25519PrivateKey: Sendable {
    let key: OwnedKey
    public let publicKey: Ed25519PublicKey

    /// A new random key.
    public init() throws(KeyError) {
        guard let context = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nil) else {
            throw .openSSL(operation: "EVP_PKEY_CTX_new_id", detail: openSSLError())
        }
        defer { EVP_PKEY_CTX_free(context) }
        var made: OpaquePointer? = nil
        guard EVP_PKEY_keygen_init(context) == 1, EVP_PKEY_keygen(context, &made) == 1, let made else {
            throw .openSSL(operation: "Ed25519 key generation", detail: openSSLError())
        }
        try self.init(owning: made)
    }

    /// From a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    public init(pem: String) throws(KeyError) {
        // BIO_new_mem_buf keeps the pointer it is given (no copy): the bytes must stay alive
        // across every read of the BIO, not only the call that made it. A Swift array passed
        // straight to the C parameter is valid only during that one call (release builds
        // free it at once).
        let made = Array(pem.utf8).withUnsafeBufferPointer { bytes -> Result<OpaquePointer, KeyError> in
            guard let bio = BIO_new_mem_buf(bytes.baseAddress, Int32(bytes.count)) else {
                return .failure(.openSSL(operation: "BIO_new_mem_buf", detail: openSSLError()))
            }
            defer { BIO_free(bio) }
            guard let made = PEM_read_bio_PrivateKey(bio, nil, nil, nil) else {
                return .failure(.invalidPrivateKey("not a PKCS#8 PEM private key (\(openSSLError()))"))
            }
            return .success(made)
        }
        let key = try made.get()
        guard EVP_PKEY_get_base_id(key) == EVP_PKEY_ED25519 else {
            EVP_PKEY_free(key)
            throw .invalidPrivateKey("the PEM holds a key that is not Ed25519")
        }
        try self.init(owning: key)
    }

    private init(owning made: OpaquePointer) throws(KeyError) {
        key = OwnedKey(made)
        var raw = [UInt8](repeating: 0, count: 32)
        var length = 32
        guard EVP_PKEY_get_raw_public_key(made, &raw, &length) == 1, length == 32 else {
            throw .openSSL(operation: "EVP_PKEY_get_raw_public_key", detail: openSSLError())
        }
        publicKey = try Ed25519PublicKey(rawRepresentation: Data(raw))
    }

    /// The key as PKCS#8 PEM.
    public var pemRepresentation: String {
        let bio = BIO_new(BIO_s_mem())!
        defer { BIO_free(bio) }
        PEM_write_bio_PrivateKey(bio, key.pointer, nil, nil, 0, nil, nil)
        var data: UnsafeMutablePointer<CChar>? = nil
        let length = pulsebridge_BIO_get_mem_data(bio, &data)
        return String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
    }

    /// The 64-byte Ed25519 signature of `message`.
    public func signature(for message: some DataProtocol) -> Data {
        let context = EVP_MD_CTX_new()!
        defer { EVP_MD_CTX_free(context) }
        let bytes = Array(message)
        var signature = [UInt8](repeating: 0, count: 64)
        var length = 64
        // Ed25519 signing with a valid key cannot fail short of memory exhaustion.
        precondition(EVP_DigestSignInit(context, nil, nil, nil, key.pointer) == 1, "EVP_DigestSignInit: \(openSSLError())")
        precondition(
            EVP_DigestSign(context, &signature, &length, bytes, bytes.count) == 1, "EVP_DigestSign: \(openSSLError())")
        return Data(signature)
    }
}

/// SHA-256 through OpenSSL's EVP interface, fed piece by piece (firmware downloads).
public final class SHA256Hasher {
    private let context: OpaquePointer

    public init() {
        context = EVP_MD_CTX_new()!
        precondition(EVP_DigestInit_ex(context, EVP_sha256(), nil) == 1, "EVP_DigestInit_ex: \(openSSLError())")
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        EVP_DigestUpdate(context, bytes.baseAddress, bytes.count)
    }

    public func update(_ data: Data) {
        data.withUnsafeBytes { update($0) }
    }

    /// Lower-case hex of the digest; the hasher is spent afterwards.
    public func finalizeHex() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 32
        EVP_DigestFinal_ex(context, &digest, &length)
        return digest.map { String(format: "%02x", $0) }.joined()
    }

    /// Lower-case hex SHA-256 of `data`.
    public static func hex(of data: Data) -> String {
        let hasher = SHA256Hasher()
        hasher.update(data)
        return hasher.finalizeHex()
    }
}
