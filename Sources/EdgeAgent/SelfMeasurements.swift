import Locking
import MessageSchema
import RelayOutput

/// What the agent measures of itself between two heartbeats: the trains it fired, how far
/// each relay edge landed from its schedule, how long the journal took to commit a train's
/// start. `take()` hands the window to the heartbeat (its `metrics` extension,
/// docs/protocol.md) and starts a new one.
final class SelfMeasurements: Sendable {
    struct Window {
        var trains = 0
        var edgeErrorsNs: [UInt64] = []
        var maxCommitNs: UInt64?
    }

    /// At most this many edge errors kept per window (a long train at a short heartbeat
    /// would otherwise grow it); beyond it, every other edge is kept.
    static let maxEdges = 4096
    let window = Locked(Window())

    func train(edges: [EdgeTiming], commitNs: UInt64?) {
        window.withLock { window in
            window.trains += 1
            for edge in edges {
                let error = edge.errorNs.magnitude
                if window.edgeErrorsNs.count < Self.maxEdges {
                    window.edgeErrorsNs.append(error)
                } else {
                    window.edgeErrorsNs[Int(edge.step) % Self.maxEdges] = max(window.edgeErrorsNs[Int(edge.step) % Self.maxEdges], error)
                }
            }
            if let commitNs { window.maxCommitNs = max(window.maxCommitNs ?? 0, commitNs) }
        }
    }

    /// The window since the last call, as the heartbeat carries it.
    func take() -> AgentMetrics {
        let window = self.window.withLock { window in
            defer { window = Window() }
            return window
        }
        var metrics = AgentMetrics(trains: window.trains)
        if !window.edgeErrorsNs.isEmpty {
            let sorted = window.edgeErrorsNs.sorted()
            metrics.edgeErrorMaxUs = Int(sorted.last! / 1000)
            metrics.edgeErrorP99Us = Int(sorted[min(sorted.count - 1, sorted.count * 99 / 100)] / 1000)
        }
        metrics.journalCommitMaxUs = window.maxCommitNs.map { Int($0 / 1000) }
        return metrics
    }
}
