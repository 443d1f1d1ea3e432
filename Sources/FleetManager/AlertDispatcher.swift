import ChildProcesses
import Foundation
import Logging
import MessageSchema
import ServiceLifecycle

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// Delivers alert events (opened, resolved) from the registry's outbox to the operator's
/// targets: webhooks (JSON, HMAC-signed) and an exec hook. A failed attempt is retried with
/// exponential backoff; after `maxAttempts` the delivery is dead (`fleet-manager alerts
/// deliveries --dead`). Deliveries are rows written in the same transaction as the alert, so a
/// crash of `serve` loses none: the next start delivers what was pending. A `Service`.
public final class AlertDispatcher: Service, Sendable {
    public enum Target: Sendable, Hashable {
        /// POSTs each event to `url`, signed with `secret`.
        case webhook(url: String, secret: String)
        /// Runs `command` (by `/bin/sh -c`) with the event in its environment.
        case exec(command: String)

        /// How the registry names it (deliveries are kept per target).
        public var name: String {
            switch self {
            case .webhook(let url, _): "webhook \(url)"
            case .exec(let command): "exec \(command)"
            }
        }
    }

    public struct Options: Sendable {
        public var targets: [Target] = []
        /// Attempts before a delivery is dead.
        public var maxAttempts = 8
        /// The wait after the first failure; it doubles after each, up to `maxRetryDelay`.
        public var firstRetryDelay: Duration = .seconds(5)
        public var maxRetryDelay: Duration = .seconds(600)
        /// How long one attempt may take.
        public var attemptTimeout: Duration = .seconds(10)
        /// How often due retries are looked for when nothing wakes the dispatcher.
        public var pollInterval: Duration = .seconds(1)
        public init() {}
    }

    let registry: Registry
    let options: Options
    let logger: Logger
    private let wakes: AsyncStream<Void>
    private let wakeContinuation: AsyncStream<Void>.Continuation

