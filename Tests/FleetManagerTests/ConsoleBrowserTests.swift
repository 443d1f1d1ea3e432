import FleetManager
import Foundation
import LocalServices
import MessageSchema
import PaymentSDK
import Testing
import TestSupport

/// The console in Chromium (`Tests/browser/console_flow.py`) against the `fleet-manager serve`
/// binary users run, with real agents: an operator signs in, sees the units live, sees one
/// the test kills turn offline without a reload while its alert's webhook reaches a receiver,
/// acknowledges the alert and finds that in the audit trail; a viewer cannot act. The
/// screenshots are the ones in docs/console.md. Run by the browser stage of scripts/test.sh
/// (`PULSEBRIDGE_BROWSER_TESTS=1`), alone: Chromium beside the timing tests starves them.
@Suite(.serialized, .timeLimit(.minutes(6)))
struct ConsoleBrowserTests {
    static let enabled = ProcessInfo.processInfo.environment["PULSEBRIDGE_BROWSER_TESTS"] == "1"

    @Test(.enabled(if: enabled, "the browser stage of scripts/test.sh runs it (PULSEBRIDGE_BROWSER_TESTS=1)"))
    func anOperatorAndAViewerInTheConsole() async throws {
        let receiver = try await AlertTests.Receiver.start()
        defer { receiver.process.send(SIGKILL) }
        try await DynsecFleet.with { fleet in
            let units: [MachineID] = ["laundry-01", "laundry-02", "wash-01"]
            for unit in units { _ = try await fleet.provisioner.provision(unit, profile: OperationsTests.fastProfile) }
            let directory = fleet.home.path + "/console-test"
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            let binary = PaymentServerFleet.binary("fleet-manager")
            func cli(_ arguments: [String]) async throws {
                let child = try ChildProcess.spawn(binary, arguments + ["--home", fleet.home.path], outputPath: directory + "/cli-\(UUID().uuidString).out")
                #expect(await child.waitForExit(timeout: .seconds(60)) == .exited(0), "\(arguments): \(child.output())")
            }
            for (name, role) in [("ana", "operator"), ("vic", "viewer"), ("root", "admin")] {
                let file = directory + "/\(name).password"
                _ = FileManager.default.createFile(atPath: file, contents: Data("correct horse \(name)".utf8), attributes: [.posixPermissions: 0o600])
                try await cli(["operators", "add", name, "--role", role, "--password-file", file])
            }
            let secret = directory + "/webhook.secret"
            _ = FileManager.default.createFile(atPath: secret, contents: Data("s3cret-for-alerts".utf8), attributes: [.posixPermissions: 0o600])
            let port = try LoopbackPort.free()
            let serve = try ChildProcess.spawn(
                binary,
                [
                    "serve", "--home", fleet.home.path, "--http", "127.0.0.1:\(port)", "--alert-webhook", receiver.url,
                    "--alert-webhook-secret-file", secret, "--alert-first-retry", "0.2",
                ],
                outputPath: directory + "/serve.log")
            defer { serve.send(SIGKILL) }
            var agents: [MachineID: ChildProcess] = [:]
            for unit in units { agents[unit] = try OperationsTests.startAgent(fleet, unit) }
            defer { for agent in agents.values { agent.send(SIGKILL) } }
            try await OperationsTests.eventually("all online", timeout: .seconds(60)) {
                try fleet.home.registry.overviews(now: 0).filter { $0.state == "online" }.count == 3
            }

            // Payments through the real units, for the ledger and the revenue charts.
            let (kid, key) = try fleet.home.signingKey(.payment)
            let payments = try await PaymentClient.connect(fleet.home.settings.paymentServer, topics: fleet.home.topics, kid: kid, key: key)
            for (unit, amount, user) in [("laundry-01", 400, "alice"), ("wash-01", 1200, "=cmd|' /C calc'!A0"), ("laundry-01", 3100, "bob")] {
                _ = try await payments.pay(MachineID(rawValue: unit)!, amount: amount, currency: "JPY", userId: UserID(rawValue: user)!)
            }
            await payments.close()
            try await OperationsTests.eventually("the payments recorded", timeout: .seconds(30)) {
                try fleet.home.registry.payments().filter { $0.status != nil }.count == 3
            }

            // A release nobody can download: the rollout the browser starts ends with the unit's failure.
            try fleet.home.registry.addRelease(
                FirmwareRelease(version: "9.9.9", sha256: String(repeating: "ab", count: 32), size: 10, url: "http://127.0.0.1:9/9.9.9/edge-agent"))

            let shots = ProcessInfo.processInfo.environment["PULSEBRIDGE_SCREENSHOTS"].flatMap { $0.isEmpty ? nil : $0 } ?? directory + "/shots"
            let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("browser/console_flow.py").path
            let browser = try ChildProcess.spawn(
                "/usr/bin/env",
                [
                    "python3", script, "--url", "http://127.0.0.1:\(port)", "--operator", "ana:correct horse ana", "--viewer",
                    "vic:correct horse vic", "--admin", "root:correct horse root", "--unit", "laundry-02", "--live-unit", "laundry-01",
                    "--new-unit", "vend-01", "--shots", shots,
                ],
                outputPath: directory + "/browser.out")
            try await AlertTests.waitFor("the fleet page in the browser", timeout: .seconds(120)) {
                guard browser.isRunning else { throw FleetError("the browser run ended early:\n\(browser.output().suffix(3000))") }
                return browser.output().contains("READY-TO-KILL")
            }
            await agents["laundry-02"]!.killAndWait()
            let status = await browser.waitForExit(timeout: .seconds(180))
            let output = browser.output()
            guard let line = output.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
                let seen = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            else {
                Issue.record("the browser run printed no result (\(String(describing: status))):\n\(output.suffix(3000))\nserve:\n\(serve.output().suffix(2000))")
                return
            }
            #expect(status == .exited(0), "\(seen)")
            #expect(seen["unsignedLandsOnLogin"] as? Bool == true)
            #expect(seen["rows"] as? Int == 3)
            #expect(seen["offlineLive"] as? Bool == true, "offline shown without a reload")
            #expect(seen["offlineCount"] as? String == "1")
            #expect(seen["acknowledgedBy"] as? String == "ana")
            #expect(seen["auditShowsAck"] as? Bool == true)
            #expect(seen["viewerButtons"] as? Int == 0)
            #expect(seen["viewerPost"] as? Int == 403)
            // The offline alert reached the webhook receiver, signed.
            try await AlertTests.waitFor("the webhook") {
                receiver.requests().contains {
                    $0["status"] as? Int == 200 && $0["event"] as? String == "alert.opened" && ($0["body"] as? String)?.contains("laundry-02") == true
                }
            }
            let trail = try fleet.home.registry.auditTrail()
            #expect(trail.contains { $0.action == "alerts ack" && $0.actor == "ana" && $0.via == .web })
            #expect(trail.contains { $0.action == "refused" && $0.actor == "vic" })
            // The ledger and its export agree with the registry; the charts add up to it.
            let totals = try fleet.home.registry.ledgerTotals(matching: PaymentFilter())
            #expect(totals.map(\.revenue) == [1600], "400 + 1200 credited, 3100 over the unit's maximum refused")
            #expect(seen["ledgerRows"] as? Int == 3)
            #expect(seen["pageRevenue"] as? [String: Int] == ["JPY": 1600])
            let csv = try CSVRows.parse(try #require(seen["csv"] as? String))
            #expect(csv.first?.fields == FleetReports.ledgerHeader && csv.count == 4)
            let revenueColumn = try #require(FleetReports.ledgerHeader.firstIndex(of: "revenue"))
            #expect(csv.dropFirst().reduce(0) { $0 + (Int($1.fields[revenueColumn]) ?? 0) } == 1600)
            #expect(csv.contains { $0.fields.contains("'=cmd|' /C calc'!A0") }, "the formula a spreadsheet would run is defused")
            #expect((seen["machineStates"] as? [String])?.last == "offline", "\(seen["machineStates"] ?? "-")")
            #expect((seen["machineStates"] as? [String])?.contains("online") == true)
            let newest = seen["machineNewestConfig"] as? String ?? ""
            #expect(newest.contains("applied") && newest.contains("maxAmount") && newest.contains("2500"), "\(newest)")
            #expect((seen["machineCode"] as? Int ?? 0) > 0, "the payment code is on the page")
            #expect((seen["configNotice"] as? String)?.contains("published") == true)
            let laundry01 = try #require(try fleet.home.registry.overviews(now: Registry.now(), only: "laundry-01").first)
            #expect(laundry01.appliedConfigVersion == laundry01.desiredConfigVersion && laundry01.desiredConfigVersion != nil)
            #expect(try fleet.home.registry.machine("laundry-01")?.desiredConfig?.maxAmount == 2500)
            #expect(try fleet.home.registry.auditTrail().contains { $0.action == "config set" && $0.actor == "ana" && $0.via == .web })
            #expect(seen["stickers"] as? Int == 3)
            #expect(seen["rolloutLive"] as? Bool == true, "progress shown without a reload")
            #expect(["completed", "aborted"].contains(seen["rolloutState"] as? String ?? ""), "\(seen["rolloutState"] ?? "-")")
            #expect((seen["rolloutUnit"] as? String)?.hasPrefix("failed") == true, "\(seen["rolloutUnit"] ?? "-")")
            #expect((seen["provisioned"] as? String)?.hasPrefix("vend-01: provisioned") == true, "\(seen["provisioned"] ?? "-")")
            #expect((seen["bundleFirst"] as? [Any])?.first as? Int == 200 && (seen["bundleFirst"] as? [Any])?.last as? String == "vend-01")
            #expect((seen["bundleSecond"] as? [Any])?.first as? Int == 410, "the bundle downloads once")
            #expect(try fleet.home.registry.machine("vend-01")?.state == .provisioned)
            #expect(try fleet.home.registry.auditTrail().contains { $0.action == "bundle download" && $0.actor == "root" && $0.target == "vend-01" })
            let rollout = try #require(try fleet.home.registry.rollouts().first)
            #expect(rollout.startedBy == "ana" && rollout.via == "web")
            let bars = seen["revenueBars"] as? [String: Int] ?? [:]
            #expect(bars["days-JPY"] == 1600 && bars["machines-JPY"] == 1600, "\(bars)")
            for name in ["login", "fleet", "fleet-offline", "alerts", "audit", "viewer-alerts", "payments", "revenue", "machine", "codes", "rollout", "firmware", "provision"] {
                #expect(FileManager.default.fileExists(atPath: shots + "/console-\(name).png"), "screenshot \(name)")
            }
        }
    }
}
