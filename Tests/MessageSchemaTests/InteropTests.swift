import Foundation
import LocalServices
import MessageSchema
import Testing

/// Envelopes signed by Python's `cryptography` (scripts/make-fixtures.py) give the expected
/// outcome, and envelopes signed here verify in Python.
@Suite struct InteropTests {
    struct Fixtures: Decodable {
        struct Case: Decodable, CustomStringConvertible {
            var name: String
            var kind: String
            var envelope: String
            var expect: String
            var field: String?
            var description: String { name }
        }
        var trust: [TrustEntry]
        var cases: [Case]
    }

    static let fixtures: Fixtures = {
        let url = Bundle.module.url(forResource: "Fixtures/envelopes", withExtension: "json")!
        return try! JSONDecoder().decode(Fixtures.self, from: Data(contentsOf: url))
    }()

    static var repositoryRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    @Test(arguments: fixtures.cases)
    func fixtureGivesTheExpectedOutcome(_ fixture: Fixtures.Case) throws {
        let trust = try TrustStore(entries: Self.fixtures.trust)
        let data = Data(fixture.envelope.utf8)
        let outcome: Result<Void, Refusal>
        switch fixture.kind {
        case "payment":
            outcome = Result { () throws(Refusal) in _ = try SignedEnvelope.open(data, as: PaymentCompleted.self, trust: trust) }
        case "config":
            outcome = Result { () throws(Refusal) in _ = try SignedEnvelope.open(data, as: MachineConfig.self, trust: trust) }
        default:
            Issue.record("unknown fixture kind \(fixture.kind)")
            return
        }
        switch outcome {
        case .success:
            #expect(fixture.expect == "ok", "accepted, expected \(fixture.expect)")
        case .failure(let refusal):
            #expect(refusal.reason.rawValue == fixture.expect, "\(refusal)")
            if let field = fixture.field, case .malformed(let actual, _) = refusal.error {
                #expect(actual == field, "\(refusal)")
            }
        }
    }

    @Test func paymentIDIsReadFromARefusedBody() throws {
        let trust = try TrustStore(entries: Self.fixtures.trust)
        let altered = Self.fixtures.cases.first { $0.name == "body altered by one byte" }!
        let outcome = Result { () throws(Refusal) in
            try SignedEnvelope.open(Data(altered.envelope.utf8), as: PaymentCompleted.self, trust: trust)
        }
        guard case .failure(let refusal) = outcome else {
            Issue.record("an altered body opened")
            return
        }
        #expect(refusal.reason == .badSignature)
        #expect(refusal.paymentId == "p-20261129-000123")
        #expect(refusal.machineId == "laundry-07")
    }

    @Test func fixturesAreWhatTheScriptMakes() async throws {
        let output = NSTemporaryDirectory() + "fixtures-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: output) }
        let status = try await runPython(["scripts/make-fixtures.py"], stdoutPath: output)
        #expect(status == 0)
        let regenerated = try Data(contentsOf: URL(fileURLWithPath: output))
        let committed = try Data(contentsOf: Self.repositoryRoot.appendingPathComponent("Tests/MessageSchemaTests/Fixtures/envelopes.json"))
        #expect(regenerated == committed, "re-run scripts/make-fixtures.py and commit the result")
    }

    @Test func envelopeSignedInSwiftVerifiesInPython() async throws {
        let key = try Ed25519PrivateKey()
        let body = PaymentCompleted(
            paymentId: "p-swift-1", machineId: "laundry-07", amount: 400, currency: "JPY", userId: "ユーザー",
            issuedAt: 1_764_442_800_000, expiresAt: 1_764_442_830_000)
        let envelope = SignedEnvelope.sign(body, kid: "pay-swift", key: key)
        let path = NSTemporaryDirectory() + "envelope-\(UUID().uuidString).json"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try envelope.encoded().write(to: URL(fileURLWithPath: path))
        #expect(try await runPython(["scripts/verify-envelope.py", path, key.publicKey.base64]) == 0)

        // The same envelope with one byte of the body changed does not.
        var tampered = envelope
        tampered.body = tampered.body.replacingOccurrences(of: "400", with: "500")
        try tampered.encoded().write(to: URL(fileURLWithPath: path))
        #expect(try await runPython(["scripts/verify-envelope.py", path, key.publicKey.base64]) == 1)
    }

    /// Runs python3 from the repository root and returns its exit code (standard output to
    /// `stdoutPath` if given).
    func runPython(_ arguments: [String], stdoutPath: String? = nil) async throws -> Int32 {
        let script = "cd \"$0\" && exec python3 \"$@\"" + (stdoutPath.map { " > '\($0)'" } ?? "")
        let child = try ChildProcess.spawn(
            "/bin/sh", ["-c", script, Self.repositoryRoot.path] + arguments,
            outputPath: NSTemporaryDirectory() + "python-\(UUID().uuidString).log")
        switch await child.waitForExit() {
        case .exited(let code): return code
        case .signalled(let signal): return 128 + signal
        }
    }
}

/// Ed25519 through OpenSSL against RFC 8032's own test vector, and key formats.
@Suite struct Ed25519Tests {
    // RFC 8032 §7.1, TEST 1 (empty message).
    static let seedHex = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
    static let publicHex = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    static let signatureHex =
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"

    static func bytes(_ hex: String) -> Data {
        var data = Data()
        var index = hex.startIndex
        while index < hex.endIndex {
            let next = hex.index(index, offsetBy: 2)
            data.append(UInt8(hex[index..<next], radix: 16)!)
            index = next
        }
        return data
    }

    /// PKCS#8 wrapping of a raw Ed25519 seed (RFC 8410).
    static func pem(seed: Data) -> String {
        let der = bytes("302e020100300506032b657004220420") + seed
        return "-----BEGIN PRIVATE KEY-----\n\(der.base64EncodedString())\n-----END PRIVATE KEY-----\n"
    }

    @Test func rfc8032Vector() throws {
        let key = try Ed25519PrivateKey(pem: Self.pem(seed: Self.bytes(Self.seedHex)))
        #expect(key.publicKey.rawRepresentation == Self.bytes(Self.publicHex))
        #expect(key.signature(for: Data()) == Self.bytes(Self.signatureHex))
        #expect(key.publicKey.isValidSignature(Self.bytes(Self.signatureHex), for: Data()))
        #expect(!key.publicKey.isValidSignature(Self.bytes(Self.signatureHex), for: Data([0])))
    }

    @Test func pemAndBase64RoundTrip() throws {
        let key = try Ed25519PrivateKey()
        let pem = key.pemRepresentation
        #expect(pem.hasPrefix("-----BEGIN PRIVATE KEY-----"))
        let again = try Ed25519PrivateKey(pem: pem)
        #expect(again.publicKey == key.publicKey)
        let message = Data("hello".utf8)
        #expect(key.publicKey.isValidSignature(again.signature(for: message), for: message))
        #expect(try Ed25519PublicKey(base64: key.publicKey.base64) == key.publicKey)
    }

    @Test func badKeysAreClearErrors() {
        #expect(throws: KeyError.self) { try Ed25519PublicKey(base64: "AAAA") }
        #expect(throws: KeyError.self) { try Ed25519PublicKey(base64: "not base64!") }
        #expect(throws: KeyError.self) { try Ed25519PrivateKey(pem: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n") }
        #expect(throws: KeyError.self) { try Ed25519PrivateKey(pem: "") }
    }

    @Test func sha256MatchesAKnownDigest() {
        #expect(SHA256Hasher.hex(of: Data("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }
}
