import RelayOutput
import ArgumentParser
import Foundation
import MessageSchema

/// Decode + verify + validate of a typical signed `payment.completed`, on one core.
struct EnvelopeVerification: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify", abstract: "Signed payment.completed envelopes opened per second (one core).")
    @Option(help: "Envelopes to open.")
    var count = 20_000
    @OptionGroup var output: OutputOptions

    func run() async throws {
        try output.print(try Self.measure(count: count))
    }

    static func measure(count: Int) throws -> [Measurement] {
        let key = try Ed25519PrivateKey()
        let trust = TrustStore([TrustedKey(kid: "pay-2026-11", purpose: .payment, publicKey: key.publicKey)])
        let now = Int(Date().timeIntervalSince1970 * 1000)
        let typical = SignedEnvelope.sign(
            PaymentCompleted(
                paymentId: "p-20261129-000123", machineId: "laundry-07", amount: 400, currency: "JPY",
                userId: "u-5f3a9c", issuedAt: now, expiresAt: now + 30_000),
            kid: "pay-2026-11", key: key
        ).encoded()
        // The worst input that is still parsed: 8 KiB of nesting inside a signed body.
        let nested = String(repeating: "[", count: 3000) + String(repeating: "]", count: 3000)
        let worst = SignedEnvelope.sign(body: nested, kid: "pay-2026-11", key: key).encoded()

        func rate(_ data: Data, expectOpen: Bool) throws -> Double {
            let start = monotonicNanoseconds()
            for _ in 0..<count {
                let opened = (try? SignedEnvelope.open(data, as: PaymentCompleted.self, trust: trust)) != nil
                guard opened == expectOpen else { throw ValidationError("unexpected outcome") }
            }
            return Double(count) / (Double(monotonicNanoseconds() - start) / 1e9)
        }
        let typicalRate = try rate(typical, expectOpen: true)
        let worstRate = try rate(worst, expectOpen: false)

        // The pieces of one open, each alone on the same envelope.
        func perCall(_ body: () throws -> Bool) throws -> Double {
            let start = monotonicNanoseconds()
            for _ in 0..<count { guard try body() else { throw ValidationError("a piece failed") } }
            return Double(monotonicNanoseconds() - start) / 1e3 / Double(count)
        }
        let envelope = try SignedEnvelope.parse(typical)
        let bodyBytes = Data(envelope.body.utf8)
        let parse = try perCall { (try? SignedEnvelope.parse(typical)) != nil }
        let decode = try perCall { (try? WireCoding.decode(PaymentCompleted.self, from: bodyBytes)) != nil }
        let signature = try perCall { key.publicKey.isValidSignature(envelope.signature, for: bodyBytes) }
        return [
            Measurement(benchmark: "verify.payment-envelope", metric: "envelope JSON + base64", value: parse, unit: "µs"),
            Measurement(benchmark: "verify.payment-envelope", metric: "body JSON, checked", value: decode, unit: "µs"),
            Measurement(benchmark: "verify.payment-envelope", metric: "Ed25519 verify", value: signature, unit: "µs"),
            Measurement(benchmark: "verify.payment-envelope", metric: "rate", value: typicalRate.rounded(), unit: "envelopes/s"),
            Measurement(benchmark: "verify.payment-envelope", metric: "per envelope", value: 1e6 / typicalRate, unit: "µs"),
            Measurement(benchmark: "verify.nested-8KiB-body", metric: "rate", value: worstRate.rounded(), unit: "envelopes/s"),
            Measurement(benchmark: "verify.payment-envelope", metric: "bytes", value: Double(typical.count), unit: "B"),
        ]
    }
}
