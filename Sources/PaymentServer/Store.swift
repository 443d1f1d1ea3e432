import Foundation
import GRDB

/// Where a payment is, as the payment server sees it. The customer's page words each one.
public enum PaymentState: String, Sendable, Codable, CaseIterable {
    /// The customer is at the provider's checkout.
    case checkout
    /// The provider authorised the charge; the completion is about to be published.
    case authorized
    /// The signed completion is published; waiting for the machine's result.
    case sent
    /// The machine credited; the charge was captured.
    case captured
    /// Nothing was credited (rejected, or proven not credited); the authorisation was released.
    case voided
    /// The provider declined; nothing was published.
    case declined
    /// The provider failed or did not answer; nothing was published, nothing charged.
    case failed
    /// The train stopped part-way (`uncertain`), or a capture failed: kept for the operator.
    case held
    /// No result yet and nothing proves the machine did not credit: the authorisation is kept
    /// (no result is not a void).
    case unknown
    /// Captured, then refunded by the operator.
    case refunded

    /// No further change is expected from the server itself.
    public var isFinal: Bool {
        switch self {
        case .captured, .voided, .declined, .failed, .held, .refunded: true
        case .checkout, .authorized, .sent, .unknown: false
        }
    }
    /// Occupies the machine: a second payment must wait.
    var occupiesMachine: Bool { self == .authorized || self == .sent }
}

/// One payment.
public struct PaymentRecord: Sendable, Codable, Hashable {
    public var paymentId: String
    public var machineId: String
    public var userId: String
    public var amount: Int
    public var currency: String
    public var idempotencyKey: String
    public var state: PaymentState
    public var providerRef: String?
    /// The agent's result status and reason, where one came.
    public var resultStatus: String?
    public var resultReason: String?
    public var pulses: Int?
    /// A short operator-facing note (why held, failed, voided).
    public var note: String?
    public var createdAt: Int
    public var updatedAt: Int
}

/// A customer: the first-party user ID, and a profile kept only with consent.
public struct CustomerRecord: Sendable, Codable, Hashable {
    public var userId: String
    public var createdAt: Int
    public var name: String?
    public var email: String?
    public var phone: String?
    /// When the customer agreed to the profile being kept (nil: no profile).
    public var consentAt: Int?
    /// When the customer deleted the profile.
    public var deletedAt: Int?
}

/// The server's SQLite store (WAL, `synchronous=FULL`: an authorised charge is money).
public final class PaymentStore: Sendable {
    /// A pool: page loads read concurrently (WAL) while a payment's transition commits.
    let database: DatabasePool

