import ArgumentParser
import FleetManager
import Foundation
import MessageSchema

/// `fleet-manager payment-servers`: one broker identity per payment server.
struct PaymentServers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "payment-servers",
        abstract: "Broker identities for payment servers: one each, pinned to its own client ID.",
        subcommands: [Add.self, Remove.self])

    struct Add: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "Make a payment server's identity and write its credentials file (0600).",
            discussion: """
                The identity is `payment-server-NAME`; it may publish completions and read results and
                statuses, and it can connect only with the client ID `payment-server-NAME`, so its
                credentials can never take over a unit's session.
                """)
        @OptionGroup var options: HomeOptions
        @Argument(help: "A short name for the server (lower-case letters, digits, '-').") var name: String
        @Option(help: "Where to write the credentials (default: HOME/payment-servers/NAME.json).") var out: String?
        var audit: AuditAction? { AuditAction(action: "payment-servers add", target: "payment-server-\(name)") }

        func run(home: FleetHome) async throws {
            guard let id = MachineID(rawValue: name) else {
                throw FleetError("'\(name)' is not a valid name", hint: "use 2–63 lower-case letters, digits and '-', starting with a letter or digit")
            }
            var identity = home.settings.paymentServer
            identity.username = "payment-server-\(id.rawValue)"
            identity.password = Provisioner.newPassword()
            let path = out ?? home.path + "/payment-servers/\(id.rawValue).json"
            guard !FileManager.default.fileExists(atPath: path) else {
                throw FleetError("\(path) exists", hint: "remove the payment server first, or pick another name")
            }
            let backend = try await home.provisioningBackend()
            do {
                try await backend.createPaymentServer(identity)
                await backend.close()
            } catch {
                await backend.close()
                throw FleetError("cannot create \(identity.username): \(error)", hint: "does a payment server of that name exist already?")
            }
            try FileManager.default.createDirectory(
                atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            _ = FileManager.default.createFile(atPath: path, contents: try encoder.encode(identity), attributes: [.posixPermissions: 0o600])
            print("payment server \(identity.username): credentials in \(path) (0600); its client ID must be \(identity.username)")
        }
    }

    struct Remove: FleetCommand {
        static let configuration = CommandConfiguration(abstract: "Delete a payment server's identity; it can no longer connect.")
        @OptionGroup var options: HomeOptions
        @Argument(help: "The name given to `payment-servers add`.") var name: String
        var audit: AuditAction? { AuditAction(action: "payment-servers remove", target: "payment-server-\(name)") }

        func run(home: FleetHome) async throws {
            let backend = try await home.provisioningBackend()
            do {
                try await backend.deletePaymentServer(username: "payment-server-\(name)")
                await backend.close()
            } catch {
                await backend.close()
                throw FleetError("cannot remove payment-server-\(name): \(error)", hint: "check the name (`payment-servers add` made it)")
            }
            unlink(home.path + "/payment-servers/\(name).json")
            print("removed payment-server-\(name)")
        }
    }
}

