import FleetManager
import Foundation
import HTTPTypes
import Hummingbird
import Locking
import MessageSchema
import NIOCore

/// What operators do from the console, each through the library call its CLI command makes
/// (`ConfigPublisher`, `Provisioner`), with the same audit record: configuration, revoke,
/// provision (the bundle downloadable once), the sticker sheet of payment codes.
extension ConsoleServer {
    func addActions(to router: Router<ConsoleContext>) {
        router.post("/machines/:id/config") { request, context in
            try await signedInForm(request, context, role: .operator) { session, origin, form in
                try await setConfiguration(context.parameters.get("id") ?? "", form, session, origin)
            }
        }
        router.post("/machines/:id/revoke") { request, context in
            try await signedInForm(request, context, role: .admin) { session, origin, form in
                try await revoke(context.parameters.get("id") ?? "", form, session, origin)
            }
        }
        router.get("/provision") { request, _ in
            guard let session = try session(request) else { return redirect("/login") }
            guard session.account.role >= .admin else {
                return html(.forbidden, ConsolePages.message("Not allowed", "Provisioning needs the admin role; you are a \(session.account.role.rawValue).", session: session))
            }
            return html(.ok, ConsolePages.provision(session: session, error: nil, ready: nil, actions: home != nil))
        }
        router.post("/provision") { request, context in
            try await signedInForm(request, context, role: .admin) { session, origin, form in try await provision(form, session, origin) }
        }
        router.get("/bundles/:token") { request, context in try downloadBundle(context.parameters.get("token") ?? "", request, context) }
        router.get("/codes") { request, _ in try page(request) { try stickerSheet(request, $0) } }
    }

