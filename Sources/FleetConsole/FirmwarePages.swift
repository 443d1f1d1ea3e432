import FleetManager
import Foundation
import HTTPTypes
import Hummingbird
import MessageSchema
import NIOCore

/// Firmware from the console: the releases, a rollout started with `FirmwareManager` (the
/// code `fleet-manager firmware rollout` runs) inside serve, its waves and units live, and
/// an abort.
extension ConsoleServer {
    func addFirmware(to router: Router<ConsoleContext>) {
        router.get("/firmware") { request, _ in
            try page(request) { session in
                ConsolePages.firmware(
                    releases: try registry.releases(), rollouts: try registry.rollouts(), status: try registry.firmwareStatus(), canAct: home != nil,
                    session: session)
            }
        }
        router.post("/firmware/rollouts") { request, context in
            try await signedInForm(request, context, role: .operator) { session, origin, form in try startRollout(form, session, origin) }
        }
        router.get("/firmware/rollouts/:id") { request, context in
            try page(request) { session in
                guard let id = context.parameters.get("id").flatMap(Int.init), let rollout = try registry.rollout(id) else {
                    return ConsolePages.message("No such rollout", "There is no rollout \(context.parameters.get("id") ?? "").", session: session)
                }
                return ConsolePages.rollout(rollout, reports: try reports(id), canAbort: rollouts.withLock { $0[id] != nil }, session: session)
            }
        }
        router.get("/firmware/rollouts/:id/progress") { request, context in
            guard try session(request) != nil else { return text(.unauthorized, "sign in first\n") }
            guard let id = context.parameters.get("id").flatMap(Int.init), let rollout = try registry.rollout(id) else {
                return text(.notFound, "no such rollout\n")
            }
            return try json(ConsolePages.rolloutProgress(rollout, reports: try reports(id)))
        }
        router.post("/firmware/rollouts/:id/abort") { request, context in
            try await signedInForm(request, context, role: .operator) { session, origin, _ in
                guard let id = context.parameters.get("id").flatMap(Int.init), let handle = rollouts.withLock({ $0[id] }) else {
                    return html(.conflict, ConsolePages.message("Not running", "This rollout is not running in this console (it ended, or the CLI runs it).", session: session))
                }
                handle.abort(by: session.account.name)
                audit(session, origin, "firmware abort", target: "rollout \(id)", detail: nil, error: nil)
                return redirect("/firmware/rollouts/\(id)")
            }
        }
    }

    /// The last firmware report of each unit in `rollout`, by machine ID.
    func reports(_ rollout: Int) throws -> [String: FirmwareStatusRow] {
        Dictionary(try registry.firmwareStatus(rollout: rollout).map { ($0.machineId, $0) }, uniquingKeysWith: { $1 })
    }

    func startRollout(_ form: [String: String], _ session: OperatorSession, _ origin: String) throws -> Response {
        guard let home else { return noActions(session) }
        let version = form["version"] ?? ""
        let search = (form["units"] ?? "").trimmingCharacters(in: .whitespaces).lowercased()
        let detail = "\(search.isEmpty ? "all units" : "units containing '\(search)'") wave \(form["wave"] ?? "?")% max-failures \(form["maxFailures"] ?? "?")"
        do {
            guard let percent = Double(form["wave"] ?? ""), percent > 0, percent <= 100 else { throw FleetError("the wave must be 1 to 100 %") }
            guard let maxFailures = Int(form["maxFailures"] ?? ""), maxFailures >= 1 else { throw FleetError("the failure limit must be 1 or more") }
            guard let timeout = Int(form["timeout"] ?? ""), (1...86_400).contains(timeout) else {
                throw FleetError("the time a unit has to report must be 1 to 86400 s")
            }
            let machines = try registry.machines().map(\.id).filter { search.isEmpty || $0.rawValue.contains(search) }
            let manager = FirmwareManager(home: home)
            let plan = try manager.plan(
                version: version, machines: machines, wave: percent / 100, maxFailures: maxFailures, timeout: .seconds(timeout), by: session.account.name,
                via: .web)
            let handle = RolloutAbort()
            rollouts.withLock { $0[plan.id] = handle }
            let logger = self.logger
            let rollouts = self.rollouts
            Task {
                do {
                    let report = try await home.withManagerClient(purpose: "console-rollout") { client in
                        try await manager.run(plan, client: client, abort: handle) { logger.info("rollout \(plan.id): \($0)") }
                    }
                    logger.notice("rollout \(plan.id) of \(version) ended: installed \(report.installed.count), failed \(report.failed.count)")
                } catch {
                    logger.error("rollout \(plan.id) of \(version) stopped: \(error)")
                }
                _ = rollouts.withLock { $0.removeValue(forKey: plan.id) }
            }
            audit(session, origin, "firmware rollout", target: version, detail: "rollout \(plan.id): \(detail)", error: nil)
            return redirect("/firmware/rollouts/\(plan.id)")
        } catch {
            audit(session, origin, "firmware rollout", target: version.isEmpty ? nil : version, detail: detail, error: error)
            return html(.badRequest, ConsolePages.failure("Rollout not started", error, back: "/firmware", session: session))
        }
    }

