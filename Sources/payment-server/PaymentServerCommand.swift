import ArgumentParser
import Foundation
import DaemonSupport
import Logging
import PaymentSDK
import PaymentServer
import PulseBridgeVersion

@main
struct PaymentServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "payment-server",
        abstract: "PulseBridge payment server: the page behind a machine's payment code, checkout, receipts, customers.",
        discussion: "docs/payment-server.md describes the config file and the payment flow.",
        version: PulseBridgeVersion.current,
        subcommands: [Run.self, Payments.self, Settle.self, Customers.self, CheckConfig.self],
        defaultSubcommand: Run.self)

    static func main() async {
        let commands: [any ParsableCommand.Type] = [Run.self, CheckConfig.self, Payments.self, Settle.self, Customers.self]
        let settings: [String: @Sendable () -> LayeredSettings] = commands
            .reduce(into: [:]) { all, command in
                let name = command._commandName
                all[name] = {
                    LayeredSettings(command: command, commandName: "payment-server \(name)", environmentPrefix: "PULSEBRIDGE_PAY_", settingsFile: false)
                }
            }
        await mainWithSettings(settings, defaultSubcommand: Run._commandName)
    }
}

/// The config file and the settings that override it per host. Every option here may also be
/// given as a `PULSEBRIDGE_PAY_*` environment variable (`--public-url` is
/// `PULSEBRIDGE_PAY_PUBLIC_URL`); the command line wins over the environment, which wins over
/// the file.
struct ConfigOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The config file: TOML, or JSON when its name ends in .json (docs/payment-server.md).", valueName: "file"))
    var config = "/etc/pulsebridge/payment-server.toml"
    @Option(help: ArgumentHelp("Listen here instead of the file's listen.host and listen.port.", valueName: "host:port"))
    var listen: String?
    @Option(help: ArgumentHelp("The URL customers reach this server at, instead of the file's public-url.", valueName: "url"))
    var publicUrl: String?
    @Option(help: ArgumentHelp("The SQLite database, instead of the file's database.", valueName: "file"))
    var database: String?
    @Option(help: ArgumentHelp("The broker credentials file, instead of the file's broker-credentials.", valueName: "file"))
    var brokerCredentials: String?
    @Option(help: ArgumentHelp("The provider's webhook secret, from this file (mode 0600), instead of the file's.", valueName: "file"))
    var webhookSecretFile: String?
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.") var logLevel = "notice"
    @Option(help: LogFormat.help) var logFormat = LogFormat.text

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level '\(logLevel)' is not one of trace, debug, info, notice, warning, error, critical")
        }
        if let listen { _ = try Self.listenAddress(listen) }
    }

    /// `127.0.0.1:8081`, `[::1]:8081`, `:8081` (every address).
    static func listenAddress(_ text: String) throws -> ServerConfiguration.Listen {
        guard let address = ListenAddress(text) else {
            throw ValidationError("--listen '\(text)' is not host:port (e.g. 127.0.0.1:8081 or [::1]:8081)")
        }
        return ServerConfiguration.Listen(host: address.host, port: address.port)
    }

    var overrides: ServerConfiguration.Overrides {
        ServerConfiguration.Overrides(
            listen: listen.flatMap { try? Self.listenAddress($0) }, publicUrl: publicUrl, database: database,
            brokerCredentials: brokerCredentials, webhookSecretFile: webhookSecretFile)
    }

    func load() throws -> ServerConfiguration {
        LogFormat.bootstrap(logFormat, level: Logger.Level(rawValue: logLevel) ?? .notice)
        return try ServerConfiguration.load(config, overrides: overrides)
    }
}

