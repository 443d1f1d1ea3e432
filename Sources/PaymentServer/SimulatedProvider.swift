import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import GRDB
import Logging
import MessageSchema

/// A provider that behaves like a real hosted checkout, with test cards instead of money. It
/// keeps its own ledger (table `simulatedAuthorization`), serves its checkout page under
/// `/simulated-provider/`, and confirms the `webhook` card asynchronously with a signed webhook
/// over HTTP, as a real provider would.
public final class SimulatedProvider: PaymentProvider {
    /// The test cards. What the customer picks on the simulated checkout page.
    public enum TestCard: String, Sendable, CaseIterable {
        case approve = "4242424242424242"
        case decline = "4000000000000002"
        case timeout = "4000000000000119"
        case captureFails = "4000000000000341"
        case webhook = "4000000000003220"

        public var label: String {
            switch self {
            case .approve: "Approve"
            case .decline: "Decline"
            case .timeout: "Provider times out"
            case .captureFails: "Approve, then capture fails"
            case .webhook: "Approve later (webhook)"
            }
        }
    }

    public let name = "simulated"
    private let database: DatabasePool
    private let publicUrl: String
    private let webhookSecret: [UInt8]
    private let logger: Logger

    init(store: PaymentStore, publicUrl: String, webhookSecret: String, logger: Logger) {
        database = store.database
        self.publicUrl = publicUrl.hasSuffix("/") ? String(publicUrl.dropLast()) : publicUrl
        self.webhookSecret = Array(webhookSecret.utf8)
        self.logger = logger
    }

    static func now() -> Int { Int(Date().timeIntervalSince1970 * 1000) }

    public func beginCheckout(_ request: CheckoutRequest, idempotencyKey: String) async throws -> CheckoutSession {
        let ref = try await database.write { db -> String in
            if let ref = try String.fetchOne(db, sql: "SELECT ref FROM simulatedAuthorization WHERE paymentId = ?", arguments: [idempotencyKey]) {
                return ref
            }
            let ref = "sim_" + RandomToken.make(bits: 100)
            try db.execute(
                sql: """
                    INSERT INTO simulatedAuthorization (ref, paymentId, amount, currency, state, createdAt, updatedAt)
                    VALUES (?, ?, ?, ?, 'pending', ?, ?)
                    """,
                arguments: [ref, idempotencyKey, request.amount, request.currency, Self.now(), Self.now()])
            return ref
        }
        let returnURL = request.returnURL.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
        return CheckoutSession(ref: ref, redirectURL: "\(publicUrl)/simulated-provider/checkout/\(ref)?return=\(returnURL)")
    }

    struct Authorization {
        var ref: String
        var paymentId: String
        var amount: Int
        var currency: String
        var state: AuthorizationState
        var card: TestCard?
        var captured: Int
    }

