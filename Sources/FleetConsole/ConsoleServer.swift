import FleetManager
import Foundation
import HTTPTypes
import Hummingbird
import WebSupport
import Locking
import Logging
import MessageSchema
import NIOCore


/// `serve --http HOST:PORT`: the operator console and `/metrics`.
///
/// Nothing but the sign-in page answers without a session: a page redirects to `/login`, the
/// event stream answers 401, a form 403. Sessions are cookies (HttpOnly, SameSite=Strict,
/// Secure when the console's URL is https) whose token the registry keeps only hashed; every
/// form carries the session's CSRF token; sign-in attempts are limited per address and name.
/// `/metrics` takes a bearer token instead (a scraper has no session).
public struct ConsoleServer: Sendable {
    public struct Options: Sendable {
        public var host = "127.0.0.1"
        public var port = 8090
        /// The URL operators open (for the cookie's Secure flag and the Origin check);
        /// default `http://HOST:PORT`.
        public var publicUrl: String?
        /// The token a scraper sends (`Authorization: Bearer TOKEN`); `/metrics` is off without one.
        public var metricsToken: String?
        /// Failed sign-ins per address (and per name) in `signInWindow` before the next is refused.
        public var signInAttempts = 5
        public var signInWindow: Duration = .seconds(300)
        /// The fleet's payment URL template (`{machineId}`), for the payment codes on machine pages.
        public var paymentUrlTemplate: String?
        /// How long a bundle made in the console waits for its one download.
        public var bundleLifetime: Duration = .seconds(900)
        /// How often the event stream looks for changes (it reads the registry only when
        /// serve changed it, or every 5 s).
        public var livePeriod: Duration = .milliseconds(250)
        public init() {}
    }

    let registry: Registry
    /// The fleet home actions work on (broker connections, keys); nil: a read-only console.
    let home: FleetHome?
    let metrics: FleetMetrics
    let options: Options
    let logger: Logger
    let failures = Locked<[String: [ContinuousClock.Instant]]>([:])
    /// The port listened on (port 0 in `options`: the one the system gave).
    let boundPort = Locked<Int?>(nil)

    /// The last units-per-state read, shared by the pages and live streams.
    let counts = Locked<(counts: [String: Int], at: ContinuousClock.Instant)?>(nil)
    /// Rollouts this console started and that still run, by rollout ID.
    let rollouts = Locked<[Int: RolloutAbort]>([:])
    /// Bundles provisioned in the console, by download token.
    let bundles = Locked<[String: PendingBundle]>([:])

    public init(home: FleetHome, metrics: FleetMetrics, options: Options, logger: Logger = Logger(label: "pulsebridge.http")) {
        self.init(registry: home.registry, home: home, metrics: metrics, options: options, logger: logger)
        Self.removeLeftoverBundles(in: home)
        // A rollout the console ran before serve stopped ran in that process: it ended with it.
        do { try home.registry.interruptRollouts(via: .web) } catch { logger.error("cannot mark the console's unfinished rollouts: \(error)") }
    }

    /// A console that shows a registry and cannot act on the fleet.
    public init(registry: Registry, metrics: FleetMetrics, options: Options, logger: Logger = Logger(label: "pulsebridge.http")) {
        self.init(registry: registry, home: nil, metrics: metrics, options: options, logger: logger)
    }

    init(registry: Registry, home: FleetHome?, metrics: FleetMetrics, options: Options, logger: Logger) {
        self.registry = registry
        self.home = home
        self.metrics = metrics
        self.options = options
        self.logger = logger
    }

    static let cookie = "pb_console"

    /// Every route the console answers but `/login`, as the router has them (`:id` and the
    /// like filled with `1`): the test sends each one a request without a session, so a route
    /// added later is checked without anyone listing it.
    public func routes() -> [(method: String, path: String)] {
        router().routes.map { route in
            let path = route.path.description.split(separator: "/", omittingEmptySubsequences: false)
                .map { $0.hasPrefix(":") || $0.hasPrefix("{") ? "1" : String($0) }.joined(separator: "/")
            return (route.method.rawValue, path.isEmpty ? "/" : path)
        }.filter { $0.path != "/login" }
    }

    var publicUrl: String {
        options.publicUrl ?? "http://\(options.host.contains(":") ? "[\(options.host)]" : options.host):\(boundPort.withLock { $0 } ?? options.port)"
    }