    func json(_ object: [String: Any]) throws -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        return Response(
            status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]))))
    }
}

extension ConsolePages {
    static func firmware(
        releases: [FirmwareRelease], rollouts: [RolloutRecord], status: [FirmwareStatusRow], canAct: Bool, session: OperatorSession
    ) -> String {
        var running: [String: Int] = [:]
        for row in status { running[row.running ?? "unknown", default: 0] += 1 }
        let versions = running.sorted { $0.key < $1.key }.map { "<tr><td>\(escape($0.key))</td><td>\($0.value)</td></tr>" }.joined()
        let releaseRows = releases.map { r in
            "<tr><td>\(escape(r.version))</td><td>\(r.size) bytes</td><td><code>\(escape(String(r.sha256.prefix(16))))…</code></td><td><code>\(escape(r.url))</code></td></tr>"
        }.joined()
        let rolloutRows = rollouts.map { r in
            "<tr><td><a href=\"/firmware/rollouts/\(r.id)\">#\(r.id)</a></td><td>\(escape(r.version))</td><td class=\"rollout-\(r.state.rawValue)\">\(r.state.rawValue)</td><td>\(escape(r.startedBy)) (\(escape(r.via)))</td><td>\(time(r.startedAt))</td><td>\(escape(r.detail ?? "–"))</td></tr>"
        }.joined()
        var start = ""
        if canAct, session.account.role >= .operator, !releases.isEmpty {
            let options = releases.map { "<option value=\"\(escape($0.version))\">\(escape($0.version))</option>" }.joined()
            start = """
                <h2>Roll out</h2>
                <form method="post" action="/firmware/rollouts" class="filters" id="rollout-form"><input type="hidden" name="csrf" value="\(session.csrf)">
                <label>Version <select name="version" id="rollout-version">\(options)</select></label>
                <label>Units <input name="units" id="rollout-units" placeholder="all, or IDs containing…"></label>
                <label>Wave <input name="wave" id="rollout-wave" value="10" size="3">%</label>
                <label>Stop after <input name="maxFailures" id="rollout-max-failures" value="1" size="3"> failure(s)</label>
                <label>Each unit has <input name="timeout" id="rollout-timeout" value="300" size="5"> s</label>
                <button id="rollout-start">Start rollout</button></form>
                <p class="muted">The same rollout as <code>fleet-manager firmware rollout</code>: each wave is published only after the one before it ended; the rollout stops when failures reach the limit, and units not reached yet are not touched. A unit installing an update is expected to go offline for a moment: that offline raises no alert.</p>
                """
        }
        return page(
            title: "Firmware", session: session, here: "/firmware",
            body: """
                <h2>Running</h2><table id="versions" class="facts"><thead><tr><th>Version</th><th>Units</th></tr></thead><tbody>\(versions)</tbody></table>
                \(start)
                <h2>Rollouts</h2><table id="rollouts"><thead><tr><th>Rollout</th><th>Version</th><th>State</th><th>Started by</th><th>At</th><th>Result</th></tr></thead>
                <tbody>\(rolloutRows.isEmpty ? "<tr><td colspan=\"6\" class=\"muted\">none yet</td></tr>" : rolloutRows)</tbody></table>
                <h2>Releases</h2><table id="releases"><thead><tr><th>Version</th><th>Size</th><th>SHA-256</th><th>URL</th></tr></thead>
                <tbody>\(releaseRows.isEmpty ? "<tr><td colspan=\"4\" class=\"muted\">none: <code>fleet-manager firmware publish</code></td></tr>" : releaseRows)</tbody></table>
                """)
    }

