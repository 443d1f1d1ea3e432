import Foundation
import ChildProcesses
import LocalServices
import PaymentSDK
import TestSupport
import Testing

@testable import PaymentServer

/// The payment server's config file: the webhook secret inline or, as advised, in a file of
/// its own that only its owner may read.
@Suite struct ConfigurationTests {
    let directory: String = {
        let path = NSTemporaryDirectory() + "pay-config-\(UUID().uuidString)"
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }()

    func config(provider: String) throws -> String {
        let path = directory + "/payment-server.json"
        try """
            {"listen": {"host": "127.0.0.1", "port": 8081}, "publicUrl": "https://pay.example.com",
             "database": "\(directory)/db.sqlite", "brokerCredentials": "\(directory)/creds.json", "topicRoot": "fleet",
             "signingKey": {"kid": "k-2026a", "file": "\(directory)/key.pem"}, "currency": "JPY",
             "provider": \(provider),
             "machines": [{"machineId": "laundry-01", "name": "Washer", "place": "Corner", "menu": [{"label": "Wash", "amount": 400}]}]}
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    func secret(_ text: String, mode: Int) -> String {
        let path = directory + "/webhook-\(UUID().uuidString).secret"
        _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: mode])
        return path
    }

    @Test func theSecretFromItsOwnFile() throws {
        let file = secret("0123456789abcdef0123\n", mode: 0o600)
        let loaded = try ServerConfiguration.load(try config(provider: #"{"kind": "simulated", "webhookSecretFile": "\#(file)"}"#))
        #expect(loaded.provider.webhookSecret == "0123456789abcdef0123")
        let inline = try ServerConfiguration.load(try config(provider: #"{"kind": "simulated", "webhookSecret": "0123456789abcdef"}"#))
        #expect(inline.provider.webhookSecret == "0123456789abcdef")
    }

    @Test func aSecretOthersCanReadIsRefused() throws {
        let file = secret("0123456789abcdef0123", mode: 0o644)
        #expect {
            try ServerConfiguration.load(try config(provider: #"{"kind": "simulated", "webhookSecretFile": "\#(file)"}"#))
        } throws: { error in
            "\(error)".contains("may be read by other users (mode 644)") && "\(error)".contains("chmod 600 \(file)")
        }
    }

    @Test(arguments: [
        (#"{"kind": "simulated", "webhookSecret": "0123456789abcdef", "webhookSecretFile": "/x"}"#, "not both"),
        (#"{"kind": "simulated"}"#, ".provider.webhookSecretFile is missing"),
        (#"{"kind": "simulated", "webhookSecretFile": "/nonexistent/secret"}"#, "cannot read provider.webhookSecretFile /nonexistent/secret: No such file"),
    ])
    func wrongSecretsAreClearErrors(provider: String, mentions: String) throws {
        let path = try config(provider: provider)
        #expect {
            try ServerConfiguration.load(path)
        } throws: { error in
            "\(error)".contains(mentions)
        }
    }

    @Test func aShortSecretNamesItsFile() throws {
        let file = secret("short", mode: 0o400)
        #expect {
            try ServerConfiguration.load(try config(provider: #"{"kind": "simulated", "webhookSecretFile": "\#(file)"}"#))
        } throws: { error in
            "\(error)".contains("provider.webhookSecret (from \(file)) must be at least 16 characters")
        }
    }

    // MARK: TOML, and what overrides the file

    /// The same settings as `config(provider:)`, in TOML as docs/payment-server.md writes them.
    func tomlConfig(provider: String = "webhook-secret = \"0123456789abcdef\"", extra: String = "") throws -> String {
        let path = directory + "/payment-server-\(UUID().uuidString).toml"
        try """
            public-url = "https://pay.example.com"
            database = "\(directory)/db.sqlite"
            broker-credentials = "\(directory)/creds.json"
            topic-root = "fleet"
            currency = "JPY"
            \(extra)

            [listen]
            host = "127.0.0.1"
            port = 8081

            [signing-key]
            kid = "k-2026a"
            file = "\(directory)/key.pem"

            [provider]
            kind = "simulated"
            \(provider)

            [[machines]]
            machine-id = "laundry-01"
            name = "Washer"
            place = "Corner"
            menu = [{ label = "Wash", amount = 400 }]
            """.write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test func tomlAndJSONReadTheSame() throws {
        let toml = try ServerConfiguration.load(try tomlConfig(extra: "payment-ttl-s = 45\n[limits]\npayments-per-user-per-minute = 3"))
        let json = try ServerConfiguration.load(try config(provider: #"{"kind": "simulated", "webhookSecret": "0123456789abcdef"}"#))
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var expected = json
        expected.paymentTtlS = 45
        expected.limits.paymentsPerUserPerMinute = 3
        #expect(String(decoding: try encoder.encode(toml), as: UTF8.self) == String(decoding: try encoder.encode(expected), as: UTF8.self))
        #expect(toml.machines.first?.menu == [.init(label: "Wash", amount: 400)])
    }

    /// A TOML file's problems name its keys as it spells them, and its lines.
    @Test(arguments: [
        ("payment-ttl-s = 6000", "config: payment-ttl-s must be 1 to 600"),
        ("public-url = \"x\"", "line 6: 'public-url' is set again (first on line 1)"),
        ("payment-ttl-s = \"60\"", ".payment-ttl-s: Expected to decode Int but found a string"),
        ("[signing-key]\nkid = 'x'", "the table [signing-key] is defined again"),
        ("currency = 'yen'", "'currency' is set again"),
    ])
    func tomlProblemsUseTheFilesSpelling(extra: String, mentions: String) throws {
        let path = try tomlConfig(extra: extra)
        #expect {
            try ServerConfiguration.load(path)
        } throws: { error in
            "\(error)".contains(mentions)
        }
    }

    @Test func aMissingTableIsNamedAsWritten() throws {
        let path = directory + "/short.toml"
        try "public-url = \"https://pay.example.com\"\n".write(toFile: path, atomically: true, encoding: .utf8)
        #expect {
            try ServerConfiguration.load(path)
        } throws: { error in
            "\(error)".contains("is missing") && "\(error)".contains("compare it with docs/payment-server.md")
        }
    }

    @Test func overridesWinOverTheFile() throws {
        let file = secret("fedcba9876543210fedcba", mode: 0o600)
        let loaded = try ServerConfiguration.load(
            try tomlConfig(),
            overrides: .init(
                listen: .init(host: "::1", port: 9000), publicUrl: "https://other.example.com", database: "/var/lib/x.sqlite",
                brokerCredentials: "/etc/x.json", webhookSecretFile: file))
        #expect(loaded.listen.host == "::1" && loaded.listen.port == 9000)
        #expect(loaded.publicUrl == "https://other.example.com")
        #expect(loaded.database == "/var/lib/x.sqlite")
        #expect(loaded.brokerCredentials == "/etc/x.json")
        #expect(loaded.provider.webhookSecret == "fedcba9876543210fedcba", "the secret file replaces the inline secret")
        #expect {
            try ServerConfiguration.load(try tomlConfig(), overrides: .init(publicUrl: "ftp://x"))
        } throws: { error in
            "\(error)".contains("public-url must be an http(s) URL")
        }
    }

    /// The binary's layers: the file, then `PULSEBRIDGE_PAY_*`, then the command line; an
    /// unknown variable is one line and exit code 2.
    @Test func theEnvironmentOverridesTheFileAndTheCommandLineTheEnvironment() async throws {
        let path = try tomlConfig()
        func checkConfig(_ arguments: [String], environment: [String: String]) async throws -> (ChildProcesses.ExitStatus?, String) {
            var inherited = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("PULSEBRIDGE_PAY_") }
            inherited.merge(environment) { $1 }
            let out = directory + "/check-\(UUID().uuidString).out"
            let child = try ChildProcess.spawn(PaymentServerFleet.binary("payment-server"), ["check-config"] + arguments, environment: inherited, outputPath: out)
            return (await child.waitForExit(timeout: .seconds(60)), child.output())
        }
        var (status, output) = try await checkConfig([], environment: ["PULSEBRIDGE_PAY_CONFIG": path])
        #expect(status == .exited(0), "\(output)")
        #expect(output.contains("\(path): ok (1 machines, provider simulated)"))
        (status, output) = try await checkConfig(["--config", path], environment: ["PULSEBRIDGE_PAY_PUBLIC_URL": "ftp://pay.example.com"])
        #expect(status == .exited(1))
        #expect(output.contains("public-url must be an http(s) URL"), "\(output)")
        (status, output) = try await checkConfig(
            ["--config", path, "--public-url", "https://ok.example.com"], environment: ["PULSEBRIDGE_PAY_PUBLIC_URL": "ftp://pay.example.com"])
        #expect(status == .exited(0), "the command line wins: \(output)")
        (status, output) = try await checkConfig(["--config", path], environment: ["PULSEBRIDGE_PAY_PORT": "1"])
        #expect(status == .exited(2))
        #expect(output.contains("PULSEBRIDGE_PAY_PORT: 'port' is not a setting of payment-server check-config"), "\(output)")
        #expect(output.split(separator: "\n").count == 1, "\(output)")
    }
}