    public func router() -> Router<ConsoleContext> {
        let router = Router(context: ConsoleContext.self)
        // No framing, no sniffing, no caching of operator pages; scripts only from the console.
        router.add(
            middleware: SecurityHeaders(
                contentSecurityPolicy:
                    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                noStore: true))
        router.get("/metrics") { request, _ in try scrape(request) }
        router.get("/login") { request, _ in
            if try session(request) != nil { return redirect("/") }
            return html(.ok, ConsolePages.login(error: nil))
        }
        router.post("/login") { request, context in try await signIn(request, context) }
        router.post("/logout") { request, context in
            try await signedInForm(request, context, role: .viewer) { session, origin in try signOut(request, session, origin) }
        }
        router.get("/") { request, _ in try page(request) { try fleetPage(request, $0) } }
        router.get("/alerts") { request, _ in
            try page(request) { session in
                let all = try registry.alerts(openOnly: false, limit: 200)
                return ConsolePages.alerts(all.filter { $0.resolvedAt == nil }, resolved: all.filter { $0.resolvedAt != nil }.prefix(50).map { $0 }, session: session)
            }
        }
        router.get("/audit") { request, _ in try page(request) { ConsolePages.audit(try registry.auditTrail(limit: 500), session: $0) } }
        router.get("/console.js") { request, _ in
            guard try session(request) != nil else { return text(.unauthorized, "sign in first\n") }
            var headers = HTTPFields()
            headers[.contentType] = "text/javascript; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: ConsolePages.script)))
        }
        router.get("/events") { request, _ in try events(request) }
        router.get("/payments") { request, _ in try page(request) { try paymentsPage(request, $0) } }
        router.get("/payments.csv") { request, _ in try exportLedger(request) }
        router.get("/machines/:id") { request, context in
            try page(request) { session in try machinePage(context.parameters.get("id") ?? "", request, session) }
        }
        router.get("/machines/:id/code.svg") { request, context in try paymentCode(context.parameters.get("id") ?? "", request) }
        router.get("/revenue") { request, _ in try page(request) { try revenuePage(request, $0) } }
        router.post("/payments/settle") { request, context in
            try await signedInForm(request, context, role: .operator) { session, origin, form in try settle(form, session, origin) }
        }
        router.post("/alerts/:id/ack") { request, context in
            try await signedInForm(request, context, role: .operator) { session, origin in
                guard let id = context.parameters.get("id").flatMap(Int.init) else { return text(.notFound, "no such alert\n") }
                do {
                    let alert = try registry.acknowledgeAlert(id, by: session.account.name)
                    audit(session, origin, "alerts ack", target: "alert \(id)", detail: "\(alert.machineId) \(alert.kind.rawValue)", error: nil)
                    return redirect("/alerts")
                } catch {
                    audit(session, origin, "alerts ack", target: "alert \(id)", detail: nil, error: error)
                    return html(.notFound, ConsolePages.message("Not found", "\(error)", session: session))
                }
            }
        }
        addActions(to: router)
        addFirmware(to: router)
        return router
    }

    // MARK: Sessions

    func session(_ request: Request) throws -> OperatorSession? {
        guard let token = request.cookies[Self.cookie]?.value, token.utf8.count == 64 else { return nil }
        return try registry.session(token: token)
    }

    /// A signed-in page, or the way to sign in.
    func page(_ request: Request, _ body: (OperatorSession) throws -> String) throws -> Response {
        guard let session = try session(request) else { return redirect("/login") }
        return html(.ok, try body(session))
    }

    /// A form from a signed-in operator with at least `role`, its CSRF token and origin checked.
    func signedInForm(
        _ request: Request, _ context: ConsoleContext, role: OperatorAccount.Role,
        _ body: (OperatorSession, String) async throws -> Response
    ) async throws -> Response {
        try await signedInForm(request, context, role: role) { session, origin, _ in try await body(session, origin) }
    }

    /// The same, with the form's fields.
    func signedInForm(
        _ request: Request, _ context: ConsoleContext, role: OperatorAccount.Role,
        _ body: (OperatorSession, String, [String: String]) async throws -> Response
    ) async throws -> Response {
        guard let session = try session(request) else { return text(.forbidden, "sign in first\n") }
        if let origin = request.headers[.origin], origin != Self.origin(of: publicUrl) {
            return text(.forbidden, "this form came from \(origin), not the console\n")
        }
        let form = try await Self.form(request)
        guard let csrf = form["csrf"], HMAC.equal(csrf, session.csrf) else {
            return html(.forbidden, ConsolePages.message("Refused", "The form is out of date (its security token does not match). Reload the page and try again.", session: session))
        }
        guard session.account.role >= role else {
            audit(session, remote(request, context), "refused", target: request.uri.path, detail: "needs \(role.rawValue)", error: nil)
            return html(.forbidden, ConsolePages.message("Not allowed", "This needs the \(role.rawValue) role; you are a \(session.account.role.rawValue).", session: session))
        }
        return try await body(session, remote(request, context), form)
    }

