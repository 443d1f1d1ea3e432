import ArgumentParser
import DaemonSupport
import FleetConsole
import FleetManager
import Foundation
import Logging
import PulseBridgeVersion
import MessageSchema
import PaymentSDK
import ServiceLifecycle

struct Report: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "Customer and machine reports from recorded payments.")
    @OptionGroup var options: HomeOptions
    @Argument(help: "customers or machines.") var kind: String
    @Option(help: "From this day (YYYY-MM-DD, UTC), inclusive.") var from: String?
    @Option(help: "To this day (YYYY-MM-DD, UTC), inclusive.") var to: String?
    @Option(help: "table, csv or json.") var format = "table"

    func run(home: FleetHome) async throws {
        guard ["table", "csv", "json"].contains(format) else { throw FleetError("--format must be table, csv or json") }
        func day(_ text: String?, end: Bool) throws -> Int? {
            guard let text else { return nil }
            guard let ms = PaymentFilter.day(text, end: end) else {
                throw FleetError("'\(text)' is not a date (YYYY-MM-DD)", hint: "e.g. --from 2026-11-01")
            }
            return ms
        }
        let filter = PaymentFilter(from: try day(from, end: false), to: try day(to, end: true))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let table: (headers: [String], rows: [[String]])
        switch kind {
        case "customers":
            let rows = FleetReports.customers(try home.registry.payments(matching: filter))
            if format == "json" { print(String(decoding: try encoder.encode(rows), as: UTF8.self)); return }
            table = FleetReports.customerTable(rows)
        case "machines":
            let rows = try home.registry.machineDays(matching: filter)
            if format == "json" { print(String(decoding: try encoder.encode(rows), as: UTF8.self)); return }
            table = FleetReports.machineTable(rows)
        default:
            throw FleetError("unknown report '\(kind)'", hint: "fleet-manager report customers|machines")
        }
        print(FleetReports.render(headers: table.headers, rows: table.rows, format: format), terminator: "")
    }
}

struct Code: FleetCommand {
    static let configuration = CommandConfiguration(abstract: "A machine's payment code (QR of the payment URL).")
    @OptionGroup var options: HomeOptions
    @Argument(help: "The machine ID.") var machineId: String
    @Option(help: "svg or text.") var format = "text"
    @Option(help: "Write to this file instead of standard output.") var out: String?

    func run(home: FleetHome) async throws {
        guard let machine = MachineID(rawValue: machineId) else { throw FleetError("'\(machineId)' is not a machine ID") }
        guard try home.registry.machine(machine) != nil else {
            throw FleetError("no unit '\(machine)' in the registry", hint: "provision it first")
        }
        let code = try PaymentCode(machine: machine, template: home.settings.paymentUrlTemplate)
        let output: String
        switch format {
        case "svg": output = code.svg(caption: machine.rawValue)
        case "text": output = code.text() + code.url + "\n"
        default: throw FleetError("--format must be svg or text")
        }
        if let out {
            guard FileManager.default.createFile(atPath: out, contents: Data(output.utf8)) else { throw FleetError("cannot write \(out)") }
            print("\(machine): payment code for \(code.url) written to \(out)")
        } else {
            print(output, terminator: "")
        }
    }
}