/// `fleet-manager payments`: what the payment servers should do with each payment.
struct Payments: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Payments and their settlement; held and unknown ones, and settling them after review.",
        subcommands: [List.self, Settle.self], defaultSubcommand: List.self)

    struct List: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "The payments ledger: payments with their settlement (capture, void, hold, or unknown: no result yet).",
            discussion: """
                `serve` settles a payment from its result, or voids one without a result once its machine
                comes back online for a session that began after the payment expired (the unit publishes
                its results before `online`). Unknown ones are kept authorised until then.

                --format csv is the ledger for reconciliation: amounts in the currency's minor unit, a
                currency column, times in UTC, and text that a spreadsheet would run as a formula
                prefixed with an apostrophe. The console's "Export CSV" gives the same file.
                """)
        @OptionGroup var options: HomeOptions
        @Option(help: "Only this machine.") var machine: String?
        @Option(help: "Only this user ID.") var user: String?
        @Option(help: "Only this first decision.") var status: PaymentFilter.Status?
        @Option(help: "Only this reason (e.g. expired, inhibited).") var reason: String?
        @Option(help: "Only this settlement.") var settlement: PaymentFilter.Settlement?
        @Option(help: "From this day (YYYY-MM-DD, UTC), inclusive.") var from: String?
        @Option(help: "To this day (YYYY-MM-DD, UTC), inclusive.") var to: String?
        @Flag(help: "Only payments not settled yet or held for review.") var open = false
        @Option(help: "table, csv or json.") var format: LedgerFormat = .table
        @Flag(help: "JSON instead of a table (same as --format json).") var json = false

        func run(home: FleetHome) async throws {
            func day(_ text: String?, end: Bool) throws -> Int? {
                guard let text else { return nil }
                guard let ms = PaymentFilter.day(text, end: end) else {
                    throw FleetError("'\(text)' is not a date (YYYY-MM-DD)", hint: "e.g. --from 2026-11-01")
                }
                return ms
            }
            let filter = PaymentFilter(
                machineId: machine, userId: user, status: status, reason: reason, settlement: settlement, from: try day(from, end: false),
                to: try day(to, end: true), open: open)
            switch json ? .json : format {
            case .csv:
                print(CSVRows.line(FleetReports.ledgerHeader), terminator: "")
                try await home.registry.forEachPayment(matching: filter) { batch in
                    print(batch.map(FleetReports.ledgerLine).joined(), terminator: "")
                }
            case .json:
                let encoder = JSONEncoder()
                encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
                print(String(decoding: try encoder.encode(try home.registry.payments(matching: filter)), as: UTF8.self))
            case .table:
                let rows = try home.registry.payments(matching: filter).map {
                    [
                        $0.paymentId, $0.machineId, $0.userId ?? "-", $0.requestedAmount.map(String.init) ?? "-", $0.currency ?? "-", $0.status?.rawValue ?? "-",
                        $0.reason ?? "-", $0.settlement?.rawValue ?? "unknown", $0.settledBy ?? "-",
                    ]
                }
                print(
                    FleetReports.render(
                        headers: ["PAYMENT", "MACHINE", "USER", "AMOUNT", "CURRENCY", "STATUS", "REASON", "SETTLEMENT", "BY"], rows: rows,
                        format: "table"), terminator: "")
            }
        }
    }

    enum LedgerFormat: String, ExpressibleByArgument, CaseIterable {
        case table, csv, json
    }

    struct Settle: FleetCommand {
        static let configuration = CommandConfiguration(
            abstract: "Settle a held (uncertain) or unknown payment by hand, after review.")
        @OptionGroup var options: HomeOptions
        @Argument(help: "The machine the payment was for.") var machine: String
        @Argument(help: "The payment ID.") var payment: String
        @Option(help: "capture or void.") var action: String
        @Option(help: "Who decided (recorded with the settlement; default: who runs the command, through sudo too).") var by = AuditRecord.cliActor().actor

        var audit: AuditAction? { AuditAction(action: "payments settle", target: payment, detail: "\(machine) \(action) by \(by)") }

        func run(home: FleetHome) async throws {
            guard let settlement = Settlement(rawValue: action), settlement != .hold else {
                throw FleetError("--action must be capture or void, not '\(action)'")
            }
            guard let machineId = MachineID(rawValue: machine), let paymentId = PaymentID(rawValue: payment) else {
                throw FleetError("'\(machine)' / '\(payment)' is not a machine ID and payment ID", hint: "see `fleet-manager payments --open`")
            }
            let now = Registry.now()
            guard try home.registry.settleByOperator(machine: machineId, payment: paymentId, settlement: settlement, operator: by, now: now) else {
                throw FleetError(
                    "\(payment) on \(machine) is not held or unknown", hint: "only payments listed by `fleet-manager payments --open` can be settled by hand")
            }
            print("\(payment) on \(machine): \(action) (by \(by))")
        }
    }
}

/// `fleet-manager wait`: for scripts and runbooks, until units are online or configured.
struct Wait: FleetCommand {
    static let configuration = CommandConfiguration(
        abstract: "Wait until units are online, or have applied their desired configuration.",
        discussion: """
            Reads the units' retained status and configuration reports from the broker (no `serve` needed).
            Exit 0 when every unit got there; 1, naming the ones that did not, after --timeout.
            """)
    @OptionGroup var options: HomeOptions
    @Argument(help: "Machine IDs.") var machines: [String]
    @Flag(help: "Until each unit's retained status is online.") var online = false
    @Flag(help: "Until each unit reported its desired configuration version applied.") var configApplied = false
    @Option(help: "Seconds to wait at most.") var timeout = 60

    func run(home: FleetHome) async throws {
        guard online != configApplied else { throw FleetError("say what to wait for: --online or --config-applied") }
        let ids = try machines.map { raw -> MachineID in
            guard let id = MachineID(rawValue: raw) else { throw FleetError("'\(raw)' is not a machine ID") }
            return id
        }
        var desired: [MachineID: Int] = [:]
        if configApplied {
            for id in ids {
                guard let version = try home.registry.machine(id)?.desiredConfig?.version else {
                    throw FleetError("\(id) has no desired configuration", hint: "is it provisioned? `fleet-manager devices`")
                }
                desired[id] = version
            }
        }
        let missing = try await home.withManagerClient(purpose: "wait") { client in
            try await client.subscribe(home.topics.filter(online ? .status : .configReported))
            var waiting = Set(ids)
            let deadline = Task {
                try? await Task.sleep(for: .seconds(timeout))
                await client.close()
            }
            defer { deadline.cancel() }
            for await message in client.messages {
                // Attributed to the machine its topic names; a body naming another is ignored.
                guard let (machine, _) = home.topics.parse(message.topic), waiting.contains(machine) else { continue }
                if online {
                    if let status = try? WireCoding.decode(StatusMessage.self, from: message.payload), status.machineId == machine,
                        status.state == .online
                    {
                        waiting.remove(machine)
                    }
                } else if let report = try? WireCoding.decode(ConfigReported.self, from: message.payload), report.machineId == machine,
                    report.status == .applied, report.version >= desired[machine] ?? .max
                {
                    waiting.remove(machine)
                }
                if waiting.isEmpty { break }
            }
            return waiting
        }
        guard missing.isEmpty else {
            throw FleetError(
                "after \(timeout) s, not \(online ? "online" : "configured"): \(missing.map(\.rawValue).sorted().joined(separator: ", "))",
                hint: "check those units (their logs, `fleet-manager device ID`)")
        }
        print("\(ids.map(\.rawValue).joined(separator: ", ")): \(online ? "online" : "configuration applied")")
    }
}

extension PaymentFilter.Status: ExpressibleByArgument {}
extension PaymentFilter.Settlement: ExpressibleByArgument {}