    func record(_ ref: String) throws -> Authorization? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM simulatedAuthorization WHERE ref = ?", arguments: [ref]).map {
                Authorization(
                    ref: $0["ref"], paymentId: $0["paymentId"], amount: $0["amount"], currency: $0["currency"],
                    state: AuthorizationState(rawValue: $0["state"]) ?? .pending, card: ($0["card"] as String?).flatMap(TestCard.init),
                    captured: $0["captured"])
            }
        }
    }

    private func update(_ ref: String, state: AuthorizationState, from: [AuthorizationState], set extra: String = "") throws -> Bool {
        try database.write { db in
            let placeholders = from.map { _ in "?" }.joined(separator: ",")
            try db.execute(
                sql: "UPDATE simulatedAuthorization SET state = ?, updatedAt = ?\(extra) WHERE ref = ? AND state IN (\(placeholders))",
                arguments: StatementArguments([state.rawValue, "\(Self.now())", ref] + from.map(\.rawValue)))
            return db.changesCount == 1
        }
    }

    public func authorization(_ ref: String) async throws -> AuthorizationState {
        guard let record = try record(ref) else { throw ProviderError.refused("no authorisation \(ref)") }
        if record.card == .timeout { throw ProviderError.unavailable("timed out (test card \(TestCard.timeout.rawValue))") }
        return record.state
    }

    public func capture(_ ref: String, amount: Int, idempotencyKey: String) async throws {
        guard let record = try record(ref) else { throw ProviderError.refused("no authorisation \(ref)") }
        if record.state == .captured { return }  // the same capture again: idempotent
        guard record.state == .authorized else { throw ProviderError.refused("cannot capture an authorisation that is \(record.state.rawValue)") }
        guard amount <= record.amount else { throw ProviderError.refused("cannot capture \(amount), more than the \(record.amount) authorised") }
        if record.card == .captureFails { throw ProviderError.unavailable("capture failed (test card \(TestCard.captureFails.rawValue))") }
        _ = try update(ref, state: .captured, from: [.authorized], set: ", captured = \(amount)")
    }

    public func void(_ ref: String, idempotencyKey: String) async throws {
        guard let record = try record(ref) else { throw ProviderError.refused("no authorisation \(ref)") }
        switch record.state {
        case .voided, .declined: return
        case .pending, .authorized: _ = try update(ref, state: .voided, from: [.pending, .authorized])
        case .captured, .refunded: throw ProviderError.refused("cannot void a captured charge; refund it")
        }
    }

    public func refund(_ ref: String, amount: Int, idempotencyKey: String) async throws {
        guard let record = try record(ref) else { throw ProviderError.refused("no authorisation \(ref)") }
        if record.state == .refunded { return }
        guard record.state == .captured, amount <= record.captured else { throw ProviderError.refused("nothing captured to refund") }
        _ = try update(ref, state: .refunded, from: [.captured], set: ", refunded = \(amount)")
    }

    public func verifyWebhook(body: [UInt8], signature: String?) throws -> String {
        guard let signature, HMAC.equal(signature, HMAC.sha256Hex(key: webhookSecret, message: body)) else {
            throw ProviderError.refused("webhook signature does not verify")
        }
        struct Event: Decodable { var ref: String }
        guard let event = try? JSONDecoder().decode(Event.self, from: Data(body)) else {
            throw ProviderError.refused("webhook body is not an event")
        }
        return event.ref
    }

    // MARK: The hosted checkout (what a real provider runs on its own site)

    /// The customer picked `card` at the checkout: the provider decides.
    func pay(_ ref: String, card: TestCard) throws -> Bool {
        let state: AuthorizationState =
            switch card {
            case .approve, .captureFails, .timeout: .authorized
            case .decline: .declined
            case .webhook: .pending
            }
        let changed = try database.write { db in
            try db.execute(
                sql: "UPDATE simulatedAuthorization SET state = ?, card = ?, updatedAt = ? WHERE ref = ? AND state = 'pending' AND card IS NULL",
                arguments: [state.rawValue, card.rawValue, Self.now(), ref])
            return db.changesCount == 1
        }
        if changed && card == .webhook { confirmLater(ref) }
        return changed
    }

    /// The asynchronous confirmation: authorise, then tell the server by a signed webhook.
    private func confirmLater(_ ref: String) {
        let url = URL(string: "\(publicUrl)/webhooks/\(name)")!
        let secret = webhookSecret
        let logger = logger
        Task {
            try? await Task.sleep(for: .milliseconds(300))
            _ = try? update(ref, state: .authorized, from: [.pending])
            let body = Array(#"{"ref":"\#(ref)","event":"authorization.updated"}"#.utf8)
            var request = URLRequest(url: url)
            request.httpMethod = "POST"
            request.httpBody = Data(body)
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
            request.setValue(HMAC.sha256Hex(key: secret, message: body), forHTTPHeaderField: "X-Simulated-Signature")
            for attempt in 1...5 {
                if let (_, response) = try? await URLSession.shared.data(for: request),
                    (response as? HTTPURLResponse)?.statusCode == 200
                {
                    return
                }
                logger.warning("simulated provider: webhook delivery \(attempt) failed, retrying")
                try? await Task.sleep(for: .seconds(attempt))
            }
        }
    }
}
