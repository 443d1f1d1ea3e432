import Foundation
import FleetManager
import LocalServices

extension FleetSetup.Options {
    /// `init` on a local mosquitto started from the `files` template: the password-file
    /// administration, the manager on its own listener, payment servers and units on the pinned one.
    public static func passwordFile(_ broker: LocalMosquitto, home: String) -> FleetSetup.Options {
        var options = FleetSetup.Options(
            home: home, brokerHost: broker.host, brokerPort: broker.adminPort ?? broker.port, adminPassword: "",
            deviceBrokerUrl: "mqtt://127.0.0.1:\(broker.port)")
        options.administration = BrokerAdministration(kind: .passwordFile, directory: broker.directory, pidFile: broker.pidPath)
        options.servicePort = broker.port
        return options
    }

    /// `init` on a local 3-node NATS cluster: node 1 first, the others as alternates for the
    /// manager, payment servers and units.
    public static func natsCluster(_ cluster: LocalNATSCluster, home: String) -> FleetSetup.Options {
        let ports = cluster.mqttPorts
        var options = FleetSetup.Options(
            home: home, brokerHost: cluster.host, brokerPort: ports[0], adminPassword: "", deviceBrokerUrl: "mqtt://127.0.0.1:\(ports[0])")
        options.administration = BrokerAdministration(kind: .natsUsers, directory: cluster.directory, pidFiles: cluster.pidFiles)
        options.brokerAlternates = ports.dropFirst().map { "127.0.0.1:\($0)" }
        options.deviceBrokerAlternates = ports.dropFirst().map { "mqtt://127.0.0.1:\($0)" }
        return options
    }
}

extension LocalNATSCluster {
    /// Whether tests on a NATS cluster run: nats-server is installed and
    /// PULSEBRIDGE_CLUSTER_TESTS=1 (scripts/test.sh's release-cluster stage sets it for
    /// `ClusterTests`; the others by hand, docs/scale.md "Open finding").
    public static var testsEnabled: Bool {
        isAvailable && ProcessInfo.processInfo.environment["PULSEBRIDGE_CLUSTER_TESTS"] == "1"
    }
}
