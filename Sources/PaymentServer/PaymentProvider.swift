import Foundation

/// What a payment provider knows of one authorisation.
public enum AuthorizationState: String, Sendable, Codable {
    /// The customer has not finished, or the provider confirms later (webhook).
    case pending
    case authorized
    case declined
    case captured
    case voided
    case refunded
}

/// Starting a hosted checkout for one payment.
public struct CheckoutRequest: Sendable {
    public var paymentId: String
    public var amount: Int
    public var currency: String
    /// What the customer sees at the provider.
    public var description: String
    /// Where the provider sends the customer back (the server then asks the provider).
    public var returnURL: String
}

public struct CheckoutSession: Sendable {
    /// The provider's reference for the authorisation.
    public var ref: String
    /// The provider's hosted page the customer is sent to.
    public var redirectURL: String
}

/// A provider refused or failed an operation.
public enum ProviderError: Error, Sendable, CustomStringConvertible {
    /// The provider did not answer (in time); nothing is known to have happened.
    case unavailable(String)
    /// The provider answered no.
    case refused(String)

    public var description: String {
        switch self {
        case .unavailable(let why): "the payment provider did not answer: \(why)"
        case .refused(let why): "the payment provider refused: \(why)"
        }
    }
}

/// The adapter contract every payment provider implements (docs/payment-server.md). Card data
/// never reaches PulseBridge: the customer enters it on the provider's hosted checkout, and the
/// server learns the outcome by asking (`authorization`) when the customer returns, or from a
/// signed webhook. Every money-moving call carries an idempotency key, so a retry after a
/// crash or a timeout never charges twice.
public protocol PaymentProvider: Sendable {
    var name: String { get }
    func beginCheckout(_ request: CheckoutRequest, idempotencyKey: String) async throws -> CheckoutSession
    func authorization(_ ref: String) async throws -> AuthorizationState
    func capture(_ ref: String, amount: Int, idempotencyKey: String) async throws
    func void(_ ref: String, idempotencyKey: String) async throws
    func refund(_ ref: String, amount: Int, idempotencyKey: String) async throws
    /// Checks a webhook's signature and returns the reference it is about.
    func verifyWebhook(body: [UInt8], signature: String?) throws -> String
}
