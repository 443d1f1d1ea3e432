import EdgeAgent
import Foundation
import MessageSchema
import PropertyBased
import RelayOutput
import Testing

/// PROTOCOL.md's decision table, row by row, against the pure core (no broker, no journal, no
/// lines: microseconds a row); then every ordering of the rows against a model that lists the
/// rows that apply and takes the first. DecisionTableTests keeps the same rows end to end
/// against the real binary.
@Suite struct DecisionCoreTests {
    // Fixed test keys, made afresh at each use: a key held in a static for the whole run is
    // reported by LeakSanitizer at exit (its `Data` is reachable only through a pointer that
    // carries Swift's enum tag bits, which LSan does not recognise).
    static var key: Ed25519PrivateKey {
        try! Ed25519PrivateKey(pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIKShlzdztaOlBEGE0/9V4Ui65AXwB4hXTLblHM90U4C3\n-----END PRIVATE KEY-----\n")
    }
    static var fleetKey: Ed25519PrivateKey {
        try! Ed25519PrivateKey(pem: "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIESX5AygDIInhQQenAhFltNTK3unOduqLqYBNJp9mXiL\n-----END PRIVATE KEY-----\n")
    }
    static var trust: TrustStore {
        TrustStore([
            TrustedKey(kid: "pay-1", purpose: .payment, publicKey: key.publicKey),
            TrustedKey(kid: "fleet-1", purpose: .fleet, publicKey: fleetKey.publicKey),
        ])
    }
    static let now = 1_800_000_000_000
    static let coin = OutputConfig(channel: "coin", chip: "gpiochip0", line: 17, valuePerPulse: 100, pulseMs: 50, gapMs: 50)

    /// The facts of a payable payment, changed by each row.
    struct Situation: Sendable {
        var machineId: MachineID = "wash-01"
        var amount = 300
        var currency: CurrencyCode = "JPY"
        var issuedAt = DecisionCoreTests.now - 1_000
        var expiresAt = DecisionCoreTests.now + 29_000
        var payload: Data?
        var first: OriginalDecision?
        var now = DecisionCoreTests.now
        var clock = ClockGuard.Verdict.trusted
        var journalCreatedAt: Int? = DecisionCoreTests.now - 86_400_000
        var configured = true
        var maxAmount = 10_000
        var waitMs = 0

        var payment: PaymentCompleted {
            PaymentCompleted(
                paymentId: "p-core-1", machineId: machineId, amount: amount, currency: currency, userId: "u-1", issuedAt: issuedAt,
                expiresAt: expiresAt)
        }

        var facts: DecisionCore.Facts {
            let bytes = payload ?? SignedEnvelope.sign(payment, kid: "pay-1", key: DecisionCoreTests.key).encoded()
            let opened = Result { () throws(Refusal) in try SignedEnvelope.open(bytes, as: PaymentCompleted.self, trust: DecisionCoreTests.trust) }
            let config = MachineConfig(
                machineId: "wash-01", version: 1, issuedAt: DecisionCoreTests.now - 60_000, currency: "JPY", maxAmount: maxAmount,
                heartbeatS: 30, postVendDelayMs: 500, outputs: [DecisionCoreTests.coin], inhibit: nil, trust: nil)
            return DecisionCore.Facts(
                opened: opened, machine: "wash-01", first: first, now: now, clock: clock, journalCreatedAt: journalCreatedAt,
                config: configured ? config : nil, waitMs: waitMs)
        }
    }

    /// What a row expects.
    enum Expected: Sendable, Hashable {
        case refused(RejectionReason)
        case wrongMachine
        case duplicate
        case rejected(RejectionReason)
        case fire(pulses: Int)
    }

    struct Row: Sendable, CustomTestStringConvertible {
        var name: String
        var change: @Sendable (inout Situation) -> Void
        var expected: Expected
        var testDescription: String { name }
    }

    static let rows: [Row] = [
        Row(name: "payable", change: { _ in }, expected: .fire(pulses: 3)),
        Row(name: "not JSON", change: { $0.payload = Data("{not json".utf8) }, expected: .refused(.malformed)),
        Row(name: "over 8 KiB", change: { $0.payload = Data(repeating: UInt8(ascii: " "), count: 9_000) }, expected: .refused(.malformed)),
        Row(name: "body field invalid", change: { s in
            s.payload = SignedEnvelope.sign(body: #"{"type":"payment.completed","paymentId":"p-1"}"#, kid: "pay-1", key: DecisionCoreTests.key).encoded()
        }, expected: .refused(.malformed)),
        Row(name: "unknown kid", change: { s in
            s.payload = SignedEnvelope.sign(s.payment, kid: "pay-9", key: DecisionCoreTests.key).encoded()
        }, expected: .refused(.unknownKey)),
        Row(name: "fleet key signs a payment", change: { s in
            s.payload = SignedEnvelope.sign(s.payment, kid: "fleet-1", key: DecisionCoreTests.fleetKey).encoded()
        }, expected: .refused(.unknownKey)),
        Row(name: "forged signature", change: { s in
            s.payload = SignedEnvelope.sign(s.payment, kid: "pay-1", key: DecisionCoreTests.fleetKey).encoded()
        }, expected: .refused(.badSignature)),
        Row(name: "another machine", change: { $0.machineId = "wash-02" }, expected: .wrongMachine),
        Row(name: "decided before", change: { $0.first = OriginalDecision(status: .credited, reason: nil, amount: 300) }, expected: .duplicate),
        Row(name: "clock behind what the unit has seen", change: { $0.clock = .behind(floor: DecisionCoreTests.now + 1) }, expected: .rejected(.expired)),
        Row(name: "clock not synchronised", change: { $0.clock = .unsynchronised }, expected: .rejected(.expired)),
        Row(name: "expired", change: { $0.now = $0.expiresAt + 1 }, expected: .rejected(.expired)),
        Row(name: "issued 31 s ahead", change: { $0.issuedAt = DecisionCoreTests.now + 31_000; $0.expiresAt = DecisionCoreTests.now + 60_000 },
            expected: .rejected(.notYetValid)),
        Row(name: "issued 30 s ahead: valid", change: { $0.issuedAt = DecisionCoreTests.now + 30_000; $0.expiresAt = DecisionCoreTests.now + 60_000 },
            expected: .fire(pulses: 3)),
        Row(name: "issued before this journal existed", change: { $0.journalCreatedAt = $0.issuedAt + 1 }, expected: .rejected(.expired)),
        Row(name: "not configured", change: { $0.configured = false }, expected: .rejected(.notConfigured)),
        Row(name: "other currency", change: { $0.currency = "EUR" }, expected: .rejected(.currencyMismatch)),
        Row(name: "over the limit", change: { $0.amount = 10_100 }, expected: .rejected(.overLimit)),
        Row(name: "at the limit", change: { $0.amount = 10_000 }, expected: .fire(pulses: 100)),
        Row(name: "not payable in pulses", change: { $0.amount = 250 }, expected: .rejected(.amountNotPayable)),
        // 3 pulses = 300 ms; the train must end by expiresAt − 2 s.
        Row(name: "train would end too late", change: { $0.expiresAt = $0.now + 2_299 }, expected: .rejected(.expired)),
        Row(name: "train ends just in time", change: { $0.expiresAt = $0.now + 2_300 }, expected: .fire(pulses: 3)),
        Row(name: "too late after the quiet time", change: { $0.expiresAt = $0.now + 2_300; $0.waitMs = 1 }, expected: .rejected(.expired)),
        // The first row that applies wins.
        Row(name: "forged and for another machine: the signature first", change: { s in
            s.machineId = "wash-02"
            s.payload = SignedEnvelope.sign(s.payment, kid: "pay-1", key: DecisionCoreTests.fleetKey).encoded()
        }, expected: .refused(.badSignature)),
        Row(name: "decided before and expired now: duplicate", change: { s in
            s.first = OriginalDecision(status: .credited, reason: nil, amount: 300)
            s.now = s.expiresAt + 1
        }, expected: .duplicate),
        Row(name: "expired and not configured: expired", change: { $0.now = $0.expiresAt + 1; $0.configured = false }, expected: .rejected(.expired)),
        Row(name: "other currency and over the limit: currency", change: { $0.currency = "EUR"; $0.amount = 1_000_000 },
            expected: .rejected(.currencyMismatch)),
    ]

    static func kind(_ answer: DecisionCore.Answer) -> Expected {
        switch answer {
        case .refused(let reason, _): .refused(reason)
        case .wrongMachine: .wrongMachine
        case .duplicate: .duplicate
        case .rejected(_, let reason, _): .rejected(reason)
        case .fire(_, let plan): .fire(pulses: plan.totalPulses)
        }
    }

    @Test(arguments: rows) func row(_ row: Row) {
        var situation = Situation()
        row.change(&situation)
        #expect(Self.kind(DecisionCore.decide(situation.facts)) == row.expected)
    }

    @Test func aRefusalNamesThePaymentItCouldReadButADecisionNeedsASignature() {
        var situation = Situation()
        situation.payload = SignedEnvelope.sign(situation.payment, kid: "pay-1", key: Self.fleetKey).encoded()
        guard case .refused(.badSignature, let id) = DecisionCore.decide(situation.facts) else {
            Issue.record("not refused")
            return
        }
        #expect(id == "p-core-1")
    }

    @Test func aTrainTooLongForItsExpiryCarriesItsPlan() {
        var situation = Situation()
        situation.expiresAt = situation.now + 2_299
        guard case .rejected(_, .expired, let plan) = DecisionCore.decide(situation.facts) else {
            Issue.record("not rejected")
            return
        }
        #expect(plan == [PulseCount(channel: "coin", count: 3)])
    }

    @Test func planErrorsMapToTheWire() {
        #expect(PlanError.invalidAmount(0).reason == .malformed)
        #expect(PlanError.overLimit(amount: 2, maxAmount: 1).reason == .overLimit)
        #expect(PlanError.notPayable(amount: 2, values: [3]).reason == .amountNotPayable)
        #expect(PlanError.tooComplex(amount: 2, values: [3], entries: 1 << 21).reason == .amountNotPayable)
    }

    /// The relay layer's own line types carry every field of the configuration's.
    @Test func configurationLinesBecomeRelayLines() {
        let config = OutputConfig(channel: "bill", chip: "gpiochip1", line: 27, activeLow: true, valuePerPulse: 1000, pulseMs: 40, gapMs: 60)
        #expect(OutputLine(config) == OutputLine(channel: "bill", chip: "gpiochip1", line: 27, activeLow: true, valuePerPulse: 1000, pulseMs: 40, gapMs: 60))
        #expect(InhibitLine(InhibitConfig(chip: "gpiochip0", line: 22, activeLow: true)) == InhibitLine(chip: "gpiochip0", line: 22, activeLow: true))
    }

    @Test func theEnginesOutcomesMapOntoTheLastRows() {
        func row(_ train: TrainOutcome, _ refusal: StartRefusal? = nil) -> String {
            let (status, reason) = DecisionCore.outcome(of: train, refusal: refusal)
            return "\(status.rawValue) \(reason?.rawValue ?? "-")"
        }
        let fault = RelayError.writeFailed(chip: "gpiochip0", line: 17, reason: "test")
        #expect(row(.completed) == "credited -")
        #expect(row(.inhibitedBeforeStart) == "rejected machine_inhibited")
        #expect(row(.faultBeforeStart(fault)) == "rejected relay_fault")
        #expect(row(.declined, .expired) == "rejected expired")
        #expect(row(.declined, .journal(CancellationError())) == "rejected relay_fault")
        #expect(row(.shutDown) == "rejected relay_fault")
        #expect(row(.inhibitedDuringTrain) == "uncertain inhibited_during_train")
        #expect(row(.faultDuringTrain(fault)) == "uncertain relay_fault")
        #expect(row(.cancelled) == "uncertain interrupted")
        // A train that started and has no decision is reported as interrupted.
        let started = StoredDecision(paymentId: "p-1", status: nil, reason: nil, amount: 0, decidedAt: 1)
        #expect(DecisionCore.original(of: started) == OriginalDecision(status: .uncertain, reason: .interrupted, amount: 0))
    }

    /// Random facts: the core answers with the first row that applies, as a model that checks
    /// every row on its own and takes the first says.
    @Test func everyCombinationAnswersWithTheFirstRowThatApplies() async {
        let flags = Gen.bool().array(of: 9)
        await propertyCheck(count: 400, input: flags, Gen.int(in: 0...4), Gen.int(in: 0...3_000)) { flags, clockCase, waitMs in
            var s = Situation()
            let forged = flags[0], otherMachine = flags[1], decided = flags[2], expired = flags[3], ahead = flags[4]
            let beforeJournal = flags[5], unconfigured = flags[6], otherCurrency = flags[7], overLimit = flags[8]
            if otherMachine { s.machineId = "wash-02" }
            if decided { s.first = OriginalDecision(status: .rejected, reason: .expired, amount: 0) }
            if expired { s.now = s.expiresAt + 1 }
            if ahead { s.issuedAt = s.now + 31_000; s.expiresAt = s.issuedAt + 60_000 }
            if beforeJournal { s.journalCreatedAt = s.issuedAt + 1 }
            if unconfigured { s.configured = false }
            if otherCurrency { s.currency = "EUR" }
            if overLimit { s.amount = 20_000 }
            s.clock = clockCase == 0 ? .behind(floor: s.now + 1) : clockCase == 1 ? .unsynchronised : .trusted
            s.waitMs = waitMs
            if forged { s.payload = SignedEnvelope.sign(s.payment, kid: "pay-1", key: Self.fleetKey).encoded() }

            let trainEnd = s.now + waitMs + 300
            let model: [(Bool, Expected)] = [
                (forged, .refused(.badSignature)),
                (otherMachine, .wrongMachine),
                (decided, .duplicate),
                (s.clock != .trusted, .rejected(.expired)),
                (s.now > s.expiresAt, .rejected(.expired)),
                (s.issuedAt > s.now + 30_000, .rejected(.notYetValid)),
                (beforeJournal, .rejected(.expired)),
                (unconfigured, .rejected(.notConfigured)),
                (otherCurrency, .rejected(.currencyMismatch)),
                (overLimit, .rejected(.overLimit)),
                (trainEnd > s.expiresAt - 2_000, .rejected(.expired)),
                (true, .fire(pulses: 3)),
            ]
            let expected = model.first { $0.0 }!.1
            #expect(Self.kind(DecisionCore.decide(s.facts)) == expected)
        }
    }
}