    func signIn(_ request: Request, _ context: ConsoleContext) async throws -> Response {
        let form = try await Self.form(request)
        let name = form["name"] ?? ""
        let origin = remote(request, context)
        let keys = ["address \(origin)", "name \(name)"]
        if let wait = limited(keys) {
            return html(.tooManyRequests, ConsolePages.login(error: "Too many failed attempts. Try again in \(wait) minute(s).", name: name))
        }
        guard let account = try registry.authenticate(name, password: form["password"] ?? "") else {
            failed(keys)
            try? registry.recordAudit(
                AuditRecord(actor: name.isEmpty ? "?" : String(name.prefix(32)), via: .web, origin: origin, action: "sign in", outcome: .failed, error: "wrong name or password"))
            return html(.unauthorized, ConsolePages.login(error: "Wrong name or password.", name: name))
        }
        let (token, session) = try registry.openSession(account, origin: origin)
        audit(session, origin, "sign in", target: nil, detail: nil, error: nil)
        var response = redirect("/")
        response.setCookie(
            Cookie(name: Self.cookie, value: token, maxAge: 12 * 3600, path: "/", secure: publicUrl.hasPrefix("https:"), httpOnly: true, sameSite: .strict))
        return response
    }

    func signOut(_ request: Request, _ session: OperatorSession, _ origin: String) throws -> Response {
        if let token = request.cookies[Self.cookie]?.value { try registry.closeSession(token: token) }
        audit(session, origin, "sign out", target: nil, detail: nil, error: nil)
        var response = redirect("/login")
        response.setCookie(Cookie(name: Self.cookie, value: "", maxAge: 0, path: "/", secure: publicUrl.hasPrefix("https:"), httpOnly: true, sameSite: .strict))
        return response
    }

    /// Minutes to wait if one of `keys` failed too often lately.
    func limited(_ keys: [String]) -> Int? {
        let now = ContinuousClock.now
        return failures.withLock { failures in
            for key in keys {
                let recent = (failures[key] ?? []).filter { now - $0 < options.signInWindow }
                failures[key] = recent
                if recent.count >= options.signInAttempts, let first = recent.first {
                    let left = options.signInWindow - (now - first)
                    return max(1, Int((left.components.seconds + 59) / 60))
                }
            }
            return nil
        }
    }

    func failed(_ keys: [String]) {
        failures.withLock { failures in
            if failures.count > 10_000 { failures.removeAll() }  // bounded: an attacker cycling names
            for key in keys { failures[key, default: []].append(.now) }
        }
    }

    func audit(_ session: OperatorSession, _ origin: String, _ action: String, target: String?, detail: String?, error: (any Error)?) {
        do {
            try registry.recordAudit(
                AuditRecord(
                    actor: session.account.name, via: .web, origin: origin, action: action, target: target, detail: detail,
                    outcome: error == nil ? .ok : .failed, error: error.map { ($0 as? FleetError)?.problem ?? "\($0)" }))
        } catch {
            logger.error("the audit trail did not take '\(action)' by \(session.account.name): \(error)")
        }
    }

    /// The browser's address; behind a proxy on this host (a loopback peer), the address the
    /// proxy names in `X-Forwarded-For`.
    func remote(_ request: Request, _ context: ConsoleContext) -> String {
        let peer = context.remoteAddress?.ipAddress ?? "?"
        if peer == "127.0.0.1" || peer == "::1",
            let forwarded = request.headers[HTTPField.Name("X-Forwarded-For")!]?.split(separator: ",").last
        {
            return forwarded.trimmingCharacters(in: .whitespaces)
        }
        return peer
    }

    // MARK: Pages and the live stream

