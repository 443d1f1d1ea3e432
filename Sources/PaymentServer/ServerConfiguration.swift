import DaemonSupport
import Foundation
import MessageSchema
import PaymentSDK

/// `payment-server`'s one config file: TOML (`payment-server.toml`, keys in `kebab-case`) or,
/// for a file named `*.json`, the same document in JSON with `camelCase` keys. Options and
/// `PULSEBRIDGE_PAY_*` environment variables override the settings an operator changes per
/// host (`Overrides`). See docs/payment-server.md.
public struct ServerConfiguration: Codable, Sendable {
    public struct Listen: Codable, Sendable {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }
    }
    /// A payment key of the fleet: its ID and the PKCS#8 PEM file (`fleet-manager keys list`).
    public struct SigningKey: Codable, Sendable {
        public var kid: String
        public var file: String
    }
    /// One priced choice on a machine's page, e.g. "Wash" for 400.
    public struct MenuItem: Codable, Sendable, Hashable {
        public var label: String
        public var amount: Int
    }
    /// A free amount: any multiple of `step` from `step` to `max`.
    public struct FreeAmount: Codable, Sendable, Hashable {
        public var step: Int
        public var max: Int
    }
    public struct Machine: Codable, Sendable {
        public var machineId: String
        public var name: String
        public var place: String
        public var menu: [MenuItem]
        public var freeAmount: FreeAmount?
    }
    public struct Provider: Codable, Sendable {
        /// `simulated` (test cards) is the one in the tree; see docs/payment-server.md for the adapter contract.
        public var kind: String
        /// Shared secret that signs the provider's webhooks (HMAC-SHA256): given in the config
        /// (`webhookSecret`) or, better, in a file of its own (`webhookSecretFile`, mode 0600),
        /// which `load` reads into this.
        public var webhookSecret: String
        public var webhookSecretFile: String?

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            kind = try c.decode(String.self, forKey: .kind)
            webhookSecretFile = try c.decodeIfPresent(String.self, forKey: .webhookSecretFile)
            let inline = try c.decodeIfPresent(String.self, forKey: .webhookSecret)
            switch (inline, webhookSecretFile) {
            case (let secret?, nil): webhookSecret = secret
            case (nil, _?): webhookSecret = ""  // read by `load`
            case (_?, _?):
                throw DecodingError.dataCorruptedError(
                    forKey: .webhookSecretFile, in: c, debugDescription: "give webhookSecret or webhookSecretFile, not both")
            case (nil, nil):
                throw DecodingError.keyNotFound(
                    CodingKeys.webhookSecretFile, .init(codingPath: c.codingPath, debugDescription: "webhookSecretFile (or webhookSecret) is missing"))
            }
        }
    }
    public struct Limits: Codable, Sendable {
        /// Payments one customer may start per minute.
        public var paymentsPerUserPerMinute: Int = 6
        /// Payments one machine may take per minute.
        public var paymentsPerMachinePerMinute: Int = 20

        public init() {}

        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            paymentsPerUserPerMinute = try c.decodeIfPresent(Int.self, forKey: .paymentsPerUserPerMinute) ?? 6
            paymentsPerMachinePerMinute = try c.decodeIfPresent(Int.self, forKey: .paymentsPerMachinePerMinute) ?? 20
        }
    }

    public var listen: Listen
    /// The URL customers reach this server at (payment codes point at `publicUrl/m/{machineId}`).
    public var publicUrl: String
    /// SQLite file: customers, payments, the simulated provider's ledger.
    public var database: String
    /// The credentials file `fleet-manager payment-servers add` wrote.
    public var brokerCredentials: String
    public var topicRoot: String
    public var signingKey: SigningKey
    public var currency: String
    /// How long a completion stays valid (`expiresAt − issuedAt`), seconds.
    public var paymentTtlS: Int = 60
    /// After `expiresAt` + 5 s with no result, how long to keep waiting for it (or for proof
    /// there is none) before listing the payment as unknown.
    public var unknownWaitS: Int = 60
    public var provider: Provider
    public var limits: Limits = Limits()
    public var machines: [Machine]

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        listen = try c.decode(Listen.self, forKey: .listen)
        publicUrl = try c.decode(String.self, forKey: .publicUrl)
        database = try c.decode(String.self, forKey: .database)
        brokerCredentials = try c.decode(String.self, forKey: .brokerCredentials)
        topicRoot = try c.decode(String.self, forKey: .topicRoot)
        signingKey = try c.decode(SigningKey.self, forKey: .signingKey)
        currency = try c.decode(String.self, forKey: .currency)
        paymentTtlS = try c.decodeIfPresent(Int.self, forKey: .paymentTtlS) ?? 60
        unknownWaitS = try c.decodeIfPresent(Int.self, forKey: .unknownWaitS) ?? 60
        provider = try c.decode(Provider.self, forKey: .provider)
        limits = try c.decodeIfPresent(Limits.self, forKey: .limits) ?? Limits()
        machines = try c.decode([Machine].self, forKey: .machines)
    }

    /// Settings given on the command line or in the environment, over the file's.
    public struct Overrides: Sendable {
        public var listen: Listen?
        public var publicUrl: String?
        public var database: String?
        public var brokerCredentials: String?
        /// Replaces the file's `webhook-secret` or `webhook-secret-file`.
        public var webhookSecretFile: String?

        public init(
            listen: Listen? = nil, publicUrl: String? = nil, database: String? = nil, brokerCredentials: String? = nil,
            webhookSecretFile: String? = nil
        ) {
            self.listen = listen
            self.publicUrl = publicUrl
            self.database = database
            self.brokerCredentials = brokerCredentials
            self.webhookSecretFile = webhookSecretFile
        }
    }

    /// The file (TOML, or JSON when named `*.json`), then `overrides`, then the webhook
    /// secret read from its file, then `validate()`.
    public static func load(_ path: String, overrides: Overrides = Overrides()) throws -> ServerConfiguration {
        let isJSON = path.hasSuffix(".json")
        func spell(_ key: String) -> String { isJSON ? key : TOMLDocument.kebabCase(key) }
        var configuration: ServerConfiguration
        do {
            let data: Data
            if isJSON {
                guard let bytes = FileManager.default.contents(atPath: path) else {
                    throw PaymentSDKError("cannot read the config file \(path)", hint: "pass --config FILE (docs/payment-server.md has an example)")
                }
                data = bytes
            } else {
                let text: String
                let document: TOMLTable
                do {
                    text = try LayeredSettings.read(path)
                    document = try TOMLDocument.parse(text, path: path)
                } catch {
                    throw PaymentSDKError(error.message, hint: error.hint ?? "compare it with docs/payment-server.md")
                }
                data = try JSONSerialization.data(withJSONObject: TOMLValue.table(document).foundationObject(key: TOMLDocument.camelCase))
            }
            configuration = try JSONDecoder().decode(ServerConfiguration.self, from: data)
        } catch let error as DecodingError {
            throw PaymentSDKError("\(path) is not a valid payment-server config: \(Self.describe(error, spell: spell))", hint: "compare it with docs/payment-server.md")
        }
        func key(_ dotted: String) -> String { dotted.split(separator: ".").map { spell(String($0)) }.joined(separator: ".") }
        if let listen = overrides.listen { configuration.listen = listen }
        if let url = overrides.publicUrl { configuration.publicUrl = url }
        if let database = overrides.database { configuration.database = database }
        if let credentials = overrides.brokerCredentials { configuration.brokerCredentials = credentials }
        if let file = overrides.webhookSecretFile { configuration.provider.webhookSecretFile = file }
        if let file = configuration.provider.webhookSecretFile {
            configuration.provider.webhookSecret = try readSecret(file, what: key("provider.webhookSecretFile"))
        }
        try configuration.validate(spell: spell)
        return configuration
    }

    /// A secret from a file of its own (`SecretFile`): only its owner may read it, since
    /// anyone who can read it can forge the provider's webhooks.
    static func readSecret(_ path: String, what: String) throws -> String {
        do {
            return try SecretFile.read(path, what: what)
        } catch {
            throw PaymentSDKError(error.message, hint: error.hint)
        }
    }

    /// Where in the document and what: `.machines[1].menu is missing`, each key as the file
    /// spells it (`spell`).
    static func describe(_ error: DecodingError, spell: (String) -> String = { $0 }) -> String {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\(spell($0.stringValue))" }.joined()
        }
        switch error {
        case .keyNotFound(let key, let context): return "\(path(context)).\(spell(key.stringValue)) is missing"
        case .typeMismatch(_, let context), .valueNotFound(_, let context): return "\(path(context)): \(context.debugDescription)"
        case .dataCorrupted(let context): return "\(path(context)): \(context.debugDescription)"
        @unknown default: return "\(error)"
        }
    }

    /// - Parameter spell: how the file spells a key (`public-url` in TOML, `publicUrl` in JSON).
    public func validate(spell: (String) -> String = { $0 }) throws {
        func fail(_ what: String) throws -> Never { throw PaymentSDKError("config: \(what)") }
        func key(_ dotted: String) -> String { dotted.split(separator: ".").map { spell(String($0)) }.joined(separator: ".") }
        guard (0...65535).contains(listen.port) else { try fail("\(key("listen.port")) must be 0 to 65535") }
        guard let url = URL(string: publicUrl), url.scheme == "http" || url.scheme == "https", url.host != nil else {
            try fail("\(key("publicUrl")) must be an http(s) URL, e.g. https://pay.example.com")
        }
        guard CurrencyCode(rawValue: currency) != nil else { try fail("currency must be three upper-case letters") }
        guard KeyID(rawValue: signingKey.kid) != nil else { try fail("\(key("signingKey.kid")) is not a key ID") }
        guard ProtocolLimits.paymentLifetimeMs.contains(paymentTtlS * 1000) else { try fail("\(key("paymentTtlS")) must be 1 to 600") }
        guard provider.kind == "simulated" else { try fail("\(key("provider.kind")) '\(provider.kind)' is unknown (in the tree: simulated)") }
        guard provider.webhookSecret.utf8.count >= 16 else {
            try fail("\(key("provider.webhookSecret"))\(provider.webhookSecretFile.map { " (from \($0))" } ?? "") must be at least 16 characters")
        }
        guard limits.paymentsPerUserPerMinute > 0, limits.paymentsPerMachinePerMinute > 0 else { try fail("limits must be positive") }
        var seen = Set<String>()
        for machine in machines {
            guard MachineID(rawValue: machine.machineId) != nil else { try fail("'\(machine.machineId)' is not a machine ID") }
            guard seen.insert(machine.machineId).inserted else { try fail("\(machine.machineId) is listed twice") }
            guard !machine.menu.isEmpty || machine.freeAmount != nil else { try fail("\(machine.machineId) offers no amount (menu or \(key("freeAmount")))") }
            for item in machine.menu where !ProtocolLimits.amountRange.contains(item.amount) {
                try fail("\(machine.machineId): menu amount \(item.amount) is outside 1 to 10,000,000")
            }
            if let free = machine.freeAmount, free.step < 1 || free.max < free.step || free.max > ProtocolLimits.amountRange.upperBound {
                try fail("\(machine.machineId): \(key("freeAmount")) needs 1 ≤ step ≤ max ≤ 10,000,000")
            }
        }
    }

    /// The page's origin (scheme://host[:port]) for checking where a form came from.
    var origin: String {
        guard let url = URL(string: publicUrl), let scheme = url.scheme, let host = url.host else { return publicUrl }
        return url.port.map { "\(scheme)://\(host):\($0)" } ?? "\(scheme)://\(host)"
    }

    func machine(_ id: String) -> Machine? { machines.first { $0.machineId == id } }
}

extension ServerConfiguration.Machine {
    /// Whether a customer may pay `amount` here.
    func offers(_ amount: Int) -> Bool {
        if menu.contains(where: { $0.amount == amount }) { return true }
        guard let free = freeAmount else { return false }
        return amount >= free.step && amount <= free.max && amount % free.step == 0
    }
}
