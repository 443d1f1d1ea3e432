import Foundation

/// A message body that travels inside a signed envelope.
public protocol SignedBody: Codable, Sendable {
    /// The body's `type`.
    static var messageType: String { get }
    /// The purpose a signing key must have.
    static var signerPurpose: KeyPurpose { get }
    var machineId: MachineID { get }
}

/// `{"v": 1, "kid": …, "body": "<JSON text>", "sig": "<base64>"}`: the signature covers the
/// UTF-8 bytes of `body` exactly as they stand after JSON-decoding the envelope.
public struct SignedEnvelope: Sendable, Hashable {
    public var kid: KeyID
    /// The body, as JSON text.
    public var body: String
    /// The 64-byte Ed25519 signature.
    public var signature: Data

    public init(kid: KeyID, body: String, signature: Data) {
        self.kid = kid
        self.body = body
        self.signature = signature
    }

    /// Signs `body` (already JSON text) with `key`, published under `kid`.
    public static func sign(body: String, kid: KeyID, key: Ed25519PrivateKey) -> SignedEnvelope {
        SignedEnvelope(kid: kid, body: body, signature: key.signature(for: Data(body.utf8)))
    }

    /// Encodes `message` as the body and signs it.
    public static func sign<Body: SignedBody>(_ message: Body, kid: KeyID, key: Ed25519PrivateKey) -> SignedEnvelope {
        sign(body: String(decoding: WireCoding.encode(message), as: UTF8.self), kid: kid, key: key)
    }

    /// The envelope's JSON.
    public func encoded() -> Data {
        WireCoding.encode(Wire(v: 1, kid: kid, body: body, sig: signature.base64EncodedString()))
    }

    private struct Wire: Codable {
        var v: Int
        var kid: KeyID
        var body: String
        var sig: String
    }

    /// Parses an envelope: size, JSON, `v == 1`, a valid `kid`, a string `body`, and a `sig`
    /// of base64 that decodes to 64 bytes. Anything else is `malformed`.
    public static func parse(_ data: Data) throws(ProtocolError) -> SignedEnvelope {
        let wire = try WireCoding.decode(Wire.self, from: data)
        guard wire.v == 1 else { throw .malformed(field: "v", problem: "version \(wire.v) is not supported (expected 1)") }
        guard let signature = Data(base64Encoded: wire.sig) else {
            throw .malformed(field: "sig", problem: "not standard base64")
        }
        guard signature.count == 64 else {
            throw .malformed(field: "sig", problem: "\(signature.count) bytes, an Ed25519 signature has 64")
        }
        return SignedEnvelope(kid: wire.kid, body: wire.body, signature: signature)
    }
}

/// A signed message that has been checked: envelope, signature, purpose, body.
public struct Verified<Body: SignedBody>: Sendable {
    public var body: Body
    public var kid: KeyID
    /// The exact body text that was signed.
    public var bodyText: String
}

/// What is known of a message that failed its checks: the reason, and whatever IDs could be
/// read from it (so the result can name the payment).
public struct Refusal: Error, Sendable, Hashable, CustomStringConvertible {
    public var error: ProtocolError
    /// The payment ID, if the body held a valid one.
    public var paymentId: PaymentID?
    /// The machine ID, if the body held a valid one.
    public var machineId: MachineID?

    public var reason: RejectionReason { error.reason }
    public var description: String { error.description }
}

extension SignedEnvelope {
    /// Opens a signed message of type `Body`, deciding in the order of PROTOCOL.md: not
    /// parseable or invalid fields → `malformed`; `kid` unknown or of the wrong purpose →
    /// `unknown_key`; signature does not verify → `bad_signature`.
    ///
    /// The signature is verified over the body's bytes before the body is trusted; the body is
    /// parsed regardless, because a malformed body outranks an unknown key in the decision
    /// table.
    public static func open<Body: SignedBody>(
        _ data: Data, as: Body.Type, trust: TrustStore
    ) throws(Refusal) -> Verified<Body> {
        let envelope: SignedEnvelope
        do {
            envelope = try parse(data)
        } catch {
            throw Refusal(error: error, paymentId: nil, machineId: nil)
        }
        let bodyData = Data(envelope.body.utf8)
        let key = Result { () throws(ProtocolError) in try trust.key(envelope.kid, for: Body.signerPurpose) }
        let signatureValid = (try? key.get())?.publicKey.isValidSignature(envelope.signature, for: bodyData) ?? false

        func refusal(_ error: ProtocolError) -> Refusal {
            let ids = Identifiers.peek(bodyData)
            return Refusal(error: error, paymentId: ids.paymentId, machineId: ids.machineId)
        }
        let body: Body
        do {
            body = try WireCoding.decode(Body.self, from: bodyData)
        } catch {
            throw refusal(error.prefixed("body"))
        }
        if case .failure(let error) = key { throw refusal(error) }
        guard signatureValid else { throw refusal(.badSignature(envelope.kid)) }
        return Verified(body: body, kid: envelope.kid, bodyText: envelope.body)
    }
}

extension SignedEnvelope {
    /// Reads one field of the body of a message that may be refused (to name it in the answer,
    /// e.g. the version of a rejected configuration). Nothing read here is trusted.
    public static func peekBodyField<Value: Decodable>(_ payload: Data, _ key: String, as: Value.Type) -> Value? {
        guard let envelope = try? parse(payload) else { return nil }
        let decoder = JSONDecoder()
        decoder.userInfo[PeekedField<Value>.keyInfo] = key
        return (try? decoder.decode(PeekedField<Value>.self, from: Data(envelope.body.utf8)))?.value
    }
}

/// One field of an untrusted body, named through the decoder's user info.
private struct PeekedField<Value: Decodable>: Decodable {
    static var keyInfo: CodingUserInfoKey { CodingUserInfoKey(rawValue: "pulsebridge.peek.key")! }
    var value: Value?
    init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: WireKey.self)
        let key = WireKey(stringValue: decoder.userInfo[Self.keyInfo] as? String ?? "")
        value = try? container.decodeIfPresent(Value.self, forKey: key)
    }
}

extension ProtocolError {
    /// The same error with its field path under `prefix` (errors inside the body say so).
    func prefixed(_ prefix: String) -> ProtocolError {
        guard case .malformed(let field, let problem) = self else { return self }
        return .malformed(field: field.map { "\(prefix).\($0)" } ?? prefix, problem: problem)
    }
}

/// Reads `paymentId` and `machineId` from a body that may be otherwise invalid, for the
/// result of a refused message. Nothing read here is trusted.
enum Identifiers {
    private struct Peek: Decodable {
        var paymentId: PaymentID?
        var machineId: MachineID?
        init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: WireKey.self)
            paymentId = try? c.decodeIfPresent(PaymentID.self, forKey: "paymentId")
            machineId = try? c.decodeIfPresent(MachineID.self, forKey: "machineId")
        }
    }

    static func peek(_ data: Data) -> (paymentId: PaymentID?, machineId: MachineID?) {
        guard let peek = try? WireCoding.decode(Peek.self, from: data) else { return (nil, nil) }
        return (peek.paymentId, peek.machineId)
    }
}
