import FleetManager
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import MessageSchema

/// `serve --http HOST:PORT`: the fleet's HTTP side. Today `/metrics` (OpenMetrics for
/// Prometheus, with a bearer token); the operator console grows here (issue #16). Nothing
/// answers without credentials: an unknown path is 404, a known one without them 401.
public struct ConsoleServer: Sendable {
    public struct Options: Sendable {
        public var host = "127.0.0.1"
        public var port = 8090
        /// The token a scraper sends (`Authorization: Bearer TOKEN`); `/metrics` is off without one.
        public var metricsToken: String?
        public init() {}
    }

    let home: FleetHome
    let metrics: FleetMetrics
    let options: Options
    let logger: Logger

    public init(home: FleetHome, metrics: FleetMetrics, options: Options, logger: Logger = Logger(label: "pulsebridge.http")) {
        self.home = home
        self.metrics = metrics
        self.options = options
        self.logger = logger
    }

    /// The paths this server answers, for the test that checks every one refuses a request
    /// without credentials.
    public static let routes = ["/metrics"]

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.get("/metrics") { request, _ in try scrape(request) }
        return router
    }

    func scrape(_ request: Request) throws -> Response {
        guard let token = options.metricsToken else {
            return Self.text(.notFound, "/metrics is off: give serve --metrics-token-file FILE\n")
        }
        let given = request.headers[.authorization] ?? ""
        guard given.hasPrefix("Bearer "), HMAC.equal(String(given.dropFirst("Bearer ".count)), token) else {
            var response = Self.text(.unauthorized, "send Authorization: Bearer TOKEN (the token in serve's --metrics-token-file)\n")
            response.headers[.wwwAuthenticate] = "Bearer realm=\"pulsebridge\""
            return response
        }
        do {
            let body = try metrics.scrape(home.registry)
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
        } catch {
            logger.error("cannot read the registry for /metrics: \(error)")
            return Self.text(.serviceUnavailable, "cannot read the registry: \(error)\n")
        }
    }

    static func text(_ status: HTTPResponse.Status, _ message: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/plain; charset=utf-8"
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(string: message)))
    }

    /// The server as a `Service` for serve's service group; `onRunning` gets the bound port.
    public func application(onRunning: @escaping @Sendable (Int) async -> Void = { _ in }) -> some ApplicationProtocol {
        Application(
            router: router(),
            configuration: .init(address: .hostname(options.host, port: options.port), serverName: "pulsebridge-fleet"),
            onServerRunning: { channel in
                let port = channel.localAddress?.port ?? options.port
                logger.notice("serve's HTTP listening", metadata: ["address": "\(channel.localAddress?.description ?? "?")"])
                await onRunning(port)
            },
            logger: logger)
    }
}
