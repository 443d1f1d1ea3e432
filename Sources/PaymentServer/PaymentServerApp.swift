import Foundation
import HTTPTypes
import Hummingbird
import WebSupport
import Logging
import MessageSchema
import PaymentSDK

/// The customer's side of PulseBridge: the page behind a machine's payment code, the
/// checkout, live progress, receipts and the customer's profile.
public struct PaymentServerApp: Sendable {
    public let configuration: ServerConfiguration
    let store: PaymentStore
    let checkout: Checkout
    let simulated: SimulatedProvider?
    let csrfKey: [UInt8]
    let logger: Logger

    /// Largest request body any form here needs.
    static let maxBody = 8 * 1024
    static let userCookie = "pb_uid"

    /// Opens the store, connects to the broker as the payment server, and recovers payments a
    /// previous run left in flight.
    public static func start(_ configuration: ServerConfiguration, logger: Logger) async throws -> PaymentServerApp {
        let store: PaymentStore
        do {
            store = try PaymentStore(path: configuration.database)
        } catch {
            throw PaymentSDKError("cannot open the database \(configuration.database): \(error)", hint: "check that its folder exists and is writable")
        }
        guard let credentials = FileManager.default.contents(atPath: configuration.brokerCredentials),
            let identity = try? JSONDecoder().decode(BrokerIdentity.self, from: credentials)
        else {
            throw PaymentSDKError(
                "cannot read broker credentials from \(configuration.brokerCredentials)",
                hint: "make them with `fleet-manager payment-servers add NAME` and point brokerCredentials at the file it writes")
        }
        guard let pem = try? String(contentsOfFile: configuration.signingKey.file, encoding: .utf8) else {
            throw PaymentSDKError("cannot read the signing key \(configuration.signingKey.file)", hint: "use the fleet's payment key (fleet-manager keys list)")
        }
        let key = try Ed25519PrivateKey(pem: pem)
        let topics = try TopicScheme(root: configuration.topicRoot)
        let client = try await PaymentClient.connect(
            identity, topics: topics, kid: KeyID(unchecked: configuration.signingKey.kid), key: key, logger: logger)
        let simulated = SimulatedProvider(
            store: store, publicUrl: configuration.publicUrl, webhookSecret: configuration.provider.webhookSecret, logger: logger)
        let checkout = Checkout(configuration: configuration, store: store, provider: simulated, client: client, logger: logger)
        await checkout.recover()
        return PaymentServerApp(
            configuration: configuration, store: store, checkout: checkout, simulated: simulated, csrfKey: try store.secret("csrf"),
            logger: logger)
    }

    /// `payment-server settle`: an operator's decision on a held or unknown payment, or a refund.
    public static func settle(_ configuration: ServerConfiguration, paymentId: String, action: String, logger: Logger) async throws -> PaymentRecord {
        guard let action = Checkout.OperatorAction(rawValue: action) else {
            throw PaymentSDKError("--action must be capture, void or refund, not '\(action)'")
        }
        let store = try PaymentStore(path: configuration.database)
        let provider = SimulatedProvider(
            store: store, publicUrl: configuration.publicUrl, webhookSecret: configuration.provider.webhookSecret, logger: logger)
        return try await Checkout.settle(paymentId, action: action, store: store, provider: provider)
    }

    public func close() async {
        await checkout.drain()
        await checkout.client.close()
    }

    /// Serves until SIGTERM or SIGINT; settlements under way finish before the client closes.
    public func run() async throws {
        let application = Application(
            router: router(),
            configuration: .init(address: .hostname(configuration.listen.host, port: configuration.listen.port), serverName: "pulsebridge-pay"),
            onServerRunning: { channel in
                logger.notice("payment server listening", metadata: ["address": "\(channel.localAddress?.description ?? "?")", "url": "\(configuration.publicUrl)"])
            },
            logger: logger)
        try await application.runService()
        await close()
    }

