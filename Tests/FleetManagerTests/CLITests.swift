import FleetManager
import Foundation
import LocalServices
import MessageSchema
import PaymentSDK
import PulseBridgeVersion
import Testing
import TestSupport

/// The built `fleet-manager` binary: expected failures are one clear message with a hint,
/// a non-zero exit and no stack trace.
@Suite(.serialized, .timeLimit(.minutes(4)))
struct CLITests {
    static var binary: String {
        URL(fileURLWithPath: AgentUnit.binary).deletingLastPathComponent().appendingPathComponent("fleet-manager").path
    }

    struct Run {
        var status: LocalServices.ExitStatus
        var output: String
    }

    func run(_ arguments: [String], environment: [String: String] = [:], viaShell: Bool = false) async throws -> Run {
        let out = NSTemporaryDirectory() + "fm-\(UUID().uuidString).out"
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let child = viaShell
            ? try ChildProcess.spawn(arguments[0], Array(arguments.dropFirst()), environment: env, outputPath: out)
            : try ChildProcess.spawn(Self.binary, arguments, environment: env, outputPath: out)
        let status = await child.waitForExit()
        return Run(status: status, output: child.output())
    }

    func expectNoStackTrace(_ output: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(!output.contains("Fatal error"), sourceLocation: sourceLocation)
        #expect(!output.contains("Stack dump"), sourceLocation: sourceLocation)
        #expect(!output.contains("0x0000"), sourceLocation: sourceLocation)
    }

