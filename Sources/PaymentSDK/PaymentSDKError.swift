/// An error a payment server can show an operator: what went wrong and, where known, what to do.
public struct PaymentSDKError: Error, Sendable, CustomStringConvertible {
    public var problem: String
    public var hint: String?

    public init(_ problem: String, hint: String? = nil) {
        self.problem = problem
        self.hint = hint
    }

    public var description: String {
        hint.map { "\(problem)\n  → \($0)" } ?? problem
    }
}
