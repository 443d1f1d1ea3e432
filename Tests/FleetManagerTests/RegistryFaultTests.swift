import Foundation
import GRDB
import MessageSchema
import Testing
import TestSupport

@testable import FleetManager

/// `serve` when the registry cannot be written: a decided payment that arrived then is not
/// lost (it is written once the registry can be again), and one event the registry refuses does
/// not take the rest of its batch with it.
@Suite(.serialized, .timeLimit(.minutes(2)))
struct RegistryFaultTests {
    static func result(_ machine: MachineID, _ payment: String, amount: Int) -> FleetEvent {
        .result(
            PaymentResult(
                paymentId: PaymentID(rawValue: payment)!, machineId: machine, status: .credited, reason: nil, amount: amount,
                pulses: [PulseCount(channel: "coin", count: amount / 100)], pulsesFired: amount / 100, decidedAt: Registry.now(), bootId: "b1",
                seq: 1))
    }

    static func heartbeat(_ machine: MachineID) -> FleetEvent {
        .heartbeat(
            Heartbeat(
                machineId: machine, bootId: "b1", seq: 1, at: Registry.now(), uptimeS: 1, firmware: "1", configVersion: 1, inhibited: false,
                relay: .ok, outboxDepth: 0, counters: PaymentCounters()))
    }

    @Test func aResultThatArrivesWhileTheRegistryCannotBeWrittenIsKept() async throws {
        try await DynsecFleet.with { fleet in
            var options = FleetMonitor.Options()
            options.maxBufferedEvents = 5
            options.retryDelay = .seconds(3600)  // the test flushes by hand
            let monitor = try FleetMonitor(home: fleet.home, options: options)
            let registry = fleet.home.registry
            let unit: MachineID = "laundry-01"
            try registry.upsertMachine(unit)

            // The registry refuses writes (as with a full disk or a read-only file system).
            try registry.database.writeWithoutTransaction { try $0.execute(sql: "PRAGMA query_only = 1") }
            monitor.enqueue(Self.result(unit, "p-1", amount: 300))
            monitor.flush()
            #expect(monitor.buffered == 1, "kept, not dropped")
            // More arrives meanwhile; past the limit heartbeats go, the results stay.
            for _ in 0..<6 { monitor.enqueue(Self.heartbeat(unit)) }
            monitor.enqueue(Self.result(unit, "p-2", amount: 200))
            monitor.flush()
            #expect(monitor.buffered == 2, "the two results, the heartbeats dropped")
            #expect(try registry.payments().isEmpty)

            // Writable again: both are written, in order.
            try registry.database.writeWithoutTransaction { try $0.execute(sql: "PRAGMA query_only = 0") }
            monitor.flush()
            #expect(monitor.buffered == 0)
            let records = try registry.payments()
            #expect(Set(records.map { "\($0.paymentId) \($0.status?.rawValue ?? "-") \($0.creditedAmount) \($0.settlement?.rawValue ?? "-")" }) == ["p-1 credited 300 capture", "p-2 credited 200 capture"])
        }
    }

    @Test func anEventTheRegistryRefusesDoesNotTakeItsBatchWithIt() async throws {
        try await DynsecFleet.with { fleet in
            let monitor = try FleetMonitor(home: fleet.home)
            let registry = fleet.home.registry
            let unit: MachineID = "wash-01"
            try registry.upsertMachine(unit)
            try registry.database.write {
                try $0.execute(
                    sql: """
                        CREATE TEMP TRIGGER poison BEFORE INSERT ON paymentRecord WHEN NEW.paymentId = 'p-poison'
                        BEGIN SELECT RAISE(ABORT, 'refused for the test'); END
                        """)
            }
            monitor.enqueue(Self.result(unit, "p-before", amount: 100))
            monitor.enqueue(Self.result(unit, "p-poison", amount: 100))
            monitor.enqueue(Self.result(unit, "p-after", amount: 100))
            monitor.flush()
            #expect(monitor.buffered == 0)
            #expect(Set(try registry.payments().map(\.paymentId)) == ["p-before", "p-after"])
        }
    }
}
