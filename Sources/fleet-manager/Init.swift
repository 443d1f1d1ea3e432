import ArgumentParser
import FleetManager
import MQTT
import Foundation

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a fleet: broker roles, keys, registry. Refuses to overwrite an existing fleet.")

    @OptionGroup var options: HomeOptions
    @Option(help: "Broker host as the manager reaches it.") var brokerHost = "127.0.0.1"
    @Option(help: "Broker port as the manager reaches it.") var brokerPort = 1883
    @Option(help: "CA file if the manager connects over TLS.") var brokerCaFile: String?
    @Option(help: "Dynamic-security admin user (from bootstrap-dynsec.sh).") var adminUser = "admin"
    @Option(help: "File holding the dynamic-security admin password (- reads it from standard input).") var adminPasswordFile: String?
    @Option(help: "The admin password itself (development only).") var adminPassword: String?
    @Option(help: "Broker URL units connect to (mqtts://host:8883).") var deviceBrokerUrl: String
    @Option(help: "CA certificate units trust for the broker (PEM).") var deviceCaFile: String?
    @Option(help: "Topic root.") var topicRoot = "fleet"
    @Option(help: "Payment page URL for payment codes; {machineId} is replaced (default: a payment-server on this host with its default port).") var paymentUrl = "http://localhost:8081/m/{machineId}"
    @Option(help: "Currency (ISO 4217) of new configurations.") var currency = "JPY"
    @Option(help: "Seconds to wait for a broker that is still starting.") var waitForBroker = 10
    @Option(help: "How the broker's identities are administered: dynamic-security, or password-file for fleets of thousands (docs/scale.md).")
    var brokerAdmin: BrokerAdministration.Kind = .dynamicSecurity
    @Option(help: "password-file: the folder of the broker's passwd and acl (its password_file and acl_file).") var brokerFiles: String?
    @Option(help: "password-file: the broker's pid_file, signalled to reload. nats-users: each node's (repeat).") var brokerPidFile: [String] = []
    @Option(help: "A clustered broker's other nodes as the manager reaches them, HOST:PORT (repeat).") var brokerAlternate: [String] = []
    @Option(help: "A clustered broker's other nodes as units reach them, like --device-broker-url (repeat).") var deviceBrokerAlternate: [String] = []
    @Option(help: "password-file: the port payment servers use (a listener with use_username_as_clientid); default: --broker-port.") var servicePort: Int?

    func run() async throws {
        options.bootstrapLogging()
        try await operatorErrors {
            var password = ""
            switch brokerAdmin {
            case .dynamicSecurity:
                password = try readSecret(file: adminPasswordFile, value: adminPassword, name: "admin-password")
            case .passwordFile, .natsUsers:
                guard let brokerFiles, !brokerPidFile.isEmpty else {
                    throw FleetError(
                        "--broker-admin \(brokerAdmin.rawValue) needs --broker-files DIR and --broker-pid-file FILE",
                        hint: brokerAdmin == .passwordFile
                            ? "the folder holding the broker's passwd and acl, and its pid_file (broker-config/mosquitto-files.conf)"
                            : "the folder of the auth.conf every node includes, and each node's pid_file (broker-config/nats-cluster.sh)")
                }
                guard brokerAdmin == .natsUsers || brokerPidFile.count == 1 else {
                    throw FleetError("--broker-admin password-file takes one --broker-pid-file")
                }
                guard FileManager.default.isWritableFile(atPath: brokerFiles) else {
                    throw FleetError("cannot write to \(brokerFiles)", hint: "create it, writable by this user and readable by the broker")
                }
            }
            for endpoint in brokerAlternate where MQTTEndpoint(parsing: endpoint) == nil {
                throw FleetError("--broker-alternate '\(endpoint)' is not HOST:PORT")
            }
            var setup = FleetSetup.Options(
                home: options.home, brokerHost: brokerHost, brokerPort: brokerPort, brokerCAFile: brokerCaFile,
                adminUser: adminUser, adminPassword: password, deviceBrokerUrl: deviceBrokerUrl, deviceCAFile: deviceCaFile,
                topicRoot: topicRoot, paymentUrlTemplate: paymentUrl, currency: currency)
            setup.waitForBroker = .seconds(max(0, waitForBroker))
            switch brokerAdmin {
            case .dynamicSecurity:
                break
            case .passwordFile:
                let folder = URL(fileURLWithPath: brokerFiles!).standardizedFileURL.path
                setup.administration = BrokerAdministration(kind: .passwordFile, directory: folder, pidFile: brokerPidFile[0])
            case .natsUsers:
                let folder = URL(fileURLWithPath: brokerFiles!).standardizedFileURL.path
                setup.administration = BrokerAdministration(kind: .natsUsers, directory: folder, pidFiles: brokerPidFile)
            }
            setup.servicePort = servicePort
            setup.brokerAlternates = brokerAlternate.isEmpty ? nil : brokerAlternate
            setup.deviceBrokerAlternates = deviceBrokerAlternate.isEmpty ? nil : deviceBrokerAlternate
            let home = try await FleetSetup.initialize(setup)
            let (actor, origin) = AuditRecord.cliActor()
            try home.registry.recordAudit(
                AuditRecord(
                    actor: actor, via: .cli, origin: origin, action: "init", target: home.path,
                    detail: "broker \(brokerHost):\(brokerPort), units at \(deviceBrokerUrl)", outcome: .ok))
            let keys = try home.registry.keys()
            print("fleet created at \(home.path)")
            for key in keys {
                print("  \(key.purpose.rawValue) key \(key.kid): private key \(home.privateKeyPath(key.kid)) (0600)")
            }
            switch brokerAdmin {
            case .dynamicSecurity:
                print("  broker roles fleet-manager, payment-server created; credentials in \(home.settingsPath) (0600)")
            case .passwordFile:
                print("  broker identities fleet-manager, payment-server written to \(brokerFiles!)/passwd and acl; credentials in \(home.settingsPath) (0600)")
            case .natsUsers:
                print("  broker identities fleet-manager, payment-server written to \(brokerFiles!)/auth.conf, reloaded on \(brokerPidFile.count) nodes; credentials in \(home.settingsPath) (0600)")
            }
            print("next: fleet-manager provision MACHINE-ID")
        }
    }
}

extension BrokerAdministration.Kind: ExpressibleByArgument {}
