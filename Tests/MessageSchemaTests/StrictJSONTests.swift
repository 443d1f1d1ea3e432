import Foundation
import MessageSchema
import Testing

/// The JSON the protocol accepts (docs/protocol.md): I-JSON with integers only. Each case is
/// text Foundation alone would accept, so two parsers could read one signed body two ways.
@Suite struct StrictJSONTests {
    // Per test, not static: a process-lifetime key shows up in LeakSanitizer's report.
    let key = try! Ed25519PrivateKey()
    var trust: TrustStore { TrustStore([TrustedKey(kid: "pay-1", purpose: .payment, publicKey: key.publicKey)]) }

    static func body(_ amount: String, extra: String = "") -> String {
        #"{"type":"payment.completed","paymentId":"p-1","machineId":"laundry-07","amount":"# + amount
            + #","currency":"JPY","userId":"u-1","issuedAt":1764442800000,"expiresAt":1764442830000"# + extra + "}"
    }

    func open(_ body: String) -> Result<Verified<PaymentCompleted>, Refusal> {
        let envelope = SignedEnvelope.sign(body: body, kid: "pay-1", key: key).encoded()
        return Result { () throws(Refusal) in try SignedEnvelope.open(envelope, as: PaymentCompleted.self, trust: trust) }
    }

    @Test func theStrictTextOpens() throws {
        #expect(try open(Self.body("400")).get().body.amount == 400)
        // Escapes and nesting that are fine: no duplicate after unescaping, integers only.
        #expect(try open(Self.body("400", extra: #","note":{"a\u0062":[1,2,{"x":-3}],"ab ":true}"#)).get().body.amount == 400)
    }

    @Test(arguments: [
        ("400.0", "not an integer"), ("4e2", "not an integer"), ("400.5", "amount"), ("0400", "not valid JSON"),
    ])
    func nonIntegerNumbersAreMalformed(amount: String, mentions: String) {
        let refusal = open(Self.body(amount))
        guard case .failure(let error) = refusal else {
            Issue.record("\(amount) was accepted")
            return
        }
        #expect(error.reason == .malformed)
        #expect(error.description.contains(mentions), "\(error)")
    }

    @Test(arguments: [
        #","amount":9000"#,  // the same member twice: Foundation keeps the last
        #","\u0061mount":9000"#,  // the same name, escaped
        #","note":{"k":1,"k":2}"#,  // in a nested object too
    ])
    func duplicateMembersAreMalformed(extra: String) {
        let refusal = open(Self.body("400", extra: extra))
        guard case .failure(let error) = refusal else {
            Issue.record("a duplicate member was accepted")
            return
        }
        #expect(error.reason == .malformed)
        #expect(error.description.contains("appears twice"), "\(error)")
    }

    @Test func theEnvelopeItselfIsStrict() {
        let good = SignedEnvelope.sign(body: Self.body("400"), kid: "pay-1", key: key).encoded()
        var text = String(decoding: good, as: UTF8.self)
        text.insert(contentsOf: #""kid":"pay-2","#, at: text.index(after: text.startIndex))
        let refusal = Result { () throws(Refusal) in try SignedEnvelope.open(Data(text.utf8), as: PaymentCompleted.self, trust: trust) }
        guard case .failure(let error) = refusal else {
            Issue.record("an envelope with two kids was accepted")
            return
        }
        #expect(error.reason == .malformed)
    }

    @Test func payloadHashMustBeLowerHex() throws {
        let result = PaymentResult(
            paymentId: "p-1", machineId: "laundry-07", status: .rejected, reason: .badSignature, amount: 0, pulses: [], pulsesFired: 0,
            decidedAt: 1, bootId: "b", seq: 1, payloadSha256: String(repeating: "ab", count: 32))
        let decoded = try WireCoding.decode(PaymentResult.self, from: WireCoding.encode(result))
        #expect(decoded.payloadSha256 == result.payloadSha256)
        var bad = result
        bad.payloadSha256 = String(repeating: "AB", count: 32)
        #expect(throws: ProtocolError.self) { try WireCoding.decode(PaymentResult.self, from: WireCoding.encode(bad)) }
    }
}
