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

struct Serve: FleetCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch the fleet and keep the registry (state, heartbeats, configuration, payments) until SIGTERM.")
    @OptionGroup var options: HomeOptions
    @Option(help: "Minutes a new configuration may wait to be applied before it is an alert.") var configAlertMinutes = 10
    @Option(help: "Serve firmware artifacts over HTTP on HOST:PORT (e.g. 0.0.0.0:8080).") var firmwareListen: String?
    @Option(help: ArgumentHelp("POST each alert opened and resolved to this URL (JSON, signed; repeat for several).", valueName: "url"))
    var alertWebhook: [String] = []
    @Option(help: ArgumentHelp("The secret that signs alert webhooks (a file of its own, mode 0600).", valueName: "file"))
    var alertWebhookSecretFile: String?
    @Option(help: ArgumentHelp("Run this shell command for each alert opened and resolved (the event in PULSEBRIDGE_ALERT_JSON).", valueName: "command"))
    var alertExec: String?
    @Option(help: ArgumentHelp("Serve the operator console and /metrics on HOST:PORT (operators: fleet-manager operators add).", valueName: "host:port"))
    var http: String?
    @Option(help: ArgumentHelp("The URL operators open the console at, if not http://HOST:PORT (behind a TLS proxy: its https URL; the session cookie is then Secure).", valueName: "url"))
    var httpPublicUrl: String?
    @Option(help: ArgumentHelp("The bearer token a Prometheus scraper must send for /metrics (a file of its own, mode 0600).", valueName: "file"))
    var metricsTokenFile: String?
    @Option(help: "Attempts to deliver one alert event before it is dead.") var alertMaxAttempts = 8
    @Option(help: ArgumentHelp("Seconds before the first retry of a failed alert delivery (doubling after each failure, at most 10 minutes).", valueName: "seconds"))
    var alertFirstRetry = 5.0
    @Option(help: ArgumentHelp(
        "Settings file (TOML key = value lines; the keys are these options' names). Options on the command line and PULSEBRIDGE_SERVE_* environment variables override it.",
        valueName: "file")) var config: String?

    func run(home: FleetHome) async throws {
        let lock = try home.lockForServe()
        defer { close(lock) }
        var monitorOptions = FleetMonitor.Options()
        monitorOptions.configPendingAlert = .seconds(configAlertMinutes * 60)
        let logger = Logger(label: "pulsebridge.serve")
        let dispatcher = AlertDispatcher(registry: home.registry, options: try alertOptions(), logger: logger)
        let console = try consoleOptions()
        let metrics = console.map { _ in FleetMetrics() }
        let monitor = try FleetMonitor(home: home, options: monitorOptions, logger: logger, metrics: metrics, alertsChanged: { dispatcher.wake() })
        var artifacts: ArtifactServer?
        if let firmwareListen {
            guard let address = ListenAddress(firmwareListen) else {
                throw FleetError("--firmware-listen '\(firmwareListen)' is not HOST:PORT", hint: "e.g. --firmware-listen 0.0.0.0:8080 or [::]:8080")
            }
            artifacts = try ArtifactServer(root: FirmwareManager(home: home).artifactsDirectory, host: address.host, port: address.port)
        }
        defer { artifacts?.stop() }
        // One line at any log level: what this process watches and serves.
        let manager = home.settings.manager
        FileHandle.standardError.write(Data(
            "fleet-manager serve \(PulseBridgeVersion.current): watching '\(home.settings.topicRoot)' at \(manager.host):\(manager.port) for the fleet at \(home.path)\(artifacts.map { "; firmware artifacts on port \($0.port)" } ?? "")\n".utf8))
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [
            .init(service: monitor, successTerminationBehavior: .gracefullyShutdownGroup),
            .init(service: dispatcher, successTerminationBehavior: .gracefullyShutdownGroup),
        ]
        if var console, let metrics {
            console.paymentUrlTemplate = home.settings.paymentUrlTemplate
            let server = ConsoleServer(home: home, metrics: metrics, options: console, logger: logger)
            services.append(.init(service: server.application(), successTerminationBehavior: .gracefullyShutdownGroup))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }
}

