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