    /// `config set MACHINE KEY=VALUE…` from the machine page.
    func setConfiguration(_ id: String, _ form: [String: String], _ session: OperatorSession, _ origin: String) async throws -> Response {
        guard let home else { return noActions(session) }
        guard let machine = MachineID(rawValue: id) else { return html(.notFound, ConsolePages.message("No such unit", "There is no unit '\(id)'.", session: session)) }
        let pairs = (form["pairs"] ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\r" || $0 == "\t" }).map(String.init)
        let detail = pairs.joined(separator: " ")
        do {
            guard !pairs.isEmpty else { throw FleetError("nothing to set", hint: "e.g. maxAmount=3000 coin.pulseMs=60") }
            let config = try await home.withManagerClient(purpose: "console") { client in
                try await ConfigPublisher(home: home, client: client).publish(machine) { profile in
                    for pair in pairs { try profile.set(pair) }
                }
            }
            audit(session, origin, "config set", target: machine.rawValue, detail: detail, error: nil)
            return redirect("/machines/\(machine.rawValue)?published=\(config.version)")
        } catch {
            audit(session, origin, "config set", target: machine.rawValue, detail: detail, error: error)
            return html(.badRequest, ConsolePages.failure("Configuration not published", error, back: "/machines/\(machine.rawValue)", session: session))
        }
    }

    /// `revoke MACHINE`, confirmed by typing its ID.
    func revoke(_ id: String, _ form: [String: String], _ session: OperatorSession, _ origin: String) async throws -> Response {
        guard let home else { return noActions(session) }
        guard let machine = MachineID(rawValue: id) else { return html(.notFound, ConsolePages.message("No such unit", "There is no unit '\(id)'.", session: session)) }
        guard form["confirm"] == machine.rawValue else {
            return html(
                .badRequest,
                ConsolePages.message("Not revoked", "Type the machine ID (\(machine.rawValue)) in the box to confirm: revoking cannot be undone.", session: session))
        }
        do {
            try await home.withProvisioner(purpose: "console") { try await $0.revoke(machine) }
            audit(session, origin, "revoke", target: machine.rawValue, detail: nil, error: nil)
            return redirect("/machines/\(machine.rawValue)?revoked=1")
        } catch {
            audit(session, origin, "revoke", target: machine.rawValue, detail: nil, error: error)
            return html(.badRequest, ConsolePages.failure("Not revoked", error, back: "/machines/\(machine.rawValue)", session: session))
        }
    }

    /// `provision MACHINE [--rotate-credentials]`; the bundle, which holds the unit's broker
    /// password, is written where only the console's one-time link reads it, and removed once
    /// downloaded (or after `bundleLifetime`).
    func provision(_ form: [String: String], _ session: OperatorSession, _ origin: String) async throws -> Response {
        guard let home else { return noActions(session) }
        let id = (form["machine"] ?? "").trimmingCharacters(in: .whitespaces)
        let rotate = form["rotate"] == "1"
        guard let machine = MachineID(rawValue: id) else {
            let problem = "'\(id)' is not a machine ID (\(MachineID.rule))"
            audit(session, origin, "provision", target: id.isEmpty ? nil : String(id.prefix(64)), detail: nil, error: FleetError(problem))
            return html(.badRequest, ConsolePages.provision(session: session, error: problem, ready: nil, actions: true))
        }
        forgetExpiredBundles()
        let token = Self.randomToken()
        let path = home.bundlesDirectory + "/.console-\(token).json"
        do {
            let outcome = try await home.withProvisioner(purpose: "console") {
                try await $0.provision(machine, rotateCredentials: rotate, bundlePath: path)
            }
            bundles.withLock { $0[token] = PendingBundle(machine: machine, path: path, expires: ContinuousClock.now + options.bundleLifetime) }
            audit(session, origin, "provision", target: machine.rawValue, detail: rotate ? "new credentials" : "configuration v\(outcome.configVersion ?? 0)", error: nil)
            return html(.ok, ConsolePages.provision(session: session, error: nil, ready: (machine, token, outcome.rotated), actions: true))
        } catch {
            try? FileManager.default.removeItem(atPath: path)
            audit(session, origin, "provision", target: machine.rawValue, detail: rotate ? "new credentials" : nil, error: error)
            return html(.badRequest, ConsolePages.provision(session: session, error: Self.describe(error), ready: nil, actions: true))
        }
    }

    /// The bundle, once: the file is gone after this answer.
    func downloadBundle(_ token: String, _ request: Request, _ context: ConsoleContext) throws -> Response {
        guard let session = try session(request) else { return text(.unauthorized, "sign in first\n") }
        guard session.account.role >= .admin else { return text(.forbidden, "bundles need the admin role\n") }
        forgetExpiredBundles()
        guard let pending = bundles.withLock({ $0.removeValue(forKey: token) }) else {
            return html(
                .gone,
                ConsolePages.message(
                    "Bundle gone", "This bundle was downloaded already or has expired. Issue a new one: provision the unit again with \"new credentials\".",
                    session: session))
        }
        defer { try? FileManager.default.removeItem(atPath: pending.path) }
        guard let data = FileManager.default.contents(atPath: pending.path) else {
            return html(.gone, ConsolePages.message("Bundle gone", "The bundle file is missing. Provision the unit again with \"new credentials\".", session: session))
        }
        audit(session, remote(request, context), "bundle download", target: pending.machine.rawValue, detail: nil, error: nil)
        var headers = HTTPFields()
        headers[.contentType] = "application/json"
        headers[.contentDisposition] = "attachment; filename=\"\(pending.machine.rawValue).json\""
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// Payment codes to print and stick on the machines: 24 a sheet.
    func stickerSheet(_ request: Request, _ session: OperatorSession) throws -> String {
        guard let template = options.paymentUrlTemplate else {
            return ConsolePages.message("No payment codes", "serve knows no payment URL template (set at `fleet-manager init`).", session: session)
        }
        let parameters = Self.parameters(request)
        let search = String((parameters["q"] ?? "").prefix(64)).lowercased()
        let all = try registry.machines().filter { search.isEmpty || $0.id.rawValue.contains(search) }
        let pageNumber = max(1, parameters["page"].flatMap(Int.init) ?? 1)
        let codes = try all.dropFirst((pageNumber - 1) * 24).prefix(24).map { try ($0.id, PaymentCode(machine: $0.id, template: template)) }
        return ConsolePages.stickers(codes, total: all.count, page: pageNumber, search: search, session: session)
    }

    func forgetExpiredBundles() {
        let now = ContinuousClock.now
        let expired = bundles.withLock { bundles in
            let gone = bundles.filter { $0.value.expires < now }
            for key in gone.keys { bundles.removeValue(forKey: key) }
            return gone.values.map(\.path)
        }
        for path in expired { try? FileManager.default.removeItem(atPath: path) }
    }

    /// Bundles a console wrote and nobody downloaded before serve stopped: they hold passwords.
    static func removeLeftoverBundles(in home: FleetHome) {
        let directory = home.bundlesDirectory
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(".console-") {
            try? FileManager.default.removeItem(atPath: directory + "/" + name)
        }
    }

    func noActions(_ session: OperatorSession) -> Response {
        html(.serviceUnavailable, ConsolePages.message("Not available", "This console has no fleet home to act with.", session: session))
    }

    static func describe(_ error: any Error) -> String {
        if let error = error as? FleetError { return error.problem + (error.hint.map { " (\($0))" } ?? "") }
        return "\(error)"
    }

    static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
    }
}

/// A bundle waiting for its one download.
struct PendingBundle: Sendable {
    var machine: MachineID
    var path: String
    var expires: ContinuousClock.Instant
}

extension ConsolePages {
    static func failure(_ title: String, _ error: any Error, back: String, session: OperatorSession) -> String {
        var text = "\(error)"
        var hint: String?
        if let error = error as? FleetError {
            text = error.problem
            hint = error.hint
        }
        return page(
            title: title, session: session,
            body: """
                <h1>\(escape(title))</h1><p id="message" class="error">\(escape(text))</p>\(hint.map { "<p id=\"hint\">\(escape($0))</p>" } ?? "")
                <p><a href="\(escape(back))">Back</a></p>
                """)
    }