    func fleetPage(_ request: Request, _ session: OperatorSession) throws -> String {
        let parameters = request.uri.queryParameters
        var query = ConsolePages.FleetQuery()
        query.search = String((parameters.get("q") ?? "").prefix(64)).lowercased()
        query.state = parameters.get("state").flatMap { ["online", "offline", "unknown", "revoked"].contains($0) ? $0 : nil } ?? ""
        query.page = max(1, parameters.get("page").flatMap(Int.init) ?? 1)
        var units = UnitQuery(search: query.search, state: query.state.isEmpty ? nil : query.state)
        let total = try registry.unitCount(matching: units)
        units.limit = ConsolePages.FleetQuery.pageSize
        units.offset = (query.page - 1) * ConsolePages.FleetQuery.pageSize
        let page = try registry.overviews(now: Registry.now(), matching: units)
        return ConsolePages.fleet(page, total: total, query: query, counts: try stateCounts(), session: session)
    }

    /// Units per state, read at most once per live period whoever asks (every watching
    /// browser asks each period).
    func stateCounts() throws -> [String: Int] {
        let now = ContinuousClock.now
        if let cached = counts.withLock({ $0 }), now - cached.at < options.livePeriod / 2 { return cached.counts }
        let fresh = try registry.unitStateCounts()
        counts.withLock { $0 = (fresh, now) }
        return fresh
    }

    /// Server-sent events: each listed unit's cells when they change, and the fleet's counts.
    func events(_ request: Request) throws -> Response {
        guard try session(request) != nil else { return text(.unauthorized, "sign in first\n") }
        let ids = Array(Set((request.uri.queryParameters.get("ids") ?? "").split(separator: ",").prefix(ConsolePages.FleetQuery.pageSize).map(String.init)))
        let registry = self.registry
        let period = options.livePeriod
        let server = self
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                var last: [String: [String]] = [:]
                var lastCounts: [String: Int] = [:]
                let started = ContinuousClock.now
                // The browser reconnects after 10 minutes, checking its session again.
                var seen: UInt64?
                var lastRead = started
                var lastWrite = started
                while ContinuousClock.now - started < .seconds(600) {
                    // Re-read when this process changed the registry (a batch of what units
                    // said, a timeout, a configuration), and every 5 s for what time alone changes.
                    let generation = registry.changeCount
                    guard generation != seen || ContinuousClock.now - lastRead >= .seconds(5) else {
                        if ContinuousClock.now - lastWrite >= .seconds(15) {
                            try await writer.write(ByteBuffer(string: ": still here\n\n"))
                            lastWrite = .now
                        }
                        try await Task.sleep(for: period)
                        continue
                    }
                    seen = generation
                    lastRead = .now
                    // The listed units only (at most a page), and the counts every stream shares.
                    let units = try registry.overviews(now: Registry.now(), matching: UnitQuery(ids: ids))
                    let counts = try server.stateCounts()
                    var out = ""
                    for unit in units {
                        let cells = ConsolePages.unitCells(unit)
                        let texts = cells.map(\.text)
                        if last[unit.machineId] != texts {
                            last[unit.machineId] = texts
                            let object = ["id": unit.machineId, "cells": Dictionary(uniqueKeysWithValues: cells.map { ($0.field, $0.text) })] as [String: Any]
                            let json = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                            out += "event: unit\ndata: \(String(decoding: json, as: UTF8.self))\n\n"
                        }
                    }
                    if counts != lastCounts {
                        lastCounts = counts
                        let json = try JSONSerialization.data(withJSONObject: counts, options: [.sortedKeys])
                        out += "event: counts\ndata: \(String(decoding: json, as: UTF8.self))\n\n"
                    }
                    if !out.isEmpty || ContinuousClock.now - lastWrite >= .seconds(15) {
                        try await writer.write(ByteBuffer(string: out.isEmpty ? ": still here\n\n" : out))
                        lastWrite = .now
                    }
                    try await Task.sleep(for: period)
                }
                try await writer.finish(nil)
            })
    }

    // MARK: Metrics

    func scrape(_ request: Request) throws -> Response {
        guard let token = options.metricsToken else {
            return text(.notFound, "/metrics is off: give serve --metrics-token-file FILE\n")
        }
        let given = request.headers[.authorization] ?? ""
        guard given.hasPrefix("Bearer "), HMAC.equal(String(given.dropFirst("Bearer ".count)), token) else {
            var response = text(.unauthorized, "send Authorization: Bearer TOKEN (the token in serve's --metrics-token-file)\n")
            response.headers[.wwwAuthenticate] = "Bearer realm=\"pulsebridge\""
            return response
        }
        do {
            let body = try metrics.scrape(registry)
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
        } catch {
            logger.error("cannot read the registry for /metrics: \(error)")
            return text(.serviceUnavailable, "cannot read the registry: \(error)\n")
        }
    }

    // MARK: Responses

    func text(_ status: HTTPResponse.Status, _ message: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: message)))
    }

    func html(_ status: HTTPResponse.Status, _ page: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: page)))
    }

    func redirect(_ location: String) -> Response {
        var headers = HTTPFields()
        headers[.location] = location
        return Response(status: .seeOther, headers: headers)
    }

    static func origin(of url: String) -> String {
        guard let parsed = URL(string: url), let scheme = parsed.scheme, let host = parsed.host else { return url }
        return parsed.port.map { "\(scheme)://\(host):\($0)" } ?? "\(scheme)://\(host)"
    }

    /// An `application/x-www-form-urlencoded` body: at most 8 KiB, each field once, at most 16.
    /// One that does not read as such is empty, so it fails its CSRF check (403).
    static func form(_ request: Request) async throws -> [String: String] {
        var request = request
        let body = try await request.collectBody(upTo: 8192)
        return URLEncodedForm.parse(String(buffer: body), maxFields: 16) ?? [:]
    }

    /// The server as a `Service` for serve's service group; `onRunning` gets the bound port.
    public func application(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        Application(
            router: router(),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "pulsebridge-fleet"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? options.port
                boundPort.withLock { $0 = port }
                logger.notice("serve's HTTP listening", metadata: ["address": "\(channel.localAddress?.description ?? "?")"])
                await onRunning(port)
            },
            logger: logger)
    }
}