extension Serve {
    func consoleOptions() throws -> ConsoleServer.Options? {
        guard let http else {
            if metricsTokenFile != nil { throw FleetError("--metrics-token-file needs --http HOST:PORT", hint: "/metrics is served on serve's HTTP address") }
            return nil
        }
        var options = ConsoleServer.Options()
        guard let address = ListenAddress(http) else {
            throw FleetError("--http '\(http)' is not HOST:PORT", hint: "e.g. --http 127.0.0.1:8090 or [::1]:8090")
        }
        options.host = address.host
        options.port = address.port
        if let httpPublicUrl {
            guard let url = URL(string: httpPublicUrl), url.scheme == "http" || url.scheme == "https", url.host != nil else {
                throw FleetError("--http-public-url '\(httpPublicUrl)' is not an http(s) URL")
            }
            options.publicUrl = httpPublicUrl
        }
        options.metricsToken = try metricsTokenFile.map { try readSecret(file: $0, value: nil, name: "metrics-token") }
        return options
    }

    func alertOptions() throws -> AlertDispatcher.Options {
        var options = AlertDispatcher.Options()
        if !alertWebhook.isEmpty {
            guard let file = alertWebhookSecretFile else {
                throw FleetError("--alert-webhook needs --alert-webhook-secret-file", hint: "write a secret (openssl rand -hex 32 > FILE; chmod 600 FILE) and give its path; receivers check the signature with it")
            }
            let secret = try readSecret(file: file, value: nil, name: "alert-webhook-secret")
            for url in alertWebhook {
                guard let parsed = URL(string: url), parsed.scheme == "http" || parsed.scheme == "https", parsed.host != nil else {
                    throw FleetError("--alert-webhook '\(url)' is not an http(s) URL")
                }
                options.targets.append(.webhook(url: url, secret: secret))
            }
        }
        if let alertExec { options.targets.append(.exec(command: alertExec)) }
        guard alertMaxAttempts >= 1 else { throw FleetError("--alert-max-attempts must be at least 1") }
        guard alertFirstRetry > 0 else { throw FleetError("--alert-first-retry must be more than 0 seconds") }
        options.maxAttempts = alertMaxAttempts
        options.firstRetryDelay = .milliseconds(Int(alertFirstRetry * 1000))
        options.pollInterval = min(.seconds(1), options.firstRetryDelay)
        return options
    }
}

func formatTime(_ ms: Int?) -> String {
    guard let ms else { return "-" }
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime]
    return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
}

struct Devices: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "The fleet at a glance (kept by `serve`).")
    @OptionGroup var options: HomeOptions
    @Flag(help: "Machine-readable output.") var json = false

    func run(home: FleetHome) async throws {
        let units = try home.registry.overviews(now: Registry.now())
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(units), as: UTF8.self))
            return
        }
        let rows = units.map { unit in
            [
                unit.machineId, unit.state, formatTime(unit.lastSeen), unit.firmware ?? "-",
                "\(unit.desiredConfigVersion.map(String.init) ?? "-")/\(unit.appliedConfigVersion.map(String.init) ?? "-")",
                unit.clockSkewMs.map { "\($0) ms" } ?? "-", "\(unit.counters?.credited ?? 0)", "\(unit.counters?.creditedAmount ?? 0)",
                unit.alerts.isEmpty ? "-" : unit.alerts.joined(separator: "; "),
            ]
        }
        print(FleetReports.render(
            headers: ["MACHINE", "STATE", "LAST SEEN", "FIRMWARE", "CONFIG D/A", "SKEW", "CREDITED", "AMOUNT", "ALERTS"],
            rows: rows, format: "table"), terminator: "")
    }
}