    public init(path: String) throws {
        var configuration = Configuration()
        configuration.prepareDatabase { db in
            _ = try String.fetchOne(db, sql: "PRAGMA journal_mode = WAL")
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        configuration.busyMode = .timeout(10)
        database = try DatabasePool(path: path, configuration: configuration)
        try Self.migrator.migrate(database)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE customer (
                        userId TEXT PRIMARY KEY,
                        createdAt INTEGER NOT NULL,
                        name TEXT, email TEXT, phone TEXT,
                        consentAt INTEGER, deletedAt INTEGER
                    );
                    CREATE TABLE payment (
                        paymentId TEXT PRIMARY KEY,
                        machineId TEXT NOT NULL,
                        userId TEXT NOT NULL,
                        amount INTEGER NOT NULL,
                        currency TEXT NOT NULL,
                        idempotencyKey TEXT NOT NULL,
                        state TEXT NOT NULL,
                        providerRef TEXT,
                        resultStatus TEXT, resultReason TEXT, pulses INTEGER, note TEXT,
                        createdAt INTEGER NOT NULL,
                        updatedAt INTEGER NOT NULL,
                        UNIQUE (userId, idempotencyKey)
                    );
                    CREATE INDEX paymentByMachine ON payment (machineId, state);
                    CREATE INDEX paymentByRef ON payment (providerRef);
                    CREATE TABLE secret (name TEXT PRIMARY KEY, value BLOB NOT NULL);
                    CREATE TABLE simulatedAuthorization (
                        ref TEXT PRIMARY KEY,
                        paymentId TEXT NOT NULL UNIQUE,
                        amount INTEGER NOT NULL,
                        currency TEXT NOT NULL,
                        state TEXT NOT NULL,
                        card TEXT,
                        captured INTEGER NOT NULL DEFAULT 0,
                        refunded INTEGER NOT NULL DEFAULT 0,
                        createdAt INTEGER NOT NULL,
                        updatedAt INTEGER NOT NULL
                    );
                    """)
        }
        return migrator
    }

    static func now() -> Int { Int(Date().timeIntervalSince1970 * 1000) }

    // MARK: Secrets

    /// A random secret kept in the store (made on first use): it signs CSRF tokens.
    func secret(_ name: String) throws -> [UInt8] {
        try database.write { db in
            if let value = try Data.fetchOne(db, sql: "SELECT value FROM secret WHERE name = ?", arguments: [name]) {
                return [UInt8](value)
            }
            var bytes = [UInt8](repeating: 0, count: 32)
            var generator = SystemRandomNumberGenerator()
            for i in bytes.indices { bytes[i] = UInt8.random(in: 0...255, using: &generator) }
            try db.execute(sql: "INSERT INTO secret (name, value) VALUES (?, ?)", arguments: [name, Data(bytes)])
            return bytes
        }
    }

    // MARK: Customers

    /// Records a user ID the first time it is seen.
    func touchCustomer(_ userId: String) throws {
        try database.write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO customer (userId, createdAt) VALUES (?, ?)", arguments: [userId, Self.now()])
        }
    }

    public func customer(_ userId: String) throws -> CustomerRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM customer WHERE userId = ?", arguments: [userId]).map(Self.customer)
        }
    }

    func saveProfile(_ userId: String, name: String?, email: String?, phone: String?) throws {
        try database.write { db in
            try db.execute(
                sql: "INSERT OR IGNORE INTO customer (userId, createdAt) VALUES (?, ?)", arguments: [userId, Self.now()])
            try db.execute(
                sql: "UPDATE customer SET name = ?, email = ?, phone = ?, consentAt = ?, deletedAt = NULL WHERE userId = ?",
                arguments: [name, email, phone, Self.now(), userId])
        }
    }

    /// Forgets the profile (name, e-mail, phone, consent). Payments keep the pseudonymous user ID:
    /// they are the operator's accounting records.
    func deleteProfile(_ userId: String) throws {
        try database.write { db in
            try db.execute(
                sql: "UPDATE customer SET name = NULL, email = NULL, phone = NULL, consentAt = NULL, deletedAt = ? WHERE userId = ?",
                arguments: [Self.now(), userId])
        }
    }

    static func customer(_ row: Row) -> CustomerRecord {
        CustomerRecord(
            userId: row["userId"], createdAt: row["createdAt"], name: row["name"], email: row["email"], phone: row["phone"],
            consentAt: row["consentAt"], deletedAt: row["deletedAt"])
    }

    /// Per customer: the profile and what the machines credited for them (the customer
    /// information the operator collects; the same count as `fleet-manager report customers`).
    public func customerReport() throws -> [(customer: CustomerRecord, payments: Int, amount: Int)] {
        try database.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT c.*, COUNT(p.paymentId) AS n, COALESCE(SUM(p.amount), 0) AS total
                    FROM customer c LEFT JOIN payment p ON p.userId = c.userId AND p.resultStatus = 'credited'
                    GROUP BY c.userId ORDER BY c.userId
                    """
            ).map { (Self.customer($0), $0["n"], $0["total"]) }
        }
    }

    // MARK: Payments

    /// Creates a payment, or returns the one this customer already made with this key (a
    /// double tap, a reload, the back button): `created` says which.
    func createPayment(_ payment: PaymentRecord) throws -> (PaymentRecord, created: Bool) {
        try database.write { db in
            if let existing = try Row.fetchOne(
                db, sql: "SELECT * FROM payment WHERE userId = ? AND idempotencyKey = ?",
                arguments: [payment.userId, payment.idempotencyKey])
            {
                return (Self.payment(existing), false)
            }
            try db.execute(
                sql: """
                    INSERT INTO payment (paymentId, machineId, userId, amount, currency, idempotencyKey, state, createdAt, updatedAt)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                arguments: [
                    payment.paymentId, payment.machineId, payment.userId, payment.amount, payment.currency,
                    payment.idempotencyKey, payment.state.rawValue, payment.createdAt, payment.updatedAt,
                ])
            return (payment, true)
        }
    }

    public func payment(_ id: String) throws -> PaymentRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM payment WHERE paymentId = ?", arguments: [id]).map(Self.payment)
        }
    }

    func payment(providerRef: String) throws -> PaymentRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM payment WHERE providerRef = ?", arguments: [providerRef]).map(Self.payment)
        }
    }

    public func payments(user: String? = nil, states: [PaymentState]? = nil) throws -> [PaymentRecord] {
        try database.read { db in
            var sql = "SELECT * FROM payment WHERE 1"
            var arguments = StatementArguments()
            if let user {
                sql += " AND userId = ?"
                _ = arguments.append(contentsOf: [user])
            }
            if let states {
                sql += " AND state IN (" + states.map { _ in "?" }.joined(separator: ",") + ")"
                _ = arguments.append(contentsOf: StatementArguments(states.map(\.rawValue)))
            }
            return try Row.fetchAll(db, sql: sql + " ORDER BY createdAt DESC", arguments: arguments).map(Self.payment)
        }
    }

    /// The payment occupying `machine` (authorised or sent), if any.
    func occupying(_ machine: String) throws -> PaymentRecord? {
        try database.read { db in
            try Row.fetchOne(
                db, sql: "SELECT * FROM payment WHERE machineId = ? AND state IN ('authorized', 'sent') LIMIT 1",
                arguments: [machine]
            ).map(Self.payment)
        }
    }

    func setProviderRef(_ id: String, _ ref: String) throws {
        try database.write { db in
            try db.execute(sql: "UPDATE payment SET providerRef = ?, updatedAt = ? WHERE paymentId = ?", arguments: [ref, Self.now(), id])
        }
    }

    /// Moves a payment to `state` only if it is in one of `from`; false if it was not (someone
    /// else moved it first). This is what makes a webhook racing the customer's return, or two
    /// returns, publish one completion.
    func transition(
        _ id: String, from: Set<PaymentState>, to state: PaymentState, note: String? = nil,
        result: (status: String, reason: String?, pulses: Int)? = nil
    ) throws -> Bool {
        try database.write { db in
            let placeholders = from.map { _ in "?" }.joined(separator: ",")
            var arguments: StatementArguments = [state.rawValue, note, Self.now()]
            var sql = "UPDATE payment SET state = ?, note = COALESCE(?, note), updatedAt = ?"
            if let result {
                sql += ", resultStatus = ?, resultReason = ?, pulses = ?"
                _ = arguments.append(contentsOf: [result.status, result.reason, result.pulses])
            }
            sql += " WHERE paymentId = ? AND state IN (\(placeholders))"
            _ = arguments.append(contentsOf: [id])
            _ = arguments.append(contentsOf: StatementArguments(from.map(\.rawValue)))
            try db.execute(sql: sql, arguments: arguments)
            return db.changesCount == 1
        }
    }

    static func payment(_ row: Row) -> PaymentRecord {
        PaymentRecord(
            paymentId: row["paymentId"], machineId: row["machineId"], userId: row["userId"], amount: row["amount"],
            currency: row["currency"], idempotencyKey: row["idempotencyKey"],
            state: PaymentState(rawValue: row["state"]) ?? .held, providerRef: row["providerRef"],
            resultStatus: row["resultStatus"], resultReason: row["resultReason"], pulses: row["pulses"], note: row["note"],
            createdAt: row["createdAt"], updatedAt: row["updatedAt"])
    }
}

extension PaymentStore {
    /// The simulated provider's state for an authorisation (what it captured, voided, holds).
    public func simulatedProviderState(_ ref: String) throws -> String? {
        try database.read { db in try String.fetchOne(db, sql: "SELECT state FROM simulatedAuthorization WHERE ref = ?", arguments: [ref]) }
    }

    func payment(user: String, key: String) throws -> PaymentRecord? {
        try database.read { db in
            try Row.fetchOne(db, sql: "SELECT * FROM payment WHERE userId = ? AND idempotencyKey = ?", arguments: [user, key]).map(Self.payment)
        }
    }

    /// Whether `machine` refused a payment of ours since `since` because its inhibit input was active.
    func recentInhibited(_ machine: String, since: Int) throws -> Bool {
        try database.read { db in
            try Bool.fetchOne(
                db,
                sql: "SELECT resultReason = 'machine_inhibited' AND updatedAt > ? FROM payment WHERE machineId = ? AND resultStatus IS NOT NULL ORDER BY updatedAt DESC LIMIT 1",
                arguments: [since, machine]) ?? false
        }
    }
}