/// A request's context: the peer's address for the audit trail and the sign-in limit.
public struct ConsoleContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}


// MARK: Payments ledger and revenue

extension ConsoleServer {
    static func parameters(_ request: Request) -> [String: String] {
        var out: [String: String] = [:]
        for (name, value) in request.uri.queryParameters where out[String(name)] == nil { out[String(name)] = String(value) }
        return out
    }

    func paymentsPage(_ request: Request, _ session: OperatorSession) throws -> String {
        let query = ConsolePages.LedgerQuery(Self.parameters(request))
        guard query.problems.isEmpty else { return ConsolePages.payments([], totals: [], count: 0, query: query, session: session) }
        let count = try registry.paymentCount(matching: query.filter)
        let records = try registry.payments(
            matching: query.filter, limit: ConsolePages.LedgerQuery.pageSize, offset: (query.page - 1) * ConsolePages.LedgerQuery.pageSize)
        return ConsolePages.payments(records, totals: try registry.ledgerTotals(matching: query.filter), count: count, query: query, session: session)
    }

    /// The ledger as CSV, streamed in batches: the same lines as `payments list --format csv`.
    func exportLedger(_ request: Request) throws -> Response {
        guard try session(request) != nil else { return text(.unauthorized, "sign in first\n") }
        let query = ConsolePages.LedgerQuery(Self.parameters(request))
        guard query.problems.isEmpty else { return text(.badRequest, query.problems.joined(separator: "\n") + "\n") }
        let registry = self.registry
        let filter = query.filter
        var headers = HTTPFields()
        headers[.contentType] = "text/csv; charset=utf-8; header=present"
        let stamp = FleetReports.isoTime(Registry.now()).prefix(10)
        headers[.contentDisposition] = "attachment; filename=\"pulsebridge-payments-\(stamp).csv\""
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                try await writer.write(ByteBuffer(string: CSVRows.line(FleetReports.ledgerHeader)))
                try await registry.forEachPayment(matching: filter) { batch in
                    try await writer.write(ByteBuffer(string: batch.map(FleetReports.ledgerLine).joined()))
                }
                try await writer.finish(nil)
            })
    }

    func revenuePage(_ request: Request, _ session: OperatorSession) throws -> String {
        var parameters = Self.parameters(request)
        // The last 30 days unless a period is asked for.
        let today = Registry.now() / 86_400_000 * 86_400_000
        if (parameters["from"] ?? "").isEmpty && (parameters["to"] ?? "").isEmpty {
            parameters["from"] = String(FleetReports.isoTime(today - 29 * 86_400_000).prefix(10))
            parameters["to"] = String(FleetReports.isoTime(today).prefix(10))
        }
        let query = ConsolePages.LedgerQuery(parameters)
        guard query.problems.isEmpty else { return ConsolePages.revenue([], totals: [], days: [], query: query, session: session) }
        // Every day of the period on the axis (up to a year); longer periods show the days with payments.
        var days: [String] = []
        if let from = query.filter.from, let to = query.filter.to, (to - from) / 86_400_000 <= 366 {
            days = stride(from: from, to: to, by: 86_400_000).map { String(FleetReports.isoTime($0).prefix(10)) }
        }
        var totalsFilter = query.filter
        totalsFilter.status = nil
        return ConsolePages.revenue(
            try registry.machineDays(matching: query.filter), totals: try registry.ledgerTotals(matching: totalsFilter), days: days, query: query,
            session: session)
    }

    /// Capture or void a held or unknown payment: the library call `payments settle` makes.
    func settle(_ form: [String: String], _ session: OperatorSession, _ origin: String) throws -> Response {
        let action = form["action"] ?? ""
        let back = (form["back"] ?? "").hasPrefix("/payments") ? form["back"]! : "/payments"
        guard let settlement = Settlement(rawValue: action), settlement != .hold,
            let machine = form["machine"].flatMap(MachineID.init(rawValue:)), let payment = form["payment"].flatMap(PaymentID.init(rawValue:))
        else {
            return html(.badRequest, ConsolePages.message("Not settled", "The form needs a machine, a payment and capture or void.", session: session))
        }
        let detail = "\(machine) \(action) by \(session.account.name)"
        guard try registry.settleByOperator(machine: machine, payment: payment, settlement: settlement, operator: session.account.name, now: Registry.now())
        else {
            let error = FleetError("\(payment) on \(machine) is not held or unknown")
            audit(session, origin, "payments settle", target: payment.rawValue, detail: detail, error: error)
            return html(
                .conflict,
                ConsolePages.message("Not settled", "\(payment) on \(machine) is not held or unknown (someone may have settled it already).", session: session))
        }
        audit(session, origin, "payments settle", target: payment.rawValue, detail: detail, error: nil)
        return redirect(back)
    }
}

