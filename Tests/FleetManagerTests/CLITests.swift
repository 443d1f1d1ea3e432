import FleetManager
import Foundation
import LocalServices
import MessageSchema
import Testing
import TestSupport

/// The built `fleet-manager` binary: expected failures are one clear message with a hint,
/// a non-zero exit and no stack trace.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct CLITests {
    static var binary: String {
        URL(fileURLWithPath: AgentUnit.binary).deletingLastPathComponent().appendingPathComponent("fleet-manager").path
    }

    struct Run {
        var status: LocalServices.ExitStatus
        var output: String
    }

    func run(_ arguments: [String], environment: [String: String] = [:]) async throws -> Run {
        let out = NSTemporaryDirectory() + "fm-\(UUID().uuidString).out"
        var env = ProcessInfo.processInfo.environment
        for (k, v) in environment { env[k] = v }
        let child = try ChildProcess.spawn(Self.binary, arguments, environment: env, outputPath: out)
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
            try broker.adminPassword!.write(toFile: secret, atomically: true, encoding: .utf8)

            // No fleet yet.
            let missing = try await run(["provision", "laundry-01", "--home", home])
            #expect(missing.status == .exited(1))
            #expect(missing.output.contains("no fleet at \(home)"))
            #expect(missing.output.contains("fleet-manager init"))
            expectNoStackTrace(missing.output)

            // Wrong admin password: nothing is created.
            try "wrong".write(toFile: secret + ".bad", atomically: true, encoding: .utf8)
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
            #expect(report.output.hasPrefix("USER,PAYMENTS,AMOUNT,MACHINES,FIRST SEEN,LAST SEEN"))
            let svg = NSTemporaryDirectory() + "code-\(UUID().uuidString).svg"
            let code = try await run(["code", "laundry-01", "--format", "svg", "--out", svg, "--home", home])
            #expect(code.status == .exited(0))
            #expect(try String(contentsOfFile: svg, encoding: .utf8).hasPrefix("<?xml"))
            let text = try await run(["code", "laundry-01", "--home", home])
            #expect(text.output.contains("https://pay.example.com/m/laundry-01"))

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
            await #expect(throws: FleetError.self) { _ = try await kiosk.connect(clientID: "laundry-01") }

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

            let revoke = try await run(["revoke", "laundry-01", "--home", home])
            #expect(revoke.status == .exited(0), "\(revoke.output)")
            let revokeAgain = try await run(["revoke", "laundry-01", "--home", home])
            #expect(revokeAgain.status == .exited(1))
            #expect(revokeAgain.output.contains("already revoked"))
        }
    }
}