    static func provision(session: OperatorSession, error: String?, ready: (MachineID, String, Bool)?, actions: Bool) -> String {
        var body = "<h1>Provision a unit</h1>"
        if let (machine, token, rotated) = ready {
            body += """
                <p id="provisioned">\(escape(machine.rawValue)): \(rotated ? "new credentials issued (the old bundle no longer connects)" : "provisioned, its configuration published").</p>
                <p><a class="button" id="bundle" href="/bundles/\(token)" download>Download its bundle</a></p>
                <p class="muted">The bundle holds the unit's broker password. It can be downloaded <strong>once</strong>, within 15 minutes; then it is deleted from this server. Copy it to the unit (docs/install.md).</p>
                """
        }
        if let error { body += "<p class=\"error\" id=\"error\">\(escape(error))</p>" }
        body +=
            actions
            ? """
                <form method="post" action="/provision" class="filters"><input type="hidden" name="csrf" value="\(session.csrf)">
                <input name="machine" id="machine" placeholder="machine ID, e.g. laundry-07" required pattern="[a-z0-9][a-z0-9-]*">
                <label><input type="checkbox" name="rotate" value="1" id="rotate"> new credentials for an existing unit</label>
                <button id="provision">Provision</button></form>
                <p class="muted">With the fleet's default profile; per-unit profiles and bulk provisioning from a CSV: <code>fleet-manager provision</code>.</p>
                """
            : "<p class=\"muted\">This console has no fleet home to act with.</p>"
        return page(title: "Provision", session: session, here: "/provision", body: body)
    }

    static func stickers(_ codes: [(MachineID, PaymentCode)], total: Int, page pageNumber: Int, search: String, session: OperatorSession) -> String {
        let pages = max(1, (total + 23) / 24)
        let cells = codes.map { machine, code -> String in
            let svg = code.svg(moduleSize: 5, caption: machine.rawValue).split(separator: "\n", maxSplits: 1).last.map(String.init) ?? ""
            return "<figure class=\"sticker\" id=\"sticker-\(escape(machine.rawValue))\">\(svg)<figcaption>Scan to pay</figcaption></figure>"
        }.joined()
        let q = search.addingPercentEncoding(withAllowedCharacters: .urlQueryValue) ?? ""
        return page(
            title: "Payment codes", session: session, here: "/codes",
            body: """
                <form class="filters noprint" method="get" action="/codes"><input name="q" placeholder="machine ID contains…" value="\(escape(search))"><button>Filter</button>
                <button type="button" id="print" data-print>Print</button></form>
                <p class="muted noprint">\(total) unit(s) · sheet \(pageNumber) of \(pages) (24 a sheet)
                \(pageNumber > 1 ? "<a href=\"/codes?q=\(q)&page=\(pageNumber - 1)\">previous</a>" : "") \(pageNumber < pages ? "<a href=\"/codes?q=\(q)&page=\(pageNumber + 1)\">next</a>" : "")</p>
                <div class="sheet" id="sheet">\(cells)</div>
                """, script: true)
    }
}