struct Device: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "One unit in detail.")
    @OptionGroup var options: HomeOptions
    @Argument(help: "The machine ID.") var machineId: String
    @Flag(help: "JSON instead of text.") var json = false

    func run(home: FleetHome) async throws {
        guard let unit = try home.registry.overviews(now: Registry.now()).first(where: { $0.machineId == machineId }) else {
            throw FleetError("no unit '\(machineId)' in the registry", hint: "`fleet-manager devices` lists the fleet")
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(unit), as: UTF8.self))
            return
        }
        let counters = unit.counters ?? PaymentCounters()
        print("""
            machine        \(unit.machineId) (\(unit.provisioning))
            state          \(unit.state)\(unit.offlineReason.map { " (\($0))" } ?? "")
            last seen      \(formatTime(unit.lastSeen))
            firmware       \(unit.firmware ?? "-")
            config         desired v\(unit.desiredConfigVersion.map(String.init) ?? "-"), applied v\(unit.appliedConfigVersion.map(String.init) ?? "-")\(unit.configReport.map { ", last report: \($0)" } ?? "")
            clock skew     \(unit.clockSkewMs.map { "\($0) ms" } ?? "-")
            relay          \(unit.relay ?? "-")\(unit.inhibited == true ? ", inhibited" : "")
            outbox         \(unit.outboxDepth.map(String.init) ?? "-")
            payments       credited \(counters.credited) (\(counters.creditedAmount)), rejected \(counters.rejected), duplicate \(counters.duplicate), uncertain \(counters.uncertain), pulses \(counters.pulses)
            alerts         \(unit.alerts.isEmpty ? "none" : unit.alerts.joined(separator: "; "))
            """)
    }
}

struct Config: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change unit configuration (new version, signed, retained).", subcommands: [Set.self, Apply.self, Status.self])

    static func targets(_ home: FleetHome, machineId: String?, all: Bool) throws -> [MachineID] {
        if all { return try home.registry.machines().map(\.id) }
        guard let raw = machineId, let machine = MachineID(rawValue: raw) else {
            throw FleetError("name a MACHINE-ID or pass --all")
        }
        return [machine]
    }

    struct Set: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "Set configuration values: maxAmount=, heartbeatS=, postVendDelayMs=, currency=, CHANNEL.pulseMs= (gapMs, valuePerPulse, line, chip, activeLow).")
        @OptionGroup var options: HomeOptions
        @Flag(help: "Every provisioned unit.") var all = false
        @Argument(help: "MACHINE-ID (unless --all), then KEY=VALUE pairs.") var arguments: [String]
        var audit: AuditAction? {
            all ? AuditAction(action: "config set", target: "--all", detail: arguments.joined(separator: " "))
                : AuditAction(action: "config set", target: arguments.first, detail: arguments.dropFirst().joined(separator: " "))
        }

        func run(home: FleetHome) async throws {
            var pairs = arguments
            var machineId: String?
            if !all, let first = pairs.first, !first.contains("=") { machineId = pairs.removeFirst() }
            guard !pairs.isEmpty else { throw FleetError("nothing to set", hint: "e.g. fleet-manager config set laundry-07 maxAmount=3000") }
            let targets = try Config.targets(home, machineId: machineId, all: all)
            try await home.withManagerClient(purpose: "config") { client in
                for machine in targets {
                    let config = try await ConfigPublisher(home: home, client: client).publish(machine) { profile in
                        for pair in pairs { try profile.set(pair) }
                    }
                    print("\(machine): configuration v\(config.version) published")
                }
            }
        }
    }

    struct Apply: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Replace units' configuration with a profile file.")
        @OptionGroup var options: HomeOptions
        @Argument(help: "Profile JSON (currency, maxAmount, heartbeatS, postVendDelayMs, outputs, inhibit).") var file: String
        @Argument(help: "The machine ID (or --all).") var machineId: String?
        @Flag(help: "Every provisioned unit.") var all = false
        var audit: AuditAction? { AuditAction(action: "config apply", target: all ? "--all" : machineId, detail: file) }

        func run(home: FleetHome) async throws {
            let profile = try MachineProfile.load(file)
            let targets = try Config.targets(home, machineId: machineId, all: all)
            try await home.withManagerClient(purpose: "config") { client in
                for machine in targets {
                    let config = try await ConfigPublisher(home: home, client: client).publish(machine) { $0 = profile }
                    print("\(machine): configuration v\(config.version) published")
                }
            }
        }
    }

    struct Status: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Which units applied which configuration version.")
        @OptionGroup var options: HomeOptions

        func run(home: FleetHome) async throws {
            let machines = try home.registry.machines()
            try await RetainedReports.refresh(home: home, machines: machines.map(\.id))
            let rows = try home.registry.machines().map { machine -> [String] in
                let desired = machine.desiredConfig?.version
                let state: String
                switch (machine.reportedStatus, machine.reportedVersion) {
                case ("applied", let v?) where v == desired: state = "applied"
                case ("rejected", let v?) where v == desired: state = "rejected (\(machine.reportedReason ?? "?"))"
                case (_, let v?): state = "pending (unit reports v\(v) \(machine.reportedStatus ?? ""))"
                default: state = "pending (no report yet)"
                }
                return [machine.id.rawValue, desired.map { "v\($0)" } ?? "-", state]
            }
            print(FleetReports.render(headers: ["MACHINE", "DESIRED", "STATUS"], rows: rows, format: "table"), terminator: "")
        }
    }
}

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
        let payments = try await PaymentClient.connect(home.settings.paymentServer, topics: home.topics, kid: kid, key: key)
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