/// Expected failures print what went wrong and what to do, without a stack trace.
func operatorErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data("payment-server: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the payment pages (until SIGTERM or SIGINT).")
    @OptionGroup var options: ConfigOptions

    func run() async throws {
        try await operatorErrors {
            let configuration = try options.load()
            let app = try await PaymentServerApp.start(configuration, logger: Logger(label: "pulsebridge.pay"))
            try await app.run()
        }
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Check the config file and exit.")
    @OptionGroup var options: ConfigOptions

    func run() async throws {
        try await operatorErrors {
            let configuration = try options.load()
            print("\(options.config): ok (\(configuration.machines.count) machines, provider \(configuration.provider.kind))")
        }
    }
}

struct Payments: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List payments: state, amount, the machine's result, the provider's reference.",
        discussion: "--open lists what needs the operator: held (uncertain, or a failed capture) and unknown (no result yet).")
    @OptionGroup var options: ConfigOptions
    @Flag(help: "Only payments that need the operator.") var open = false
    @Flag(help: "JSON lines instead of a table.") var json = false

    func run() async throws {
        try await operatorErrors {
            let configuration = try options.load()
            let store = try PaymentStore(path: configuration.database)
            let payments = try store.payments(states: open ? [.held, .unknown] : nil)
            if json {
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.sortedKeys]
                for payment in payments {
                    var object = try JSONSerialization.jsonObject(with: encoder.encode(payment)) as? [String: Any] ?? [:]
                    object["providerState"] = try payment.providerRef.flatMap { try store.simulatedProviderState($0) }
                    print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
                }
                return
            }
            let rows = payments.map {
                [$0.paymentId, $0.machineId, $0.userId, "\($0.amount)", $0.state.rawValue, $0.resultStatus ?? "-", $0.pulses.map(String.init) ?? "-", $0.note ?? ""]
            }
            printTable(["PAYMENT", "MACHINE", "USER", "AMOUNT", "STATE", "RESULT", "PULSES", "NOTE"], rows)
        }
    }
}

struct Settle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Capture or void a held or unknown payment after review, or refund a captured one, through the provider.",
        discussion: "Check the machine's result first (`fleet-manager payments`): capture what it credited, void what it did not.")
    @OptionGroup var options: ConfigOptions
    @Argument(help: "The payment ID (`payment-server payments --open`).") var payment: String
    @Option(help: "capture, void or refund.") var action: String

    func run() async throws {
        try await operatorErrors {
            let configuration = try options.load()
            let settled = try await PaymentServerApp.settle(configuration, paymentId: payment, action: action, logger: Logger(label: "pulsebridge.pay"))
            print("\(settled.paymentId): \(settled.state.rawValue)")
        }
    }
}

struct Customers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The customer information the operator collects: user ID, profile (with consent), captured payments.",
        discussion: "Agrees with `fleet-manager report customers` on user IDs, payments and amounts (docs/payment-server.md).")
    @OptionGroup var options: ConfigOptions
    @Option(help: "table or csv.") var format = "table"

    func run() async throws {
        try await operatorErrors {
            guard format == "table" || format == "csv" else { throw PaymentSDKError("--format must be table or csv") }
            let configuration = try options.load()
            let store = try PaymentStore(path: configuration.database)
            let rows = try store.customerReport().map { row -> [String] in
                let c = row.customer
                return [c.userId, c.name ?? "", c.email ?? "", c.phone ?? "", c.consentAt.map { "\($0)" } ?? "", "\(row.payments)", "\(row.amount)"]
            }
            let headers = ["USER", "NAME", "EMAIL", "PHONE", "CONSENT_AT", "CREDITED", "AMOUNT"]
            if format == "csv" {
                func quote(_ f: String) -> String {
                    f.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) ? "\"" + f.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : f
                }
                for row in [headers.map { $0.lowercased() }] + rows { print(row.map(quote).joined(separator: ",")) }
            } else {
                printTable(headers, rows)
            }
        }
    }
}

func printTable(_ headers: [String], _ rows: [[String]]) {
    let widths = headers.indices.map { i in ([headers] + rows).map { $0[i].count }.max() ?? 0 }
    for row in [headers] + rows {
        print(row.enumerated().map { $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }.joined(separator: "  ").trimmingCharacters(in: .whitespaces))
    }
}
