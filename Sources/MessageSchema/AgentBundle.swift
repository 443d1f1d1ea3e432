import Foundation

/// Why a device bundle cannot be used. Each says what to do.
public struct BundleError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var problem: String
    public var description: String { "bundle \(path): \(problem)" }
}

/// Everything a unit needs to join its fleet, written by `fleet-manager provision` as one
/// JSON file (mode 0600): see docs/bundle.md.
public struct AgentBundle: Codable, Sendable, Hashable {
    /// Bundle format version, 1.
    public var v: Int
    public var machineId: MachineID
    /// `mqtt://host:port` or `mqtts://host:port` (TLS).
    public var brokerUrl: String
    /// A clustered broker's other nodes, same scheme: tried in turn when the one in use cannot
    /// be reached or is lost.
    public var alternateBrokerUrls: [String]?
    /// PEM of the CA that signed the broker's certificate, for `mqtts://`.
    public var caCertificate: String?
    public var username: String?
    public var password: String?
    /// Topic root, `fleet` unless the fleet says otherwise.
    public var topicRoot: String
    /// The keys the unit trusts until a configuration rotates them.
    public var trust: [TrustEntry]
    /// A signed `config` envelope (JSON text) applied at first start, or nil.
    public var initialConfig: String?

    public init(
        machineId: MachineID, brokerUrl: String, caCertificate: String? = nil, username: String? = nil,
        password: String? = nil, topicRoot: String = "fleet", trust: [TrustEntry], initialConfig: String? = nil
    ) {
        self.v = 1
        self.machineId = machineId
        self.brokerUrl = brokerUrl
        self.caCertificate = caCertificate
        self.username = username
        self.password = password
        self.topicRoot = topicRoot
        self.trust = trust
        self.initialConfig = initialConfig
    }

    /// The broker endpoint named by `brokerUrl`.
    public struct Endpoint: Sendable, Hashable {
        public var host: String
        public var port: Int
        public var tls: Bool
    }

    public func endpoint() throws(BundleError) -> Endpoint {
        try Self.endpoint(brokerUrl, field: "brokerUrl")
    }

    /// The alternate nodes' endpoints (`alternateBrokerUrls`), each with the scheme of `brokerUrl`.
    public func alternateEndpoints() throws(BundleError) -> [Endpoint] {
        try Self.alternateEndpoints(alternateBrokerUrls ?? [], field: "alternateBrokerUrls", of: endpoint(), primaryField: "brokerUrl")
    }

    /// Alternate nodes' endpoints, each with the scheme of `primary`; `field` and `primaryField`
    /// name where the URLs came from in the error (a bundle's fields, or `init`'s options).
    public static func alternateEndpoints(
        _ urls: [String], field: String, of primary: Endpoint, primaryField: String
    ) throws(BundleError) -> [Endpoint] {
        var endpoints: [Endpoint] = []
        for url in urls {
            let endpoint = try endpoint(url, field: field)
            guard endpoint.tls == primary.tls else {
                throw BundleError(path: "", problem: "\(field) '\(url)' does not use the scheme of \(primaryField)")
            }
            endpoints.append(endpoint)
        }
        return endpoints
    }

    /// The endpoint a broker URL names; `field` names where it came from in the error.
    public static func endpoint(_ brokerUrl: String, field: String) throws(BundleError) -> Endpoint {
        guard let url = URLComponents(string: brokerUrl), let scheme = url.scheme, let host = url.host, !host.isEmpty else {
            throw BundleError(path: "", problem: "\(field) '\(brokerUrl)' is not mqtt://host:port or mqtts://host:port")
        }
        switch scheme {
        case "mqtt": return Endpoint(host: host, port: url.port ?? 1883, tls: false)
        case "mqtts": return Endpoint(host: host, port: url.port ?? 8883, tls: true)
        default: throw BundleError(path: "", problem: "\(field) scheme '\(scheme)' is not mqtt or mqtts")
        }
    }

    /// Reads and checks a bundle file. Every failure is one clear line.
    public static func load(from path: String) throws(BundleError) -> AgentBundle {
        guard FileManager.default.fileExists(atPath: path) else {
            throw BundleError(path: path, problem: "no such file; pass the file `fleet-manager provision` wrote with --bundle")
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            throw BundleError(path: path, problem: "cannot be read (check its permissions: the agent's user must read it)")
        }
        let bundle: AgentBundle
        do {
            bundle = try JSONDecoder().decode(AgentBundle.self, from: data)
        } catch let error as DecodingError {
            throw BundleError(path: path, problem: describe(error))
        } catch {
            throw BundleError(path: path, problem: "\(error)")
        }
        guard bundle.v == 1 else {
            throw BundleError(path: path, problem: "format version \(bundle.v) is not supported (this agent reads version 1)")
        }
        do {
            _ = try bundle.endpoint()
            _ = try bundle.alternateEndpoints()
        } catch {
            throw BundleError(path: path, problem: error.problem)
        }
        if (try? bundle.endpoint().tls) == true && bundle.caCertificate == nil {
            throw BundleError(path: path, problem: "brokerUrl uses mqtts:// but caCertificate is missing")
        }
        do {
            _ = try TopicScheme(root: bundle.topicRoot)
        } catch {
            throw BundleError(path: path, problem: "topicRoot: \(error)")
        }
        guard bundle.trust.contains(where: { $0.purpose == .fleet }) else {
            throw BundleError(path: path, problem: "trust has no fleet key: the unit could never accept a configuration")
        }
        return bundle
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context, _ extra: (any CodingKey)? = nil) -> String {
            let keys = context.codingPath + (extra.map { [$0] } ?? [])
            return keys.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
        }
        switch error {
        case .dataCorrupted(let context) where context.codingPath.isEmpty:
            return "not valid JSON"
        case .dataCorrupted(let context):
            return "field '\(path(context))': \(context.debugDescription)"
        case .keyNotFound(let key, let context):
            return "field '\(path(context, key))' is missing"
        case .typeMismatch(let type, let context):
            return "field '\(path(context))' has the wrong type (expected \(type))"
        case .valueNotFound(_, let context):
            return "field '\(path(context))' is null"
        @unknown default:
            return "\(error)"
        }
    }
}
