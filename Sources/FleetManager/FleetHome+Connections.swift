import Foundation
import MQTT

/// The broker connections an action needs, opened for it and closed whatever happens: the CLI's
/// commands and the console's actions both go through these.
extension FleetHome {
    /// Connects as the fleet manager (`purpose` names the client), runs `body`, and closes the
    /// connection.
    public func withManagerClient<T>(purpose: String, _ body: (MQTTClient) async throws -> T) async throws -> T {
        try await settings.manager.withClient(clientID: "fleet-manager-\(purpose)-\(UUID().uuidString.prefix(8).lowercased())", body)
    }

    /// The broker's identity administration the settings name: dynamic security (connected
    /// as the manager) or the password and ACL files.
    public func provisioningBackend() async throws -> any ProvisioningBackend {
        switch settings.brokerAdmin?.kind ?? .dynamicSecurity {
        case .dynamicSecurity: return try await DynamicSecurityBackend.connect(settings.manager)
        case .passwordFile: return try PasswordFileBackend(settings.brokerAdmin!, manager: settings.manager)
        case .natsUsers: return try NATSUsersBackend(settings.brokerAdmin!, manager: settings.manager)
        }
    }

    /// A `Provisioner` with its two connections (broker administration and the manager's client).
    public func withProvisioner<T>(purpose: String, _ body: (Provisioner) async throws -> T) async throws -> T {
        let backend = try await provisioningBackend()
        do {
            let result = try await withManagerClient(purpose: purpose) { publisher in
                try await body(Provisioner(home: self, backend: backend, publisher: publisher))
            }
            await backend.close()
            return result
        } catch {
            await backend.close()
            throw error
        }
    }
}
