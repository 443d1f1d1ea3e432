internal import CSodium
import Foundation
import GRDB
import MessageSchema

/// A person who uses the console: a name, a role, a password kept as an Argon2id hash.
public struct OperatorAccount: Sendable, Codable, Hashable {
    /// What an operator may do; each role may do what the ones below it may.
    public enum Role: String, Sendable, Codable, CaseIterable, Comparable {
        /// Sees the fleet, payments, alerts, the audit trail.
        case viewer
        /// Also acts on units: acknowledges alerts, sets configuration, rolls out firmware.
        case `operator`
        /// Also manages operators, provisions and revokes units.
        case admin

        var rank: Int { Self.allCases.firstIndex(of: self)! }
        public static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }
    }

    public var name: String
    public var role: Role
    public var createdAt: Int
    public var passwordChangedAt: Int

    init(_ row: Row) {
        name = row["name"]
        role = Role(rawValue: row["role"]) ?? .viewer
        createdAt = row["createdAt"]
        passwordChangedAt = row["passwordChangedAt"]
    }

    /// 1 to 32 lower-case letters, digits, '.', '_' or '-', starting with a letter.
    public static func isValidName(_ name: String) -> Bool {
        guard let first = name.unicodeScalars.first, (1...32).contains(name.unicodeScalars.count), ("a"..."z").contains(first) else { return false }
        return name.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "." || $0 == "_" || $0 == "-" }
    }
}

/// Argon2id (libsodium's `crypto_pwhash_str`, its interactive limits: 64 MiB, 2 passes):
/// a stolen registry gives no password without that work per guess.
public enum PasswordHash {
    public static let minimumLength = 12

    public static func make(_ password: String) throws -> String {
        guard password.count >= minimumLength else {
            throw FleetError("a password needs at least \(minimumLength) characters", hint: "use a passphrase of a few words")
        }
        guard sodium_init() >= 0 else { throw FleetError("libsodium did not start") }
        var out = [CChar](repeating: 0, count: Int(crypto_pwhash_strbytes()))
        let chars = password.utf8.map { CChar(bitPattern: $0) } + [0]
        let status = crypto_pwhash_str(
            &out, chars, UInt64(chars.count - 1), UInt64(crypto_pwhash_opslimit_interactive()), crypto_pwhash_memlimit_interactive())
        guard status == 0 else { throw FleetError("cannot hash the password (out of memory?)") }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func verify(_ password: String, against hash: String) -> Bool {
        guard sodium_init() >= 0 else { return false }
        let chars = password.utf8.map { CChar(bitPattern: $0) } + [0]
        return crypto_pwhash_str_verify(hash, chars, UInt64(chars.count - 1)) == 0
    }

    /// A hash no password matches, verified when the name is unknown so that a wrong name
    /// takes as long as a wrong password.
    static let decoy: String = (try? make("decoy-password-\(UUID().uuidString)")) ?? ""

    /// `count` random bytes as hex (libsodium's generator).
    public static func randomHex(_ count: Int = 32) -> String {
        _ = sodium_init()
        var bytes = [UInt8](repeating: 0, count: count)
        randombytes_buf(&bytes, count)
        return bytes.map { String(format: "%02x", $0) }.joined()
    }
}

/// A signed-in browser: the cookie holds the token, the registry only its SHA-256 (a copy of
/// the registry opens no session).
public struct OperatorSession: Sendable, Hashable {
    public var account: OperatorAccount
    /// Sent back with every form; a request without it is refused (CSRF).
    public var csrf: String
    public var expiresAt: Int
}

/// A session as the registry keeps it.
public struct OperatorSessionRecord: Sendable, Codable, Hashable {
    public var `operator`: String
    public var tokenSha256: String
    public var createdAt: Int
    public var expiresAt: Int
    public var origin: String?
}

extension Registry {
    static func registerOperatorMigration(_ migrator: inout DatabaseMigrator) {
        migrator.registerMigration("v7-operators") { db in
            try db.execute(
                sql: """
                    CREATE TABLE operator (
                        name TEXT PRIMARY KEY,
                        role TEXT NOT NULL,               -- viewer | operator | admin
                        passwordHash TEXT NOT NULL,       -- Argon2id, libsodium's string form
                        createdAt INTEGER NOT NULL,
                        passwordChangedAt INTEGER NOT NULL
                    );
                    CREATE TABLE operatorSession (
                        tokenSha256 TEXT PRIMARY KEY,
                        operator TEXT NOT NULL REFERENCES operator(name) ON DELETE CASCADE,
                        csrf TEXT NOT NULL,
                        createdAt INTEGER NOT NULL,
                        expiresAt INTEGER NOT NULL,
                        origin TEXT
                    );
                    """)
        }
    }

    public func operators() throws -> [OperatorAccount] {
        try database.read { db in try Row.fetchAll(db, sql: "SELECT * FROM operator ORDER BY name").map(OperatorAccount.init) }
    }