// MARK: A machine's page

extension ConsoleServer {
    /// The unit, its presence timeline and heartbeats over `days` (default 2, at most
    /// `Registry.historyDays`), its configurations with what each changed, its firmware steps,
    /// its last payments and its payment code.
    func machinePage(_ id: String, _ request: Request, _ session: OperatorSession) throws -> String {
        guard let machine = MachineID(rawValue: id), let unit = try registry.overviews(now: Registry.now(), only: machine).first else {
            return ConsolePages.message("No such unit", "There is no unit '\(id)' in the registry.", session: session)
        }
        let days = min(Registry.historyDays, max(1, Self.parameters(request)["days"].flatMap(Int.init) ?? 2))
        let now = Registry.now()
        let history = try registry.history(of: machine, since: now - days * 86_400_000)
        let payments = try registry.payments(matching: PaymentFilter(machineId: machine.rawValue), limit: 20, offset: max(0, try registry.paymentCount(matching: PaymentFilter(machineId: machine.rawValue)) - 20))
        let totals = try registry.ledgerTotals(matching: PaymentFilter(machineId: machine.rawValue))
        let code = try options.paymentUrlTemplate.map { try PaymentCode(machine: machine, template: $0) }
        let parameters = Self.parameters(request)
        var notice: String?
        if let version = parameters["published"].flatMap(Int.init) {
            notice = "Configuration v\(version) published. The unit applies it when it next hears from the broker; \"applied\" shows here then."
        } else if parameters["revoked"] == "1" {
            notice = "Revoked: its broker identity is deleted; the unit can no longer connect."
        }
        return ConsolePages.machine(
            unit, history: history, payments: payments.reversed(), totals: totals, code: code, days: days, now: now, notice: notice,
            canAct: home != nil, session: session)
    }

    /// The payment code to print, as an SVG download.
    func paymentCode(_ id: String, _ request: Request) throws -> Response {
        guard try session(request) != nil else { return text(.unauthorized, "sign in first\n") }
        guard let template = options.paymentUrlTemplate else { return text(.notFound, "serve has no payment URL template\n") }
        guard let machine = MachineID(rawValue: id), try registry.machine(machine) != nil else { return text(.notFound, "no unit '\(id)'\n") }
        var headers = HTTPFields()
        headers[.contentType] = "image/svg+xml"
        headers[.contentDisposition] = "attachment; filename=\"payment-code-\(machine.rawValue).svg\""
        let svg = try PaymentCode(machine: machine, template: template).svg(caption: machine.rawValue)
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: svg)))
    }
}