    @Test func initProvisionAndTheErrorsAroundThem() async throws {
        try await LocalMosquitto.with(template: "dynsec") { broker in
            let home = NSTemporaryDirectory() + "pb-cli-\(UUID().uuidString)"
            let secret = NSTemporaryDirectory() + "admin-\(UUID().uuidString)"
            writeSecret(broker.adminPassword!, to: secret)

            // No fleet yet.
            let missing = try await run(["provision", "laundry-01", "--home", home])
            #expect(missing.status == .exited(1))
            #expect(missing.output.contains("no fleet at \(home)"))
            #expect(missing.output.contains("fleet-manager init"))
            expectNoStackTrace(missing.output)

            // Wrong admin password: nothing is created.
            // A password file others may read is refused before anything is tried.
            _ = FileManager.default.createFile(atPath: secret + ".open", contents: Data(broker.adminPassword!.utf8), attributes: [.posixPermissions: 0o644])
            let readable = try await run([
                "init", "--home", home, "--broker-port", "\(broker.port)", "--admin-password-file", secret + ".open",
                "--device-broker-url", "mqtt://127.0.0.1:\(broker.port)",
            ])
            #expect(readable.status == .exited(1))
            #expect(readable.output.contains("may be read by other users (mode 644)") && readable.output.contains("chmod 600 \(secret).open"), "\(readable.output)")
            #expect(!FileManager.default.fileExists(atPath: home + "/settings.json"))
            expectNoStackTrace(readable.output)

            // An alternate node every bundle would carry is checked before anything is created.
            for (alternate, says) in [("node2:1883", "is not mqtt://host:port"), ("mqtts://node2:8883", "does not use the scheme of --device-broker-url")] {
                let badAlternate = try await run([
                    "init", "--home", home, "--broker-port", "\(broker.port)", "--admin-password-file", secret,
                    "--device-broker-url", "mqtt://127.0.0.1:\(broker.port)", "--device-broker-alternate", alternate,
                ])
                #expect(badAlternate.status == .exited(1), "\(badAlternate.output)")
                #expect(badAlternate.output.contains("--device-broker-alternate '\(alternate)' \(says)"), "\(badAlternate.output)")
                #expect(!FileManager.default.fileExists(atPath: home + "/settings.json"))
                expectNoStackTrace(badAlternate.output)
            }

            writeSecret("wrong", to: secret + ".bad")
            let refused = try await run([
                "init", "--home", home, "--broker-port", "\(broker.port)", "--admin-password-file", secret + ".bad",
                "--device-broker-url", "mqtt://127.0.0.1:\(broker.port)",
            ])
            #expect(refused.status == .exited(1))
            #expect(refused.output.contains("127.0.0.1:\(broker.port)"))
            #expect(!FileManager.default.fileExists(atPath: home + "/settings.json"))
            expectNoStackTrace(refused.output)

            let created = try await run([
                "init", "--home", home, "--broker-port", "\(broker.port)", "--admin-password-file", secret,
                "--device-broker-url", "mqtt://127.0.0.1:\(broker.port)",
            ])
            #expect(created.status == .exited(0), "\(created.output)")
            #expect(created.output.contains("fleet created"))
            let keys = try FileManager.default.contentsOfDirectory(atPath: home + "/keys")
            #expect(keys.count == 2)
            for key in keys {
                let mode = (try FileManager.default.attributesOfItem(atPath: home + "/keys/" + key)[.posixPermissions] as? NSNumber)?.intValue
                #expect(mode == 0o600)
            }

            // Never overwrites a fleet.
            let again = try await run([
                "init", "--home", home, "--broker-port", "\(broker.port)", "--admin-password-file", secret,
                "--device-broker-url", "mqtt://127.0.0.1:\(broker.port)",
            ])
            #expect(again.status == .exited(1))
            #expect(again.output.contains("already exists"))

            let bad = try await run(["provision", "Laundry_01", "--home", home])
            #expect(bad.status == .exited(1))
            #expect(bad.output.contains("is not a machine ID"))
            expectNoStackTrace(bad.output)

            let ok = try await run(["provision", "laundry-01", "--home", home])
            #expect(ok.status == .exited(0), "\(ok.output)")
            #expect(ok.output.contains("laundry-01: provisioned"))
            let twice = try await run(["provision", "laundry-01", "--home", home])
            #expect(twice.status == .exited(1))
            #expect(twice.output.contains("--rotate-credentials"))

            // Operations commands without a running unit.
            let offline = try await run(["pay", "laundry-01", "100", "--user", "u-1", "--home", home])
            #expect(offline.status == .exited(6), "\(offline.output)")
            #expect(offline.output.contains("not charging for a machine that cannot credit"))
            let devices = try await run(["devices", "--home", home])
            #expect(devices.status == .exited(0))
            #expect(devices.output.contains("laundry-01"))
            let setBad = try await run(["config", "set", "laundry-01", "maxAmount=lots", "--home", home])
            #expect(setBad.status == .exited(1))
            #expect(setBad.output.contains("maxAmount needs a whole number"))
            let setUnknown = try await run(["config", "set", "laundry-01", "speed=3", "--home", home])
            #expect(setUnknown.output.contains("unknown key 'speed'"))
            let set = try await run(["config", "set", "laundry-01", "maxAmount=3000", "coin.pulseMs=60", "--home", home])
            #expect(set.status == .exited(0), "\(set.output)")
            #expect(set.output.contains("configuration v2 published"))
            let report = try await run(["report", "customers", "--format", "csv", "--home", home])
            #expect(report.status == .exited(0))
            #expect(report.output.hasPrefix("USER,CURRENCY,PAYMENTS,AMOUNT,MACHINES,FIRST SEEN,LAST SEEN"))
            let svg = NSTemporaryDirectory() + "code-\(UUID().uuidString).svg"
            let code = try await run(["code", "laundry-01", "--format", "svg", "--out", svg, "--home", home])
            #expect(code.status == .exited(0))
            #expect(try String(contentsOfFile: svg, encoding: .utf8).hasPrefix("<?xml"))
            let text = try await run(["code", "laundry-01", "--home", home])
            #expect(text.output.contains("http://localhost:8081/m/laundry-01"))

            let list = try await run(["keys", "list", "--home", home])
            #expect(list.status == .exited(0))
            #expect(list.output.contains("payment") && list.output.contains("fleet"))

            // Service names never name a machine, in the CLI too.
            let reserved = try await run(["provision", "payment-server", "--home", home])
            #expect(reserved.status == .exited(1))
            #expect(reserved.output.contains("reserved for a service identity"))
            expectNoStackTrace(reserved.output)

            // A payment server of its own, pinned to its client ID.
            let added = try await run(["payment-servers", "add", "kiosk", "--home", home])
            #expect(added.status == .exited(0), "\(added.output)")
            let credentials = home + "/payment-servers/kiosk.json"
            #expect((try FileManager.default.attributesOfItem(atPath: credentials)[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            let kiosk = try JSONDecoder().decode(BrokerIdentity.self, from: Data(contentsOf: URL(fileURLWithPath: credentials)))
            #expect(kiosk.username == "payment-server-kiosk")
            let own = try await kiosk.connect(clientID: kiosk.username)
            await own.close()
            await #expect(throws: PaymentSDKError.self) { _ = try await kiosk.connect(clientID: "laundry-01") }

            // A payment with no result yet is unknown; an operator settles it after review.
            let fleetHome = try FleetHome.open(at: home)
            let now = Int(Date().timeIntervalSince1970 * 1000)
            let open = PaymentCompleted(
                paymentId: "p-open-1", machineId: "laundry-01", amount: 300, currency: "JPY", userId: "u-9", issuedAt: now,
                expiresAt: now + 30_000)
            _ = try fleetHome.registry.apply([.completion(open, payloadSha256: String(repeating: "0", count: 64))], now: now)
            let listed = try await run(["payments", "--open", "--home", home])
            #expect(listed.status == .exited(0))
            #expect(listed.output.contains("p-open-1") && listed.output.contains("unknown"))
            let badAction = try await run(["payments", "settle", "laundry-01", "p-open-1", "--action", "refund", "--home", home])
            #expect(badAction.status == .exited(1))
            #expect(badAction.output.contains("--action must be capture or void"))
            let settled = try await run(["payments", "settle", "laundry-01", "p-open-1", "--action", "void", "--by", "alice", "--home", home])
            #expect(settled.status == .exited(0), "\(settled.output)")
            let after = try await run(["payments", "--json", "--home", home])
            #expect(after.output.contains("\"settlement\" : \"void\"") && after.output.contains("operator:alice"))
            let nothingOpen = try await run(["payments", "--open", "--home", home])
            #expect(!nothingOpen.output.contains("p-open-1"))

            // The ledger as CSV: the console's export lines, from the same library code.
            let csv = try await run(["payments", "list", "--format", "csv", "--machine", "laundry-01", "--home", home])
            #expect(csv.status == .exited(0), "\(csv.output)")
            let records = try fleetHome.registry.payments(matching: PaymentFilter(machineId: "laundry-01"))
            #expect(!records.isEmpty)
            #expect(csv.output == CSVRows.line(FleetReports.ledgerHeader) + records.map(FleetReports.ledgerLine).joined())
            let badStatus = try await run(["payments", "list", "--status", "maybe", "--home", home])
            #expect(badStatus.status == .exited(64) && badStatus.output.contains("credited") && badStatus.output.contains("pending"), "\(badStatus.output)")
            let badDay = try await run(["payments", "list", "--to", "2026-13-01", "--home", home])
            #expect(badDay.status == .exited(1) && badDay.output.contains("is not a date"))
            expectNoStackTrace(badDay.output)

            let revoke = try await run(["revoke", "laundry-01", "--home", home])
            #expect(revoke.status == .exited(0), "\(revoke.output)")
            let revokeAgain = try await run(["revoke", "laundry-01", "--home", home])
            #expect(revokeAgain.status == .exited(1))
            #expect(revokeAgain.output.contains("already revoked"))
        }
    }

