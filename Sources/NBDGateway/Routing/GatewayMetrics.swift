import Metrics
import Synchronization

/// The gateway's metric handles, made once per label set (making one asks the metrics
/// backend to look it up under a lock, too slow to do per request).
final class GatewayMetrics: Sendable {
    private struct Handles {
        var requests: [String: Counter] = [:]
        var durations: [String: Timer] = [:]
    }

    private let handles = Mutex(Handles())
    /// Requests refused by `--max-in-flight`.
    let overloaded = Counter(label: "nbd_gateway_overloaded_total")

    func requests(method: String, status: Int) -> Counter {
        let key = "\(method) \(status)"
        return handles.withLock { handles in
            if let counter = handles.requests[key] { return counter }
            let counter = Counter(label: "nbd_gateway_requests_total", dimensions: [("method", method), ("status", String(status))])
            handles.requests[key] = counter
            return counter
        }
    }

    func duration(method: String) -> Timer {
        handles.withLock { handles in
            if let timer = handles.durations[method] { return timer }
            let timer = Timer(label: "nbd_gateway_request_duration_seconds", dimensions: [("method", method)])
            handles.durations[method] = timer
            return timer
        }
    }
}