    public init(registry: Registry, options: Options, logger: Logger = Logger(label: "pulsebridge.alerts")) {
        self.registry = registry
        self.options = options
        self.logger = logger
        (wakes, wakeContinuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    }

    /// Something was queued: deliver it now rather than at the next poll.
    public func wake() { wakeContinuation.yield() }

    public func run() async throws {
        try registry.setAlertTargets(options.targets.map(\.name))
        guard !options.targets.isEmpty else {
            try await gracefulShutdown()
            return
        }
        let poll = options.pollInterval
        let ticker = Task { [wakeContinuation] in
            while !Task.isCancelled {
                try? await Task.sleep(for: poll)
                wakeContinuation.yield()
            }
        }
        defer { ticker.cancel() }
        wake()
        for await _ in wakes.cancelOnGracefulShutdown() {
            await deliverDue()
        }
    }

    /// Every delivery due now, oldest first.
    public func deliverDue() async {
        while true {
            let due: [AlertDelivery]
            do {
                due = try registry.dueAlertDeliveries(now: Registry.now(), limit: 32)
            } catch {
                logger.error("cannot read the alert deliveries: \(error)")
                return
            }
            if due.isEmpty { return }
            for delivery in due {
                guard let target = options.targets.first(where: { $0.name == delivery.target }) else { continue }
                let outcome = await attempt(delivery, target)
                do {
                    try registry.recordAttempt(delivery.id, outcome)
                } catch {
                    logger.error("cannot record alert delivery \(delivery.id): \(error)")
                    return
                }
                if case .failed(let error, let retryAt) = outcome {
                    logger.warning(
                        "alert delivery \(delivery.id) to \(delivery.target) failed (attempt \(delivery.attempts + 1) of \(options.maxAttempts)): \(error)\(retryAt == nil ? "; dead" : "")")
                }
            }
            if due.count < 32 { return }
        }
    }

    /// One attempt, and when to try again after a failure.
    func attempt(_ delivery: AlertDelivery, _ target: Target) async -> Registry.DeliveryOutcome {
        let body = Self.body(delivery)
        let error: String?
        switch target {
        case .webhook(let url, let secret):
            error = await post(body, to: url, secret: secret, delivery: delivery)
        case .exec(let command):
            error = await run(command, body: body, delivery: delivery)
        }
        guard let error else { return .delivered }
        let attempts = delivery.attempts + 1
        guard attempts < options.maxAttempts else { return .failed(error, retryAt: nil) }
        return .failed(error, retryAt: Registry.now() + Self.retryDelayMs(afterFailures: attempts, options))
    }

    /// first × 2^(failures − 1), at most `maxRetryDelay`.
    static func retryDelayMs(afterFailures failures: Int, _ options: Options) -> Int {
        let first = Int(options.firstRetryDelay.components.seconds * 1000 + options.firstRetryDelay.components.attoseconds / 1_000_000_000_000_000)
        let max = Int(options.maxRetryDelay.components.seconds * 1000)
        let doubled = first << Swift.min(failures - 1, 30)
        return Swift.min(doubled, max)
    }

    /// The event as JSON: what the webhook receives as its body and the exec hook in
    /// `PULSEBRIDGE_ALERT_JSON`.
    public static func body(_ delivery: AlertDelivery) -> Data {
        struct Event: Encodable {
            var type: String
            var deliveryId: Int
            var at: Int
            var alert: AlertRecord
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let event = Event(type: "alert.\(delivery.event.rawValue)", deliveryId: delivery.id, at: delivery.at, alert: delivery.alert)
        return (try? encoder.encode(event)) ?? Data()
    }

    /// `t=<unix ms>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`: the receiver recomputes it and
    /// refuses an old `t` (a replay).
    public static func signature(body: Data, secret: String, at ms: Int) -> String {
        "t=\(ms),v1=\(HMAC.sha256Hex(key: secret, message: Array("\(ms).".utf8) + body))"
    }

    /// nil when the receiver answered 2xx; else what went wrong.
    private func post(_ body: Data, to url: String, secret: String, delivery: AlertDelivery) async -> String? {
        guard let endpoint = URL(string: url) else { return "'\(url)' is not a URL" }
        var request = URLRequest(url: endpoint)
        request.httpMethod = "POST"
        request.httpBody = body
        request.timeoutInterval = Double(options.attemptTimeout.components.seconds)
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("alert.\(delivery.event.rawValue)", forHTTPHeaderField: "PulseBridge-Event")
        request.setValue("\(delivery.id)", forHTTPHeaderField: "PulseBridge-Delivery")
        request.setValue(Self.signature(body: body, secret: secret, at: Registry.now()), forHTTPHeaderField: "PulseBridge-Signature")
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = request.timeoutInterval
        configuration.timeoutIntervalForResource = request.timeoutInterval
        let session = URLSession(configuration: configuration)
        defer { session.finishTasksAndInvalidate() }
        return await withCheckedContinuation { continuation in
            session.dataTask(with: request) { _, response, error in
                if let error {
                    continuation.resume(returning: error.localizedDescription)
                } else if let status = (response as? HTTPURLResponse)?.statusCode, !(200..<300).contains(status) {
                    continuation.resume(returning: "HTTP \(status)")
                } else {
                    continuation.resume(returning: nil)
                }
            }.resume()
        }
    }

    /// nil when the command exited 0; else its status and the end of its output.
    private func run(_ command: String, body: Data, delivery: AlertDelivery) async -> String? {
        var environment = ProcessInfo.processInfo.environment
        environment["PULSEBRIDGE_ALERT_JSON"] = String(decoding: body, as: UTF8.self)
        environment["PULSEBRIDGE_ALERT_EVENT"] = "alert.\(delivery.event.rawValue)"
        environment["PULSEBRIDGE_ALERT_MACHINE"] = delivery.alert.machineId
        environment["PULSEBRIDGE_ALERT_KIND"] = delivery.alert.kind.rawValue
        environment["PULSEBRIDGE_ALERT_ID"] = "\(delivery.alert.id)"
        let output = NSTemporaryDirectory() + "pulsebridge-alert-\(delivery.id)-\(UUID().uuidString.prefix(8)).out"
        defer { unlink(output) }
        let child: ChildProcess
        do {
            child = try ChildProcess.spawn("/bin/sh", ["-c", command], environment: environment, outputPath: output)
        } catch {
            return "\(error)"
        }
        guard let status = await child.waitForExit(timeout: options.attemptTimeout) else {
            _ = await child.killAndWait()
            return "did not finish within \(options.attemptTimeout)"
        }
        if status == .exited(0) { return nil }
        let said = child.output().split(separator: "\n").suffix(2).joined(separator: " / ")
        return "\(status)\(said.isEmpty ? "" : ": \(said.prefix(300))")"
    }
}