    /// What a new operator ran into (issue: release-grade): each a clear refusal or a fix.
    @Test func theOperatorsPaperCuts() async throws {
        try await LocalMosquitto.with(template: "dynsec") { broker in
            let home = NSTemporaryDirectory() + "pb-cuts-\(UUID().uuidString)"
            let secret = NSTemporaryDirectory() + "admin-\(UUID().uuidString)"
            writeSecret(broker.adminPassword!, to: secret)
            // The CA given by a relative path is copied into the home.
            let caDirectory = NSTemporaryDirectory() + "pb-cuts-ca-\(UUID().uuidString)"
            try FileManager.default.createDirectory(atPath: caDirectory, withIntermediateDirectories: true)
            try "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".write(toFile: caDirectory + "/ca.crt", atomically: true, encoding: .utf8)
            let created = try await run(
                ["/bin/sh", "-c", "cd \(caDirectory) && exec \"$0\" \"$@\"", Self.binary, "init", "--home", home, "--broker-port", "\(broker.port)",
                 "--admin-password-file", secret, "--device-broker-url", "mqtts://localhost:8883", "--device-ca-file", "ca.crt"],
                viaShell: true)
            #expect(created.status == .exited(0), "\(created.output)")
            let settings = try String(contentsOfFile: home + "/settings.json", encoding: .utf8)
            #expect(settings.contains("\"deviceCAFile\" : \"\(home)/pki/device-ca.pem\""), "\(settings)")
            #expect(FileManager.default.fileExists(atPath: home + "/pki/device-ca.pem"))
            #expect((try FileManager.default.attributesOfItem(atPath: home + "/registry.sqlite")[.posixPermissions] as? NSNumber)?.intValue == 0o600)
            // Provisioning from another folder works: the CA path is absolute.
            let provisioned = try await run(["/bin/sh", "-c", "cd / && exec \"$0\" \"$@\"", Self.binary, "provision", "unit-01", "--home", home], viaShell: true)
            #expect(provisioned.status == .exited(0), "\(provisioned.output)")

            // A second init against a broker that holds a fleet: refused, the broker still up,
            // the first fleet intact.
            let second = try await run([
                "init", "--home", home + "-second", "--broker-port", "\(broker.port)", "--admin-password-file", secret,
                "--device-broker-url", "mqtt://127.0.0.1:\(broker.port)",
            ])
            #expect(second.status == .exited(1))
            #expect(second.output.contains("already holds a PulseBridge fleet"), "\(second.output)")
            #expect(!FileManager.default.fileExists(atPath: home + "-second/settings.json"))
            let stillWorks = try await run(["provision", "unit-02", "--home", home])
            #expect(stillWorks.status == .exited(0), "\(stillWorks.output)")

            // Bad levels, amounts and dates are refused before anything connects.
            let level = try await run(["devices", "--home", home, "--log-level", "loud"])
            #expect(level.status != .exited(0))
            #expect(level.output.contains("--log-level 'loud' is not one of"))
            let amount = try await run(["pay", "unit-01", "0", "--user", "u", "--home", home])
            #expect(amount.status == .exited(1))
            #expect(amount.output.contains("the amount must be 1 to 10,000,000"))
            let ttl = try await run(["pay", "unit-01", "100", "--user", "u", "--ttl", "900", "--home", home])
            #expect(ttl.output.contains("--ttl must be 1 to 600 seconds"))
            let date = try await run(["report", "customers", "--from", "2026-02-30", "--home", home])
            #expect(date.status == .exited(1))
            #expect(date.output.contains("'2026-02-30' is not a date"))
            expectNoStackTrace(date.output)

            // Alerts: none yet; a wrong ID or state says so; serve's webhook needs its secret.
            let none = try await run(["alerts", "--home", home])
            #expect(none.status == .exited(0) && none.output.contains("no open alerts"), "\(none.output)")
            let ack = try await run(["alerts", "ack", "42", "--home", home])
            #expect(ack.status == .exited(1) && ack.output.contains("no alert 42") && ack.output.contains("fleet-manager alerts lists them"), "\(ack.output)")
            let states = try await run(["alerts", "deliveries", "--state", "lost", "--home", home])
            #expect(states.status == .exited(1) && states.output.contains("--state must be pending, delivered or dead"))
            let unsigned = try await run(["serve", "--home", home, "--alert-webhook", "https://ops.example.com/hook"])
            #expect(unsigned.status == .exited(1) && unsigned.output.contains("--alert-webhook needs --alert-webhook-secret-file"), "\(unsigned.output)")
            let notURL = try await run(["serve", "--home", home, "--alert-webhook", "ops", "--alert-webhook-secret-file", secret])
            #expect(notURL.status == .exited(1) && notURL.output.contains("'ops' is not an http(s) URL"), "\(notURL.output)")
            expectNoStackTrace(ack.output + unsigned.output + notURL.output)

            // The audit trail: what changed the fleet, who, from where, how it ended; reads are not in it.
            let remote = try await run(
                ["provision", "unit-03", "--home", home], environment: ["SUDO_USER": "ana", "SSH_CLIENT": "203.0.113.9 51000 22"])
            #expect(remote.status == .exited(0), "\(remote.output)")
            let trail = try await run(["audit", "--json", "--home", home])
            let records = try JSONDecoder().decode([AuditRecord].self, from: Data(trail.output.utf8))
            #expect(records.map { "\($0.action) \($0.target ?? "-") \($0.outcome.rawValue)" } == [
                "provision unit-03 ok", "alerts ack alert 42 failed", "pay unit-01 failed", "pay unit-01 failed", "provision unit-02 ok",
                "provision unit-01 ok", "init \(home) ok",
            ])
            #expect(records[0].actor == "ana" && records[0].origin.hasSuffix("(ssh from 203.0.113.9)") && records[0].via == .cli)
            #expect(records[1].error == "no alert 42")
            #expect(records.dropFirst().allSatisfy { $0.actor == (ProcessInfo.processInfo.environment["SUDO_USER"] ?? NSUserName()) })
            let ofUnit = try await run(["audit", "--target", "unit-02", "--home", home])
            #expect(ofUnit.output.contains("provision") && !ofUnit.output.contains("unit-01"), "\(ofUnit.output)")

