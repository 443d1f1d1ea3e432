import Foundation
import Logging
import MessageSchema
import DaemonSupport
import Testing
import TestSupport

/// `--log-format`: text for people and journald, JSON lines for machines, with the machine ID
/// and payment ID as fields on every payment line.
@Suite(.timeLimit(.minutes(3)))
struct LogFormatTests {
    static let date = Date(timeIntervalSince1970: 1_796_074_867.042)

    @Test func textLineHasTimeLevelLabelMessageAndFields() {
        let line = LineLogHandler.line(
            format: .text, journald: false, date: Self.date, level: .warning, label: "pulsebridge.edge-agent",
            message: "payment refused: bad signature", source: "EdgeAgent",
            fields: ["payment.id": "p-1", "machine.id": "laundry-01"])
        #expect(line == "2026-11-30T21:41:07.042Z warning pulsebridge.edge-agent: payment refused: bad signature machine.id=laundry-01 payment.id=p-1\n")
    }

    /// Under systemd the journal stamps the time and reads the priority from `<N>`.
    @Test(arguments: [(Logger.Level.error, "<3>"), (.warning, "<4>"), (.notice, "<5>"), (.info, "<6>"), (.debug, "<7>"), (.critical, "<2>")])
    func journaldLineStartsWithItsPriority(level: Logger.Level, prefix: String) {
        let line = LineLogHandler.line(
            format: .text, journald: true, date: Self.date, level: level, label: "l", message: "m", source: "s", fields: [:])
        #expect(line == "\(prefix)\(level) l: m\n")
    }

    /// A message with a newline (an error's description) stays one line, one journal entry.
    @Test func textNeverSpansLines() {
        let line = LineLogHandler.line(
            format: .text, journald: true, date: Self.date, level: .error, label: "l", message: "first\nsecond", source: "s", fields: [:])
        #expect(line.filter { $0 == "\n" }.count == 1)
    }

    @Test func jsonLineIsOneObjectWithEveryField() throws {
        let hostile = "quote \" backslash \\ newline \n tab \t bell \u{07} line separator \u{2028} emoji 🧺"
        let line = LineLogHandler.line(
            format: .json, journald: true, date: Self.date, level: .error, label: "pulsebridge.payment-server",
            message: hostile, source: "PaymentServer",
            fields: ["payment.id": "p-2", "machine.id": "wash-01", "ts": "a field may not replace the time"])
        #expect(line.hasSuffix("}\n"))
        #expect(line.dropLast().contains("\n") == false)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
        #expect(object["ts"] == "2026-11-30T21:41:07.042Z")
        #expect(object["level"] == "error")
        #expect(object["label"] == "pulsebridge.payment-server")
        #expect(object["msg"] == hostile)
        #expect(object["source"] == "PaymentServer")
        #expect(object["payment.id"] == "p-2")
        #expect(object["machine.id"] == "wash-01")
    }

    /// The real agent with `--log-format json`: every line is a JSON object, and every line
    /// about a payment names the payment and the machine.
    @Test func agentLogsJSONWithMachineAndPaymentOnEveryPaymentLine() async throws {
        try await FleetHarness.with { fleet in
            let machine: MachineID = "logs-01"
            let unit = try fleet.unit(machine)
            try unit.start(arguments: ["--log-format", "json"])
            _ = try await fleet.status(machine, .online)
            let good = fleet.payment(machine, amount: 300)
            try await fleet.publish(good)
            #expect(try await fleet.result(good.paymentId, machine: machine).status == .credited)
            try await fleet.publish(good)  // a duplicate: answered from the journal, and logged
            #expect(try await fleet.result(good.paymentId, machine: machine).status == .duplicate)
            await unit.terminate()

            let lines = unit.log().split(separator: "\n").filter { !$0.isEmpty }
            #expect(lines.count >= 3)
            var paymentLines = 0
            for line in lines {
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                    Issue.record("not a JSON object: \(line)")
                    continue
                }
                #expect(object["ts"] is String && object["level"] is String && object["msg"] is String)
                if object["payment.id"] != nil {
                    paymentLines += 1
                    #expect(object["machine.id"] as? String == machine.rawValue, "\(line)")
                }
            }
            #expect(paymentLines >= 2, "the credit and the duplicate are logged with their payment")
        }
    }
}
