import ArgumentParser
import DaemonSupport
import FleetConsole
import FleetManager
import Foundation
import Logging
import PulseBridgeVersion
import MessageSchema
import PaymentSDK
import ServiceLifecycle

struct Pay: FleetCommand {
    static let configuration = CommandConfiguration(
        abstract: "Act as a payment server: sign and publish a payment, wait for the result.",
        discussion: """
            Exit codes: 0 credited; 2 rejected; 3 duplicate; 4 uncertain; 5 no result yet (unknown: keep the
            authorisation, `serve` settles it when the result comes or the machine is back online after the
            payment expired); 6 machine not online; 7 no result, and the machine came back online after the
            payment expired (void).
            """)
    @OptionGroup var options: HomeOptions
    @Argument(help: "The machine ID.") var machineId: String
    @Argument(help: "Amount in minor units of the fleet's currency.") var amount: Int
    @Option(help: "The paying user's ID.") var user: String
    @Option(help: "Seconds the payment stays valid (1–600).") var ttl = 30
    @Option(help: "Payment ID (default: generated). Reuse one to send the same payment again.") var paymentId: String?
    @Flag(help: "Pay even if the machine's status is not online.") var force = false
    @Flag(help: "Print the result as JSON.") var json = false
    var audit: AuditAction? { AuditAction(action: "pay", target: machineId, detail: "\(amount) for \(user)\(paymentId.map { " as \($0)" } ?? "")") }
    @Option(help: "Seconds to keep waiting past expiresAt + 5 s for a late result, or for proof that there is none.")
    var unknownWait = 30

    func run(home: FleetHome) async throws {
        guard let machine = MachineID(rawValue: machineId) else { throw FleetError("'\(machineId)' is not a machine ID") }
        guard let userId = UserID(rawValue: user) else { throw FleetError("--user must be 1 to 128 characters without control characters") }
        guard let currency = CurrencyCode(rawValue: home.settings.currency) else { throw FleetError("the fleet's currency is invalid") }
        let id = try paymentId.map { raw -> PaymentID in
            guard let id = PaymentID(rawValue: raw) else { throw FleetError("'\(raw)' is not a payment ID (\(PaymentID.rule))") }
            return id
        }
        guard ProtocolLimits.amountRange.contains(amount) else {
            throw FleetError("the amount must be 1 to 10,000,000 minor units, not \(amount)")
        }
        guard ProtocolLimits.paymentLifetimeMs.contains(ttl * 1000) else { throw FleetError("--ttl must be 1 to 600 seconds, not \(ttl)") }
        let (kid, key) = try home.signingKey(.payment)
        let payments = try await PaymentClient.connect(
            home.settings.paymentServer, topics: home.topics, kid: kid, key: key, persistentSession: false)
        let status = await payments.status(of: machine)
        if status?.state != .online && !force {
            await payments.close()
            throw FleetError(
                "\(machine) is \(status?.state.rawValue ?? "unknown (no status)"): not charging for a machine that cannot credit",
                hint: "check the unit; --force pays anyway", exitCode: 6)
        }
        let outcome = try await payments.pay(
            machine, amount: amount, currency: currency, userId: userId, ttl: .seconds(ttl), paymentId: id,
            unknownWait: .seconds(max(0, unknownWait)))
        await payments.close()
        guard let result = outcome.result else {
            if json {
                print("{\"paymentId\":\"\(outcome.payment.paymentId)\",\"result\":null,\"action\":\"\(outcome.action.rawValue)\"}")
            } else if outcome.action == .void {
                print("\(outcome.payment.paymentId): no result, and \(machine) came back online after the payment expired → void")
            } else {
                print("\(outcome.payment.paymentId): no result yet → unknown: keep the authorisation (no result is not a void); `fleet-manager payments --open` shows it until it settles")
            }
            throw ExitCode(outcome.action == .void ? 7 : 5)
        }
        if json {
            var object = (try? JSONSerialization.jsonObject(with: WireCoding.encode(result))) as? [String: Any] ?? [:]
            object["action"] = outcome.action.rawValue
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        } else {
            var line = "\(outcome.payment.paymentId): \(result.status.rawValue)"
            if let reason = result.reason { line += " (\(reason.rawValue))" }
            if let original = result.original { line += ", first decision: \(original.status.rawValue)\(original.reason.map { " (\($0.rawValue))" } ?? "")" }
            line += "; amount \(result.amount) \(currency); pulses \(result.pulses.map { "\($0.channel)×\($0.count)" }.joined(separator: " ")) fired \(result.pulsesFired) → \(outcome.action.rawValue)"
            print(line)
        }
        switch result.status {
        case .credited: return
        case .rejected: throw ExitCode(2)
        case .duplicate: throw ExitCode(3)
        case .uncertain: throw ExitCode(4)
        }
    }
}