    /// A unit's live report for a rollout's version: "installing", "failed (reason)", or "–".
    static func report(_ row: FirmwareStatusRow?, version: String) -> String {
        guard let row, row.reportedVersion == version, let state = row.state else { return "–" }
        return state + (row.reason.map { " (\($0))" } ?? "")
    }

    static func rolloutProgress(_ rollout: RolloutRecord, reports: [String: FirmwareStatusRow]) -> [String: Any] {
        [
            "state": rollout.state.rawValue, "detail": rollout.detail ?? "",
            "counts": Dictionary(uniqueKeysWithValues: ["planned", "sent", "installed", "failed", "untouched", "abandoned"].map { ($0, rollout.count(.init(rawValue: $0)!)) }),
            "units": Dictionary(uniqueKeysWithValues: rollout.units.map { unit in
                (unit.machineId, ["state": unit.state.rawValue, "reason": unit.reason ?? "", "report": report(reports[unit.machineId], version: rollout.version)])
            }),
        ]
    }

    static func rollout(_ rollout: RolloutRecord, reports: [String: FirmwareStatusRow], canAbort: Bool, session: OperatorSession) -> String {
        let waves = Dictionary(grouping: rollout.units, by: \.wave).sorted { $0.key < $1.key }
        let tables = waves.map { wave, units -> String in
            let rows = units.map { unit in
                "<tr data-unit=\"\(escape(unit.machineId))\"><td><a href=\"/machines/\(escape(unit.machineId))\">\(escape(unit.machineId))</a></td><td data-field=\"state\" class=\"unit-\(unit.state.rawValue)\">\(unit.state.rawValue)\(unit.reason.map { ": \(escape($0))" } ?? "")</td><td data-field=\"report\">\(escape(report(reports[unit.machineId], version: rollout.version)))</td></tr>"
            }.joined()
            return "<h3>Wave \(wave)</h3><table class=\"wave\" id=\"wave-\(wave)\"><thead><tr><th>Unit</th><th>In this rollout</th><th>Its last report</th></tr></thead><tbody>\(rows)</tbody></table>"
        }.joined()
        let counts = ["planned", "sent", "installed", "failed", "untouched", "abandoned"].map {
            "<span id=\"count-\($0)\">\(rollout.count(.init(rawValue: $0)!))</span> \($0)"
        }.joined(separator: " · ")
        let abort =
            canAbort && session.account.role >= .operator
            ? """
                <form method="post" action="/firmware/rollouts/\(rollout.id)/abort" class="filters"><input type="hidden" name="csrf" value="\(session.csrf)"><button id="abort">Abort the rollout</button></form>
                """ : ""
        return page(
            title: "Rollout #\(rollout.id)", session: session, here: "/firmware",
            body: """
                <h1 data-rollout="\(rollout.id)">Rollout #\(rollout.id): \(escape(rollout.version)) <span id="rollout-state" class="rollout-\(rollout.state.rawValue)">\(rollout.state.rawValue)</span></h1>
                <p>Started by \(escape(rollout.startedBy)) (\(escape(rollout.via))) at \(time(rollout.startedAt)); \(rollout.waveSize) unit(s) a wave, stops after \(rollout.maxFailures) failure(s), \(rollout.timeoutS) s for each unit to report.</p>
                <p id="rollout-detail">\(escape(rollout.detail ?? ""))</p>
                <p class="muted">\(counts) · live</p>
                \(abort)
                \(tables)
                """, script: true)
    }
}
