/// The kinds of topic under `{root}/{machineId}/`.
public enum TopicKind: String, Sendable, Hashable, CaseIterable {
    case paymentCompleted = "payment/completed"
    case paymentResult = "payment/result"
    case status = "status"
    case heartbeat = "heartbeat"
    case configDesired = "config/desired"
    case configReported = "config/reported"
    case firmwareDesired = "firmware/desired"
    case firmwareReported = "firmware/reported"

    /// QoS the page assigns.
    public var qos: Int { self == .heartbeat ? 0 : 1 }
    /// Whether messages on it are retained.
    public var retained: Bool {
        switch self {
        case .status, .configDesired, .configReported, .firmwareDesired, .firmwareReported: true
        case .paymentCompleted, .paymentResult, .heartbeat: false
        }
    }
}

/// Builds and parses PulseBridge topics under a configurable root (default `fleet`).
public struct TopicScheme: Sendable, Hashable {
    public let root: String

    /// A root of one or more non-empty levels without wildcards, e.g. `fleet` or `acme/fleet`.
    public init(root: String = "fleet") throws(ProtocolError) {
        // Letters, digits, '-' and '_' per level: a root that works on mosquitto and on a NATS
        // cluster alike (there '/' becomes '.', a '.' or a space closes the connection, and
        // '*' and '>' are wildcards).
        let levels = root.split(separator: "/", omittingEmptySubsequences: false)
        let allowed = { (c: Unicode.Scalar) in
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || (c >= "0" && c <= "9") || c == "-" || c == "_"
        }
        guard !root.isEmpty, root.utf8.count <= 128, levels.allSatisfy({ !$0.isEmpty && $0.unicodeScalars.allSatisfy(allowed) }) else {
            throw .malformed(
                field: "root", problem: "'\(root)' is not a topic root: each level must be non-empty letters, digits, '-' or '_'")
        }
        self.root = root
    }

    /// The default scheme, root `fleet`.
    public static let `default` = try! TopicScheme(root: "fleet")

    /// `{root}/{machine}/{kind}`. A `MachineID` cannot hold `/`, `+` or `#`.
    public func topic(_ kind: TopicKind, for machine: MachineID) -> String {
        "\(root)/\(machine.rawValue)/\(kind.rawValue)"
    }

    /// `{root}/+/{kind}`: the kind for every machine.
    public func filter(_ kind: TopicKind) -> String { "\(root)/+/\(kind.rawValue)" }

    /// The machine and kind of a topic under this root, or nil for anything else.
    public func parse(_ topic: String) -> (machine: MachineID, kind: TopicKind)? {
        guard topic.hasPrefix(root + "/") else { return nil }
        let rest = topic.dropFirst(root.count + 1)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        guard let machine = MachineID(rawValue: String(rest[..<slash])),
            let kind = TopicKind(rawValue: String(rest[rest.index(after: slash)...]))
        else { return nil }
        return (machine, kind)
    }
}
