import Foundation
import GRDB

/// One operator action in the audit trail: who did what to which target, when, from where,
/// and how it ended. The CLI writes one for every command that changes the fleet; the console
/// will write the same for its actions.
public struct AuditRecord: Sendable, Codable, Hashable {
    public enum Via: String, Sendable, Codable { case cli, web }
    public enum Outcome: String, Sendable, Codable { case ok, failed }

    public var id: Int = 0
    public var at: Int
    /// An operating-system user (the CLI; `sudo`'s caller when run through it) or an operator
    /// account (the console).
    public var actor: String
    public var via: Via
    /// The host, and the SSH client's address when there is one; a browser's address.
    public var origin: String
    /// `provision`, `revoke`, `config set`, `keys rotate`, …
    public var action: String
    /// A machine ID, key ID, firmware version, payment, … (or nil).
    public var target: String?
    /// The arguments that say what exactly (e.g. `maxAmount=3000`).
    public var detail: String?
    public var outcome: Outcome
    /// What went wrong, when it failed.
    public var error: String?

    public init(
        at: Int = Registry.now(), actor: String, via: Via, origin: String, action: String, target: String? = nil, detail: String? = nil,
        outcome: Outcome, error: String? = nil
    ) {
        self.at = at
        self.actor = actor
        self.via = via
        self.origin = origin
        self.action = action
        self.target = target
        self.detail = detail
        self.outcome = outcome
        self.error = error
    }

    init(_ row: Row) {
        id = row["id"]
        at = row["at"]
        actor = row["actor"]
        via = Via(rawValue: row["via"]) ?? .cli
        origin = row["origin"]
        action = row["action"]
        target = row["target"]
        detail = row["detail"]
        outcome = Outcome(rawValue: row["outcome"]) ?? .failed
        error = row["error"]
    }

    /// Who runs this process and from where, for a CLI record: `$SUDO_USER` (through `sudo`)
    /// or the user; the host, with the SSH client's address.
    public static func cliActor(environment: [String: String] = ProcessInfo.processInfo.environment) -> (actor: String, origin: String) {
        let user = environment["SUDO_USER"].flatMap { $0.isEmpty ? nil : $0 } ?? NSUserName()
        var origin = ProcessInfo.processInfo.hostName
        if let ssh = environment["SSH_CLIENT"]?.split(separator: " ").first { origin += " (ssh from \(ssh))" }
        return (user, origin)
    }
}

extension Registry {
    static func registerAuditMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v6-audit") { db in
            try db.execute(
                sql: """
                    CREATE TABLE audit (
                        id INTEGER PRIMARY KEY AUTOINCREMENT,
                        at INTEGER NOT NULL,
                        actor TEXT NOT NULL,
                        via TEXT NOT NULL,        -- cli | web
                        origin TEXT NOT NULL,
                        action TEXT NOT NULL,
                        target TEXT,
                        detail TEXT,
                        outcome TEXT NOT NULL,    -- ok | failed
                        error TEXT
                    );
                    CREATE INDEX audit_at ON audit(at);
                    CREATE INDEX audit_target ON audit(target, at);
                    """)
        }
    }

    public func recordAudit(_ record: AuditRecord) throws {
        try database.write { db in
            try db.execute(
                sql: "INSERT INTO audit (at, actor, via, origin, action, target, detail, outcome, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                arguments: [
                    record.at, record.actor, record.via.rawValue, record.origin, record.action, record.target, record.detail,
                    record.outcome.rawValue, record.error,
                ])
        }
    }

    /// The trail, newest first; of one target (a machine, a key …) when given.
    public func auditTrail(target: String? = nil, limit: Int = 200) throws -> [AuditRecord] {
        try database.read { db in
            if let target {
                return try Row.fetchAll(db, sql: "SELECT * FROM audit WHERE target = ? ORDER BY id DESC LIMIT ?", arguments: [target, limit])
                    .map(AuditRecord.init)
            }
            return try Row.fetchAll(db, sql: "SELECT * FROM audit ORDER BY id DESC LIMIT ?", arguments: [limit]).map(AuditRecord.init)
        }
    }
}