    // MARK: Routes

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: PageErrorMiddleware(logger: logger))
        router.add(
            middleware: SecurityHeaders(
                contentSecurityPolicy:
                    "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
                noStore: false))
        router.get("/healthz") { _, _ in "ok\n" }
        router.get("/") { _, _ in
            html(Pages.error(title: "PulseBridge pay", message: "Scan the payment code on a machine to pay it."))
        }
        router.get("/static/pay.js") { _, _ in
            var headers = HTTPFields()
            headers[.contentType] = "text/javascript; charset=utf-8"
            headers[.cacheControl] = "public, max-age=3600"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(string: Pages.script)))
        }
        router.get("/m/:machine") { request, context in try await machinePage(request, context) }
        router.post("/m/:machine/pay") { request, context in try await pay(request, context) }
        router.get("/p/:payment") { request, context in try await paymentPage(request, context) }
        router.get("/p/:payment/return") { request, context in try await customerReturned(request, context) }
        router.get("/p/:payment/events") { request, context in try await events(request, context) }
        router.get("/me") { request, _ in try await mePage(request, saved: request.uri.queryParameters.get("saved") == "1") }
        router.post("/me/profile") { request, _ in try await saveProfile(request) }
        router.post("/me/delete") { request, _ in try await deleteProfile(request) }
        router.post("/webhooks/:provider") { request, context in try await webhook(request, context) }
        router.get("/simulated-provider/checkout/:ref") { request, context in try await simulatedCheckoutPage(request, context) }
        router.post("/simulated-provider/checkout/:ref") { request, context in try await simulatedCheckoutPay(request, context) }
        return router
    }

    // MARK: The customer

    /// The customer's first-party user ID (cookie), made on the first visit.
    struct Customer {
        var userId: String
        var isNew: Bool
    }

    static func isUserID(_ value: String) -> Bool {
        value.hasPrefix("u-") && value.utf8.count == 2 + 26 && value.utf8.dropFirst(2).allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x32 && $0 <= 0x37) }
    }

    func customer(_ request: Request) -> Customer {
        if let cookie = request.cookies[Self.userCookie]?.value, Self.isUserID(cookie) { return Customer(userId: cookie, isNew: false) }
        return Customer(userId: "u-" + RandomToken.make(bits: 130), isNew: true)
    }

    /// The customer on a form post: the cookie must be there (a form without it is stale or forged).
    func postingCustomer(_ request: Request) throws -> String {
        guard let cookie = request.cookies[Self.userCookie]?.value, Self.isUserID(cookie) else {
            throw CustomerRefusal(status: 403, title: "Session expired", message: "Your browser did not send its session. Reload the page and try again (cookies must be allowed).")
        }
        if let origin = request.headers[.origin], origin != "null", origin != configuration.origin {
            throw CustomerRefusal(status: 403, title: "Form from another site", message: "This form was not sent from this site. Open the machine's page and pay there.")
        }
        return cookie
    }

    func csrfToken(_ userId: String) -> String { HMAC.sha256Hex(key: csrfKey, message: Array("csrf:\(userId)".utf8)) }

    func checkCSRF(_ form: Form, userId: String) throws {
        guard let token = form["csrf"], HMAC.equal(token, csrfToken(userId)) else {
            throw CustomerRefusal(status: 403, title: "Form expired", message: "This form is out of date. Go back, reload the page and try again.")
        }
    }

    func withCookie(_ response: Response, _ customer: Customer) -> Response {
        guard customer.isNew else { return response }
        var response = response
        response.setCookie(
            Cookie(
                name: Self.userCookie, value: customer.userId, maxAge: 2 * 365 * 24 * 3600, path: "/",
                secure: configuration.publicUrl.hasPrefix("https:"), httpOnly: true, sameSite: .lax))
        return response
    }

    func machine(_ context: BasicRequestContext) throws -> ServerConfiguration.Machine {
        guard let id = context.parameters.get("machine"), let machine = configuration.machine(id) else {
            throw CustomerRefusal(status: 404, title: "Unknown machine", message: "There is no machine with this code here. Check that you scanned the code on the machine itself.")
        }
        return machine
    }

    /// A payment the requesting customer owns (anyone else's is not found).
    func ownedPayment(_ request: Request, _ context: BasicRequestContext) throws -> PaymentRecord {
        let customer = customer(request)
        guard let id = context.parameters.get("payment"), id.utf8.count <= 64, let payment = try store.payment(id), payment.userId == customer.userId
        else {
            throw CustomerRefusal(status: 404, title: "Payment not found", message: "There is no such payment for you here. Your payments are under My payments.")
        }
        return payment
    }

    // MARK: Pages

    func machinePage(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let machine = try machine(context)
        // A new visitor gets an ID in a cookie; the store records it only when they pay or keep
        // a profile (page views alone must not grow the database).
        let customer = customer(request)
        let availability = await checkout.availability(of: machine.machineId)
        let page = Pages.machine(
            machine, availability: availability, currency: configuration.currency, csrf: csrfToken(customer.userId), key: RandomToken.make(bits: 100))
        return withCookie(html(page), customer)
    }

    func pay(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let machine = try machine(context)
        let userId = try postingCustomer(request)
        let form = try await Form.read(request)
        try checkCSRF(form, userId: userId)
        guard let key = form["key"], key.utf8.count >= 16, key.utf8.count <= 64, key.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else {
            throw CustomerRefusal(status: 400, title: "Form incomplete", message: "The payment form is incomplete. Reload the machine's page and try again.")
        }
        let amountText = form["amount"] == "free" ? form["free"] : form["amount"]
        guard let text = amountText, text.utf8.count <= 9, let amount = Int(text), amount > 0 else {
            throw CustomerRefusal(status: 400, title: "No amount", message: "Choose an amount, or type one in the box, then press pay.", link: ("/m/\(machine.machineId)", "Back to the machine"))
        }
        try store.touchCustomer(userId)
        let location = try await checkout.start(machine: machine, amount: amount, userId: userId, idempotencyKey: key)
        return redirect(location)
    }

    func paymentPage(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let payment = try ownedPayment(request, context)
        return html(Pages.payment(payment, machineName: configuration.machine(payment.machineId)?.name ?? payment.machineId))
    }

    func customerReturned(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let payment = try ownedPayment(request, context)
        await checkout.reconcile(payment.paymentId)
        return redirect("/p/\(payment.paymentId)")
    }

    func events(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        let payment = try ownedPayment(request, context)
        let (stream, cancel) = checkout.updates.watch(payment.paymentId)
        let store = store
        let timer = Task {
            try? await Task.sleep(for: .seconds(300))
            cancel()  // the browser reconnects
        }
        @Sendable func event(_ p: PaymentRecord) -> ByteBuffer {
            let text = Pages.stateText(p).replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            return ByteBuffer(
                string: "data: {\"state\":\"\(p.state.rawValue)\",\"badge\":\"\(Pages.badge(p.state))\",\"final\":\(p.state.isFinal),\"text\":\"\(text)\"}\n\n")
        }
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                defer {
                    cancel()
                    timer.cancel()
                }
                // Watching began before this read: no change can fall between the two.
                let current = (try? store.payment(payment.paymentId)) ?? payment
                try await writer.write(event(current))
                if !current.state.isFinal {
                    for await changed in stream {
                        try await writer.write(event(changed))
                        if changed.state.isFinal { break }
                    }
                }
                try await writer.finish(nil)
            })
    }

    func mePage(_ request: Request, saved: Bool) async throws -> Response {
        let customer = customer(request)
        let names = Dictionary(configuration.machines.map { ($0.machineId, $0.name) }, uniquingKeysWith: { a, _ in a })
        let page = Pages.me(
            userId: customer.userId, customer: try store.customer(customer.userId), payments: try store.payments(user: customer.userId),
            machineNames: names, csrf: csrfToken(customer.userId), saved: saved)
        return withCookie(html(page), customer)
    }

    func saveProfile(_ request: Request) async throws -> Response {
        let userId = try postingCustomer(request)
        let form = try await Form.read(request)
        try checkCSRF(form, userId: userId)
        guard form["consent"] == "yes" else {
            throw CustomerRefusal(status: 400, title: "Consent needed", message: "Tick the box to agree that the operator keeps your profile, or leave the profile empty.", link: ("/me", "Back"))
        }
        func field(_ name: String, max: Int) throws -> String? {
            guard let value = form[name]?.trimmingCharacters(in: .whitespaces), !value.isEmpty else { return nil }
            guard value.count <= max, !value.unicodeScalars.contains(where: { $0.properties.generalCategory == .control }) else {
                throw CustomerRefusal(status: 400, title: "Profile not saved", message: "The \(name) is too long or has characters that cannot be kept.", link: ("/me", "Back"))
            }
            return value
        }
        let name = try field("name", max: 100), email = try field("email", max: 200), phone = try field("phone", max: 40)
        if let email, !email.contains("@") {
            throw CustomerRefusal(status: 400, title: "Profile not saved", message: "'\(email)' is not an e-mail address.", link: ("/me", "Back"))
        }
        try store.saveProfile(userId, name: name, email: email, phone: phone)
        return redirect("/me?saved=1")
    }

    func deleteProfile(_ request: Request) async throws -> Response {
        let userId = try postingCustomer(request)
        let form = try await Form.read(request)
        try checkCSRF(form, userId: userId)
        try store.deleteProfile(userId)
        return redirect("/me")
    }

    // MARK: The provider

    func webhook(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        guard context.parameters.get("provider") == checkout.provider.name else {
            throw CustomerRefusal(status: 404, title: "Unknown provider", message: "No such payment provider here.")
        }
        var request = request
        let body = try await request.collectBody(upTo: Self.maxBody)
        let ref: String
        do {
            ref = try checkout.provider.verifyWebhook(body: Array(buffer: body), signature: request.headers[HTTPField.Name("X-Simulated-Signature")!])
        } catch {
            throw CustomerRefusal(status: 401, title: "Webhook refused", message: "\(error)")
        }
        guard let payment = try store.payment(providerRef: ref) else {
            throw CustomerRefusal(status: 404, title: "Unknown payment", message: "No payment has the reference \(ref).")
        }
        await checkout.reconcile(payment.paymentId)
        return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ok\n")))
    }

    func simulatedReturn(_ text: String?) throws -> String {
        guard let text, text.hasPrefix(configuration.publicUrl + "/p/"), !text.contains("\n") else {
            throw CustomerRefusal(status: 400, title: "Bad return address", message: "The checkout's return address is not this payment server.")
        }
        return text
    }

    func simulatedCheckoutPage(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        guard let simulated, let ref = context.parameters.get("ref"), ref.utf8.count <= 64, let record = try simulated.record(ref) else {
            throw CustomerRefusal(status: 404, title: "Checkout not found", message: "This checkout does not exist.")
        }
        let customer = customer(request)
        let back = try simulatedReturn(request.uri.queryParameters.get("return").flatMap { $0.removingPercentEncoding })
        return withCookie(
            html(Pages.simulatedCheckout(ref: ref, amount: record.amount, currency: record.currency, returnURL: back, csrf: csrfToken(customer.userId))),
            customer)
    }

    func simulatedCheckoutPay(_ request: Request, _ context: BasicRequestContext) async throws -> Response {
        guard let simulated, let ref = context.parameters.get("ref"), ref.utf8.count <= 64, try simulated.record(ref) != nil else {
            throw CustomerRefusal(status: 404, title: "Checkout not found", message: "This checkout does not exist.")
        }
        let userId = try postingCustomer(request)
        let form = try await Form.read(request)
        try checkCSRF(form, userId: userId)
        guard let card = form["card"].flatMap(SimulatedProvider.TestCard.init(rawValue:)) else {
            throw CustomerRefusal(status: 400, title: "Unknown test card", message: "Pick one of the test cards.")
        }
        let back = try simulatedReturn(form["return"])
        _ = try simulated.pay(ref, card: card)  // a second press changes nothing
        return redirect(back)
    }
}