            // JSON where scripts need it.
            let keys = try await run(["keys", "list", "--json", "--home", home])
            let parsed = try JSONSerialization.jsonObject(with: Data(keys.output.utf8)) as? [[String: Any]]
            #expect(parsed?.count == 2)
            #expect(Set(parsed?.compactMap { $0["purpose"] as? String } ?? []) == ["fleet", "payment"])

            // One serve per home: the second says so and exits.
            let serve = try ChildProcess.spawn(Self.binary, ["serve", "--home", home], outputPath: home + "/serve-1.log")
            let deadline = ContinuousClock.now + .seconds(15)
            while !readTextFile(home + "/serve-1.log").contains("watching 'fleet'") {
                guard ContinuousClock.now < deadline else { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(readTextFile(home + "/serve-1.log").contains("fleet-manager serve \(PulseBridgeVersion.current)"))
            let twice = try await run(["serve", "--home", home])
            #expect(twice.status == .exited(1))
            #expect(twice.output.contains("another `fleet-manager serve` (pid \(serve.pid))"), "\(twice.output)")
            await serve.terminate(grace: .seconds(10))
            let device = try await run(["device", "unit-01", "--json", "--home", home])
            #expect(device.output.contains("\"machineId\" : \"unit-01\""), "\(device.output)")
        }
    }

}

/// A secret file as an operator writes it: readable by its owner only.
func writeSecret(_ text: String, to path: String) {
    _ = FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600])
}
