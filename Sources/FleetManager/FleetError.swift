/// An operator-facing failure: what went wrong and what to do about it. The CLI prints
/// `description` and exits non-zero; no stack trace.
public struct FleetError: Error, Sendable, CustomStringConvertible {
    public var problem: String
    public var hint: String?
    /// Process exit code for the CLI.
    public var exitCode: Int32

    public init(_ problem: String, hint: String? = nil, exitCode: Int32 = 1) {
        self.problem = problem
        self.hint = hint
        self.exitCode = exitCode
    }

    public var description: String {
        hint.map { "\(problem)\n  → \($0)" } ?? problem
    }
}