func html(_ page: String, status: HTTPResponse.Status = .ok) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "text/html; charset=utf-8"
    headers[.cacheControl] = "no-store"
    return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: page)))
}

func redirect(_ location: String) -> Response {
    var headers = HTTPFields()
    headers[.location] = location
    headers[.cacheControl] = "no-store"
    return Response(status: .seeOther, headers: headers)
}

/// An `application/x-www-form-urlencoded` body, read strictly: bounded, each field once.
struct Form {
    var fields: [String: String]
    subscript(_ name: String) -> String? { fields[name] }

    static func read(_ request: Request) async throws -> Form {
        guard request.headers[.contentType]?.lowercased().hasPrefix("application/x-www-form-urlencoded") == true else {
            throw CustomerRefusal(status: 415, title: "Not a form", message: "Send this as a form (application/x-www-form-urlencoded).")
        }
        var request = request
        let body = try await request.collectBody(upTo: PaymentServerApp.maxBody)
        return try parse(String(buffer: body))
    }

    static func parse(_ text: String) throws -> Form {
        guard let fields = URLEncodedForm.parse(text, maxFields: 20) else {
            throw CustomerRefusal(status: 400, title: "Malformed form", message: "The form could not be read. Reload the page and try again.")
        }
        return Form(fields: fields)
    }
}

/// Every failure becomes a page a person can read, with the right status; an unexpected one
/// is logged and shown without details. No stack trace reaches a browser.
struct PageErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let refusal as CustomerRefusal {
            var response = html(
                Pages.error(title: refusal.title, message: refusal.message, link: refusal.link),
                status: HTTPResponse.Status(code: refusal.status))
            if let retry = refusal.retryAfter { response.headers[.retryAfter] = "\(retry)" }
            return response
        } catch let error as any HTTPResponseError {
            let (title, message): (String, String) =
                switch error.status {
                case .notFound: ("Not found", "There is no page here. Scan the code on the machine to reach its page.")
                case .contentTooLarge: ("Too large", "That request is too large.")
                case .methodNotAllowed: ("Not allowed", "That is not how this page is used.")
                default: (error.status.reasonPhrase, "The request could not be handled.")
                }
            return html(Pages.error(title: title, message: message), status: error.status)
        } catch {
            logger.error("request failed: \(error)", metadata: ["path": "\(request.uri.path)"])
            return html(Pages.error(title: "Something went wrong", message: "Something went wrong on our side. You have not been charged for anything the machine did not credit; try again in a moment."), status: .internalServerError)
        }
    }
}