    public func addOperator(_ name: String, role: OperatorAccount.Role, password: String, now: Int = Registry.now()) throws {
        guard OperatorAccount.isValidName(name) else {
            throw FleetError("'\(name)' is not an operator name", hint: "1 to 32 lower-case letters, digits, '.', '_' or '-', starting with a letter")
        }
        let hash = try PasswordHash.make(password)
        try database.write { db in
            guard try Row.fetchOne(db, sql: "SELECT 1 FROM operator WHERE name = ?", arguments: [name]) == nil else {
                throw FleetError("operator \(name) exists", hint: "fleet-manager operators passwd \(name) changes the password")
            }
            try db.execute(
                sql: "INSERT INTO operator (name, role, passwordHash, createdAt, passwordChangedAt) VALUES (?, ?, ?, ?, ?)",
                arguments: [name, role.rawValue, hash, now, now])
        }
    }

    /// A new password (and role, when given); every session of the operator ends.
    public func setOperatorPassword(_ name: String, password: String, role: OperatorAccount.Role? = nil, now: Int = Registry.now()) throws {
        let hash = try PasswordHash.make(password)
        try database.write { db in
            try db.execute(
                sql: "UPDATE operator SET passwordHash = ?, passwordChangedAt = ?, role = COALESCE(?, role) WHERE name = ?",
                arguments: [hash, now, role?.rawValue, name])
            guard db.changesCount > 0 else { throw FleetError("no operator \(name)", hint: "fleet-manager operators list") }
            try db.execute(sql: "DELETE FROM operatorSession WHERE operator = ?", arguments: [name])
        }
    }

    public func removeOperator(_ name: String) throws {
        try database.write { db in
            try db.execute(sql: "DELETE FROM operatorSession WHERE operator = ?", arguments: [name])
            try db.execute(sql: "DELETE FROM operator WHERE name = ?", arguments: [name])
            guard db.changesCount > 0 else { throw FleetError("no operator \(name)", hint: "fleet-manager operators list") }
        }
    }

    /// The account if the password is its own. A wrong name costs the same time as a wrong password.
    public func authenticate(_ name: String, password: String) throws -> OperatorAccount? {
        let row = try database.read { db in try Row.fetchOne(db, sql: "SELECT * FROM operator WHERE name = ?", arguments: [name]) }
        guard let row else {
            _ = PasswordHash.verify(password, against: PasswordHash.decoy)
            return nil
        }
        return PasswordHash.verify(password, against: row["passwordHash"]) ? OperatorAccount(row) : nil
    }

    /// A session for `account`: the token for the cookie, and the session.
    public func openSession(_ account: OperatorAccount, origin: String, lifetimeMs: Int = 12 * 3600 * 1000, now: Int = Registry.now()) throws -> (
        token: String, session: OperatorSession
    ) {
        let token = PasswordHash.randomHex()
        let csrf = PasswordHash.randomHex(16)
        try database.write { db in
            try db.execute(sql: "DELETE FROM operatorSession WHERE expiresAt < ?", arguments: [now])
            try db.execute(
                sql: "INSERT INTO operatorSession (tokenSha256, operator, csrf, createdAt, expiresAt, origin) VALUES (?, ?, ?, ?, ?, ?)",
                arguments: [SHA256Hasher.hex(of: Data(token.utf8)), account.name, csrf, now, now + lifetimeMs, origin])
        }
        return (token, OperatorSession(account: account, csrf: csrf, expiresAt: now + lifetimeMs))
    }

    /// The live session a cookie's token opens, if any.
    public func session(token: String, now: Int = Registry.now()) throws -> OperatorSession? {
        try database.read { db in
            guard
                let row = try Row.fetchOne(
                    db,
                    sql: """
                        SELECT o.*, s.csrf, s.expiresAt FROM operatorSession s JOIN operator o ON o.name = s.operator
                        WHERE s.tokenSha256 = ? AND s.expiresAt > ?
                        """, arguments: [SHA256Hasher.hex(of: Data(token.utf8)), now])
            else { return nil }
            return OperatorSession(account: OperatorAccount(row), csrf: row["csrf"], expiresAt: row["expiresAt"])
        }
    }

    /// Who is signed in where (the tokens' hashes, never the tokens).
    public func openSessions(now: Int = Registry.now()) throws -> [OperatorSessionRecord] {
        try database.read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM operatorSession WHERE expiresAt > ? ORDER BY createdAt", arguments: [now]).map {
                OperatorSessionRecord(operator: $0["operator"], tokenSha256: $0["tokenSha256"], createdAt: $0["createdAt"], expiresAt: $0["expiresAt"], origin: $0["origin"])
            }
        }
    }

    public func closeSession(token: String) throws {
        try database.write { db in
            try db.execute(sql: "DELETE FROM operatorSession WHERE tokenSha256 = ?", arguments: [SHA256Hasher.hex(of: Data(token.utf8))])
        }
    }
}
