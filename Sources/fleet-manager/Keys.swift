import ArgumentParser
import FleetManager
import Foundation
import MessageSchema

struct Keys: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Payment and fleet signing keys.", subcommands: [List.self, Add.self, Rotate.self, Retire.self])

    struct List: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "List the keys and what they sign.")
        @OptionGroup var options: HomeOptions
        @Flag(help: "JSON: [{kid, purpose, state, publicKey, createdAt}].") var json = false

        func run(home: FleetHome) async throws {
            if json {
                let objects: [[String: Any]] = try home.registry.keys().map {
                    ["kid": $0.kid.rawValue, "purpose": $0.purpose.rawValue, "state": $0.state.rawValue, "publicKey": $0.publicKey, "createdAt": $0.createdAt]
                }
                print(String(decoding: try JSONSerialization.data(withJSONObject: objects, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
                return
            }
            print("KID".padding(toLength: 40, withPad: " ", startingAt: 0) + "PURPOSE   STATE     PUBLIC KEY")
            for key in try home.registry.keys() {
                print(key.kid.rawValue.padding(toLength: 40, withPad: " ", startingAt: 0)
                    + key.purpose.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0)
                    + key.state.rawValue.padding(toLength: 10, withPad: " ", startingAt: 0) + key.publicKey)
            }
        }
    }

    struct Add: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Add a key and push the new trust list to every unit.")
        @OptionGroup var options: HomeOptions
        @Option(help: "payment or fleet.") var purpose: String
        @Option(help: "Key ID (default: generated).") var kid: String?
        var audit: AuditAction? { AuditAction(action: "keys add", target: kid, detail: "purpose \(purpose)") }

        func run(home: FleetHome) async throws {
            let purpose = try parsePurpose(self.purpose)
            let kid = try kid.map { raw -> KeyID in
                guard let kid = KeyID(rawValue: raw) else { throw FleetError("'\(raw)' is not a key ID (\(KeyID.rule))") }
                return kid
            }
            let (added, pushed) = try await home.withManagerClient(purpose: "keys") {
                try await KeyManager(home: home).add(purpose, kid: kid, client: $0)
            }
            print("added \(purpose.rawValue) key \(added) (private key \(home.privateKeyPath(added)), 0600); trust pushed to \(pushed.count) unit(s)")
        }
    }

    struct Rotate: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "Start a rotation: a new key signs from now on; the old stays trusted until `keys retire`.")
        @OptionGroup var options: HomeOptions
        @Option(help: "payment or fleet.") var purpose: String
        var audit: AuditAction? { AuditAction(action: "keys rotate", target: nil, detail: "purpose \(purpose)") }

        func run(home: FleetHome) async throws {
            let purpose = try parsePurpose(self.purpose)
            let rotation = try await home.withManagerClient(purpose: "keys") { try await KeyManager(home: home).rotate(purpose, client: $0) }
            print("new \(purpose.rawValue) key \(rotation.new); retiring \(rotation.retiring.map(\.rawValue).joined(separator: ", "))")
            print("trust (old and new) pushed to \(rotation.pushed.count) unit(s); when all report it applied: fleet-manager keys retire KID")
        }
    }

    struct Retire: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Stop trusting a retiring key, once every unit applied its successor.")
        @OptionGroup var options: HomeOptions
        @Argument(help: "The key ID.") var kid: String
        @Flag(help: "Retire even if some units have not applied the new trust yet.") var force = false
        var audit: AuditAction? { AuditAction(action: "keys retire", target: kid, detail: force ? "--force" : nil) }

        func run(home: FleetHome) async throws {
            guard let kid = KeyID(rawValue: kid) else { throw FleetError("'\(self.kid)' is not a key ID") }
            try await RetainedReports.refresh(home: home, machines: try home.registry.machines().map(\.id))
            let pushed = try await home.withManagerClient(purpose: "keys") {
                try await KeyManager(home: home).retire(kid, force: force, client: $0)
            }
            print("retired \(kid); trust pushed to \(pushed.count) unit(s)")
        }
    }
}

func parsePurpose(_ text: String) throws -> KeyPurpose {
    guard let purpose = KeyPurpose(rawValue: text) else {
        throw FleetError("--purpose must be 'payment' or 'fleet', not '\(text)'")
    }
    return purpose
}
