import Foundation
import PaymentSDK
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
}
