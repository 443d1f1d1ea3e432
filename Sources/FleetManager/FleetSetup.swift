import Foundation
import Logging
import MessageSchema
import PaymentSDK

/// `fleet-manager init`: the broker's service roles and a new fleet home.
public enum FleetSetup {
    public struct Options: Sendable {
        public var home: String
        /// Broker as the manager reaches it (usually the loopback listener).
        public var brokerHost: String
        public var brokerPort: Int
        public var brokerCAFile: String?
        /// Dynamic-security admin, used once to create the service roles.
        public var adminUser: String
        public var adminPassword: String
        /// What units connect to, written into bundles.
        public var deviceBrokerUrl: String
        public var deviceCAFile: String?
        public var topicRoot: String
        public var paymentUrlTemplate: String
        public var currency: String
        /// How long to wait for a broker that does not accept connections yet (starting).
        public var waitForBroker: Duration = .seconds(10)
        /// How the broker's identities are administered; nil: dynamic security, set up with
        /// the admin credentials above.
        public var administration: BrokerAdministration?
        /// The port payment servers use, when it is not the manager's: with the password-file
        /// administration, the manager has a loopback listener of its own and payment servers
        /// use one where their client ID is their username.
        public var servicePort: Int?
        /// A clustered broker's other nodes ("host:port"), for the manager and payment servers.
        public var brokerAlternates: [String]?
        /// A clustered broker's other nodes as units reach them (URLs like the device broker URL).
        public var deviceBrokerAlternates: [String]?

        public init(
            home: String, brokerHost: String, brokerPort: Int, brokerCAFile: String? = nil, adminUser: String = "admin",
            adminPassword: String, deviceBrokerUrl: String, deviceCAFile: String? = nil, topicRoot: String = "fleet",
            paymentUrlTemplate: String = "http://localhost:8081/m/{machineId}", currency: String = "JPY"
        ) {
            self.home = home
            self.brokerHost = brokerHost
            self.brokerPort = brokerPort
            self.brokerCAFile = brokerCAFile
            self.adminUser = adminUser
            self.adminPassword = adminPassword
            self.deviceBrokerUrl = deviceBrokerUrl
            self.deviceCAFile = deviceCAFile
            self.topicRoot = topicRoot
            self.paymentUrlTemplate = paymentUrlTemplate
            self.currency = currency
        }
    }

    /// Checks everything, creates the broker roles and service clients, then the home. If the
    /// broker cannot be set up, no home is written.
    public static func initialize(_ options: Options, logger: Logger = Logger(label: "pulsebridge.fleet")) async throws -> FleetHome {
        if FileManager.default.fileExists(atPath: options.home + "/settings.json") {
            throw FleetError(
                "a fleet already exists at \(options.home)", hint: "use it, or choose another --home; an existing fleet is never overwritten")
        }
        let topics: TopicScheme
        do { topics = try TopicScheme(root: options.topicRoot) } catch { throw FleetError("--topic-root: \(error)") }
        guard CurrencyCode(rawValue: options.currency) != nil else {
            throw FleetError("--currency '\(options.currency)' is not three upper-case letters (ISO 4217)")
        }
        guard options.paymentUrlTemplate.contains("{machineId}") else {
            throw FleetError("--payment-url must contain {machineId}", hint: "e.g. https://pay.example.com/m/{machineId}")
        }
        let primary: AgentBundle.Endpoint
        do {
            primary = try AgentBundle.endpoint(options.deviceBrokerUrl, field: "--device-broker-url")
        } catch {
            throw FleetError(error.problem, hint: "the broker as units reach it, e.g. mqtts://broker.example.com:8883")
        }
        // Every unit's bundle carries the alternates: one an agent would refuse is refused here,
        // before any unit is provisioned with it.
        do {
            _ = try AgentBundle.alternateEndpoints(
                options.deviceBrokerAlternates ?? [], field: "--device-broker-alternate", of: primary, primaryField: "--device-broker-url")
        } catch {
            throw FleetError(
                error.problem, hint: "each other node as units reach it, with the scheme of --device-broker-url, e.g. mqtts://node2.example.com:8883")
        }
        if primary.tls && options.deviceCAFile == nil {
            throw FleetError("--device-broker-url uses TLS but no --device-ca-file was given", hint: "units need the CA that signed the broker's certificate")
        }
        for file in [options.deviceCAFile, options.brokerCAFile].compactMap({ $0 }) where !FileManager.default.isReadableFile(atPath: file) {
            throw FleetError("cannot read \(file)")
        }

        // The CA files are copied into the home (pki/), and the settings name the copies by
        // absolute path: commands work from any folder, and after the originals move.
        let home = URL(fileURLWithPath: options.home).standardizedFileURL.path
        let deviceCA = options.deviceCAFile.map { _ in home + "/pki/device-ca.pem" }
        let brokerCA = options.brokerCAFile.map { _ in home + "/pki/broker-ca.pem" }

        let manager = BrokerIdentity(
            host: options.brokerHost, port: options.brokerPort, caFile: brokerCA, username: "fleet-manager",
            password: Provisioner.newPassword(), alternates: options.brokerAlternates)
        let paymentServer = BrokerIdentity(
            host: options.brokerHost, port: options.servicePort ?? options.brokerPort, caFile: brokerCA, username: "payment-server",
            password: Provisioner.newPassword(), alternates: options.brokerAlternates)
        switch options.administration?.kind ?? .dynamicSecurity {
        case .dynamicSecurity:
            let admin = BrokerIdentity(
                host: options.brokerHost, port: options.brokerPort, caFile: options.brokerCAFile, username: options.adminUser,
                password: options.adminPassword)
            let backend = try await DynamicSecurityBackend.connect(admin, waitingUpTo: options.waitForBroker, logger: logger)
            do {
                if let existing = try await backend.existingFleetIdentity() {
                    throw FleetError(
                        "this broker already holds a PulseBridge fleet (its dynamic security has the client '\(existing)')",
                        hint: "use that fleet's home; one broker serves one fleet, and init never replaces one")
                }
                try await backend.bootstrap(topics: topics, manager: manager, paymentServer: paymentServer)
                await backend.close()
            } catch {
                await backend.close()
                throw error
            }
        case .passwordFile, .natsUsers:
            // The files are written with the manager's endpoints as the probe's.
            var probe = manager
            probe.caFile = options.brokerCAFile
            let backend: any FileIdentityBackend = options.administration!.kind == .passwordFile
                ? try PasswordFileBackend(options.administration!, manager: probe)
                : try NATSUsersBackend(options.administration!, manager: probe)
            try await backend.bootstrap(topics: topics, manager: manager, paymentServer: paymentServer)
        }
        var settings = FleetSettings(
            topicRoot: options.topicRoot, deviceBrokerUrl: options.deviceBrokerUrl, deviceCAFile: deviceCA,
            manager: manager, paymentServer: paymentServer, paymentUrlTemplate: options.paymentUrlTemplate,
            currency: options.currency)
        settings.brokerAdmin = options.administration
        settings.deviceBrokerAlternates = options.deviceBrokerAlternates
        let created = try FleetHome.create(at: home, settings: settings)
        for (source, copy) in [(options.deviceCAFile, deviceCA), (options.brokerCAFile, brokerCA)] {
            guard let source, let copy else { continue }
            try? FileManager.default.removeItem(atPath: copy)
            try FileManager.default.copyItem(atPath: source, toPath: copy)
        }
        return created
    }
}
