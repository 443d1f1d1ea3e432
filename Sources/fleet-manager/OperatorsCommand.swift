import ArgumentParser
import FleetManager
import Foundation

/// `fleet-manager operators`: the people who sign in to the console (serve --http).
struct Operators: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Console operators: viewer (sees), operator (also acts on units), admin (also manages operators and units).",
        subcommands: [List.self, Add.self, Passwd.self, Remove.self], defaultSubcommand: List.self)

    struct List: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "The operators and their roles.")
        @OptionGroup var options: HomeOptions
        @Flag(help: "JSON instead of a table.") var json = false

        func run(home: FleetHome) async throws {
            let operators = try home.registry.operators()
            if json { return printJSON(operators) }
            if operators.isEmpty { return print("no operators: fleet-manager operators add NAME --role admin --password-file -") }
            printTable(["NAME", "ROLE", "CREATED", "PASSWORD CHANGED"], operators.map { [$0.name, $0.role.rawValue, formatTime($0.createdAt), formatTime($0.passwordChangedAt)] })
        }
    }

    struct Add: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Add an operator (the password from a file, or - for standard input; never on the command line).")
        @OptionGroup var options: HomeOptions
        @Argument(help: "The name they sign in with.") var name: String
        @Option(help: "viewer, operator or admin.") var role: String
        @Option(help: "A file holding the password (at least 12 characters); - reads standard input.") var passwordFile: String
        var audit: AuditAction? { AuditAction(action: "operators add", target: name, detail: "role \(role)") }

        func run(home: FleetHome) async throws {
            let role = try parseRole(role)
            try home.registry.addOperator(name, role: role, password: try readSecret(file: passwordFile, value: nil, name: "password"))
            print("operator \(name) (\(role.rawValue)) added")
        }
    }

    struct Passwd: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Set an operator's password (and role); their sessions end.")
        @OptionGroup var options: HomeOptions
        @Argument(help: "The operator.") var name: String
        @Option(help: "A file holding the new password; - reads standard input.") var passwordFile: String
        @Option(help: "A new role: viewer, operator or admin.") var role: String?
        var audit: AuditAction? { AuditAction(action: "operators passwd", target: name, detail: role.map { "role \($0)" }) }

        func run(home: FleetHome) async throws {
            let role = try role.map(parseRole)
            try home.registry.setOperatorPassword(name, password: try readSecret(file: passwordFile, value: nil, name: "password"), role: role)
            print("operator \(name): password changed\(role.map { ", role \($0.rawValue)" } ?? ""); signed out everywhere")
        }
    }

    struct Remove: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Remove an operator; their sessions end. The audit trail keeps their actions.")
        @OptionGroup var options: HomeOptions
        @Argument(help: "The operator.") var name: String
        var audit: AuditAction? { AuditAction(action: "operators remove", target: name) }

        func run(home: FleetHome) async throws {
            try home.registry.removeOperator(name)
            print("operator \(name) removed")
        }
    }
}

func parseRole(_ text: String) throws -> OperatorAccount.Role {
    guard let role = OperatorAccount.Role(rawValue: text) else { throw FleetError("--role must be viewer, operator or admin, not '\(text)'") }
    return role
}
