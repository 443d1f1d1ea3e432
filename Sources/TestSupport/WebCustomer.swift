import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// A customer's phone, reduced to HTTP: opens a machine's payment page, chooses an amount,
/// pays with a test card at the simulated provider's checkout and watches the receipt page,
/// following the same redirects a browser does (the browser test does it in Chromium).
public struct WebCustomer: Sendable {
    public let base: String
    public private(set) var cookie: String?

    /// One session per customer (a phone keeps its connections): cookies are handled here.
    private var session: URLSession { connection.session }
    private let connection: Connection

    /// Owns the session and invalidates it when the last copy of the customer goes.
    private final class Connection: Sendable {
        let session: URLSession
        init(_ session: URLSession) { self.session = session }
        deinit { session.finishTasksAndInvalidate() }
    }

    public init(base: String) {
        self.base = base
        let configuration = URLSessionConfiguration.ephemeral
        configuration.httpShouldSetCookies = false
        configuration.httpCookieAcceptPolicy = .never
        connection = Connection(URLSession(configuration: configuration, delegate: NoRedirects(), delegateQueue: nil))
    }

    public struct Page: Sendable {
        public var status: Int
        public var location: String?
        public var body: String
    }

    public mutating func request(_ method: String, _ url: String, form: [String: String]? = nil, timeout: Duration = .seconds(60)) async throws -> Page {
        var request = URLRequest(url: URL(string: url.hasPrefix("http") ? url : base + url)!)
        request.timeoutInterval = Double(timeout.components.seconds)
        request.httpMethod = method
        if let cookie { request.setValue(cookie, forHTTPHeaderField: "Cookie") }
        if let form {
            request.setValue("application/x-www-form-urlencoded", forHTTPHeaderField: "Content-Type")
            let body = form.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }.joined(separator: "&")
            request.httpBody = Data(body.utf8)
        }
        let (data, response) = try await session.data(for: request)
        let http = response as! HTTPURLResponse
        if let set = http.value(forHTTPHeaderField: "Set-Cookie") { cookie = String(set.prefix { $0 != ";" }) }
        return Page(status: http.statusCode, location: http.value(forHTTPHeaderField: "Location"), body: String(decoding: data, as: UTF8.self))
    }

    public static func field(_ name: String, in html: String) -> String? {
        guard let range = html.range(of: "name=\"\(name)\" value=\"") else { return nil }
        return String(html[range.upperBound...].prefix { $0 != "\"" })
    }

    public static func attribute(_ name: String, in html: String) -> String? {
        guard let range = html.range(of: "\(name)=\"") else { return nil }
        return String(html[range.upperBound...].prefix { $0 != "\"" })
    }

    /// Pays `amount` at `machine` with `card`; returns the receipt page's final state and text.
    public mutating func pay(machine: String, amount: Int, card: String, timeout: Duration = .seconds(60)) async throws -> (state: String, text: String) {
        let page = try await request("GET", "/m/\(machine)")
        guard let csrf = Self.field("csrf", in: page.body), let key = Self.field("key", in: page.body) else {
            throw WebCustomerError("the payment page of \(machine) has no form (status \(page.status))")
        }
        let posted = try await request("POST", "/m/\(machine)/pay", form: ["csrf": csrf, "key": key, "amount": "\(amount)"])
        guard posted.status == 303, let checkout = posted.location else { throw WebCustomerError("pay refused: \(posted.status)") }
        let provider = try await request("GET", checkout)
        guard let back = Self.field("return", in: provider.body), let providerCSRF = Self.field("csrf", in: provider.body),
            let action = Self.attribute("action", in: provider.body.components(separatedBy: "<form")[1])
        else { throw WebCustomerError("the provider's checkout has no form") }
        let approved = try await request("POST", action, form: ["csrf": providerCSRF, "return": back, "card": card])
        guard let returnURL = approved.location else { throw WebCustomerError("the provider did not send the customer back") }
        let returned = try await request("GET", returnURL)
        guard let receipt = returned.location else { throw WebCustomerError("no receipt page") }
        // The page's event stream ends with the final state: read it whole, as EventSource
        // would read it event by event.
        let events = try await request("GET", receipt + "/events", timeout: timeout)
        guard let last = events.body.split(separator: "\n").last(where: { $0.hasPrefix("data: ") }),
            let object = try JSONSerialization.jsonObject(with: Data(last.dropFirst(6).utf8)) as? [String: Any],
            let state = object["state"] as? String, let text = object["text"] as? String
        else { throw WebCustomerError("the receipt's event stream said nothing (\(events.status)): \(events.body.prefix(300))") }
        return (state, text)
    }
}

public struct WebCustomerError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// A URLSession delegate that does not follow redirects: tests look at them.
public final class NoRedirects: NSObject, URLSessionTaskDelegate, Sendable {
    public override init() {}

    public func urlSession(
        _ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse, newRequest request: URLRequest,
        completionHandler: @escaping (URLRequest?) -> Void
    ) {
        completionHandler(nil)
    }
}
