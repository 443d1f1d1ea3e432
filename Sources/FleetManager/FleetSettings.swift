import Foundation
import MessageSchema
import PaymentSDK

/// The fleet's settings, `settings.json` in the fleet home. Written by `fleet-manager init`.
public struct FleetSettings: Codable, Sendable, Hashable {
    public var v = 1
    /// Topic root of the fleet.
    public var topicRoot: String
    /// What units connect to (goes into bundles): `mqtts://host:8883` in production.
    public var deviceBrokerUrl: String
    /// A clustered broker's other nodes as units reach them (same scheme), into bundles.
    public var deviceBrokerAlternates: [String]?
    /// PEM file of the CA units trust for the broker (copied into bundles), for `mqtts://`.
    public var deviceCAFile: String?
    /// The manager's own broker identity (roles `fleet-manager` and `fleet-admin`).
    public var manager: BrokerIdentity
    /// The payment-server identity `fleet-manager pay` and the demo use (role `payment-server`).
    public var paymentServer: BrokerIdentity
    /// Payment page URL for machine payment codes; `{machineId}` is replaced.
    public var paymentUrlTemplate: String
    /// Currency of new machine configurations.
    public var currency: String
    /// Where units download firmware: `firmware publish` makes `URL/<version>/edge-agent`
    /// (e.g. `http://manager.example:8080`, served by `serve --firmware-listen`).
    public var firmwareUrlBase: String?
    /// How the broker's identities are administered; nil is mosquitto's dynamic security.
    public var brokerAdmin: BrokerAdministration?

    public init(
        topicRoot: String, deviceBrokerUrl: String, deviceCAFile: String?, manager: BrokerIdentity,
        paymentServer: BrokerIdentity, paymentUrlTemplate: String, currency: String
    ) {
        self.topicRoot = topicRoot
        self.deviceBrokerUrl = deviceBrokerUrl
        self.deviceCAFile = deviceCAFile
        self.manager = manager
        self.paymentServer = paymentServer
        self.paymentUrlTemplate = paymentUrlTemplate
        self.currency = currency
    }
}
