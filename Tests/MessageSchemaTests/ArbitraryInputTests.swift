import Foundation
import MessageSchema
import PropertyBased
import Testing

/// Whatever bytes arrive, opening them ends in a clear refusal, never a trap. Every payload
/// over 8 KiB is refused before it is parsed, so work is bounded by 8 KiB of linear parsing.
@Suite struct ArbitraryInputTests {
    // Per test, not static: a process-lifetime key shows up in LeakSanitizer's report.
    let key = try! Ed25519PrivateKey()
    var trust: TrustStore { TrustStore([TrustedKey(kid: "pay-1", purpose: .payment, publicKey: key.publicKey)]) }
    var valid: Data { SignedEnvelope.sign(MessageTests.payment, kid: "pay-1", key: key).encoded() }

    func open(_ data: Data) -> Result<Verified<PaymentCompleted>, Refusal> {
        Result { () throws(Refusal) in try SignedEnvelope.open(data, as: PaymentCompleted.self, trust: trust) }
    }

    @Test func validEnvelopeOpens() throws {
        #expect(try open(valid).get().body == MessageTests.payment)
    }

    @Test func randomBytesAreRefused() async {
        await propertyCheck(count: 500, input: Gen.uint8().array(of: 0...2048)) { bytes in
            #expect(throws: Refusal.self) { try open(Data(bytes)).get() }
        }
    }

    @Test func randomlyMutatedEnvelopesNeverTrap() async {
        await propertyCheck(count: 500, input: Gen.int(in: 0...(valid.count - 1)), Gen.uint8()) { index, byte in
            var data = valid
            data[index] = byte
            // A mutation may be harmless (e.g. inside the key's whitespace); either way it ends.
            switch open(data) {
            case .success(let verified): #expect(verified.body.amount >= 1)
            case .failure(let refusal): #expect(!refusal.description.isEmpty)
            }
        }
    }

    @Test func everyTruncationIsMalformed() {
        for length in 0..<valid.count {
            guard case .failure(let refusal) = open(valid.prefix(length)) else {
                Issue.record("a \(length)-byte prefix opened")
                continue
            }
            #expect(refusal.reason == .malformed)
        }
    }

    @Test(arguments: [100, 1000, 4000])
    func deeplyNestedJSONIsMalformed(depth: Int) {
        let arrays = Data((String(repeating: "[", count: depth) + String(repeating: "]", count: depth)).utf8)
        let objects = Data((String(repeating: #"{"a":"#, count: depth) + "1" + String(repeating: "}", count: depth)).utf8)
        for data in [arrays, objects] {
            guard case .failure(let refusal) = open(data) else {
                Issue.record("nested JSON opened")
                continue
            }
            #expect(refusal.reason == .malformed)
        }
        // The same nesting inside a signed body.
        let body = String(decoding: arrays.prefix(6000), as: UTF8.self)
        let envelope = SignedEnvelope.sign(body: body, kid: "pay-1", key: key).encoded()
        if case .failure(let refusal) = open(envelope) { #expect(refusal.reason == .malformed) } else {
            Issue.record("nested body opened")
        }
    }

    @Test func oneMebibytePayloadIsRefusedBeforeParsing() {
        for fill in [UInt8(ascii: "["), UInt8(ascii: " "), UInt8(ascii: "a")] {
            let data = Data(repeating: fill, count: 1 << 20)
            guard case .failure(let refusal) = open(data) else {
                Issue.record("1 MiB opened")
                continue
            }
            #expect(refusal.description.contains("over the 8 KiB limit"))
        }
    }

    @Test func wrongJSONTypesAtTheTopAreMalformed() {
        for text in ["null", "1", "\"text\"", "[]", "true", "{\"v\":\"1\"}", "{\"v\":1,\"kid\":5}", "\u{FEFF}{}", "{\"v\":1e400}"] {
            guard case .failure(let refusal) = open(Data(text.utf8)) else {
                Issue.record("\(text) opened")
                continue
            }
            #expect(refusal.reason == .malformed, "\(text)")
        }
    }

    @Test func invalidUTF8IsMalformed() {
        var data = valid
        data.append(contentsOf: [0xFF, 0xFE])
        data.insert(0xC3, at: 20)
        if case .failure(let refusal) = open(data) { #expect(refusal.reason == .malformed) } else {
            Issue.record("invalid UTF-8 opened")
        }
    }
}