struct Report: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "Customer and machine reports from recorded payments.")
    @OptionGroup var options: HomeOptions
    @Argument(help: "customers or machines.") var kind: String
    @Option(help: "From this day (YYYY-MM-DD, UTC), inclusive.") var from: String?
    @Option(help: "To this day (YYYY-MM-DD, UTC), inclusive.") var to: String?
    @Option(help: "table, csv or json.") var format = "table"

    func run(home: FleetHome) async throws {
        guard ["table", "csv", "json"].contains(format) else { throw FleetError("--format must be table, csv or json") }
        func day(_ text: String?, end: Bool) throws -> Int? {
            guard let text else { return nil }
            guard let ms = PaymentFilter.day(text, end: end) else {
                throw FleetError("'\(text)' is not a date (YYYY-MM-DD)", hint: "e.g. --from 2026-11-01")
            }
            return ms
        }
        let filter = PaymentFilter(from: try day(from, end: false), to: try day(to, end: true))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let table: (headers: [String], rows: [[String]])
        switch kind {
        case "customers":
            let rows = FleetReports.customers(try home.registry.payments(matching: filter))
            if format == "json" { print(String(decoding: try encoder.encode(rows), as: UTF8.self)); return }
            table = FleetReports.customerTable(rows)
        case "machines":
            let rows = try home.registry.machineDays(matching: filter)
            if format == "json" { print(String(decoding: try encoder.encode(rows), as: UTF8.self)); return }
            table = FleetReports.machineTable(rows)
        default:
            throw FleetError("unknown report '\(kind)'", hint: "fleet-manager report customers|machines")
        }
        print(FleetReports.render(headers: table.headers, rows: table.rows, format: format), terminator: "")
    }
}

struct Code: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "A machine's payment code (QR of the payment URL).")
    @OptionGroup var options: HomeOptions
    @Argument(help: "The machine ID.") var machineId: String
    @Option(help: "svg or text.") var format = "text"
    @Option(help: "Write to this file instead of standard output.") var out: String?

    func run(home: FleetHome) async throws {
        guard let machine = MachineID(rawValue: machineId) else { throw FleetError("'\(machineId)' is not a machine ID") }
        guard try home.registry.machine(machine) != nil else {
            throw FleetError("no unit '\(machine)' in the registry", hint: "provision it first")
        }
        let code = try PaymentCode(machine: machine, template: home.settings.paymentUrlTemplate)
        let output: String
        switch format {
        case "svg": output = code.svg(caption: machine.rawValue)
        case "text": output = code.text() + code.url + "\n"
        default: throw FleetError("--format must be svg or text")
        }
        if let out {
            guard FileManager.default.createFile(atPath: out, contents: Data(output.utf8)) else { throw FleetError("cannot write \(out)") }
            print("\(machine): payment code for \(code.url) written to \(out)")
        } else {
            print(output, terminator: "")
        }
    }
}
