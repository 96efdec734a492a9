import Metrics
import Synchronization

/// `--max-connections` and `--max-connections-per-client`, decided as libmicrohttpd accepts
/// each connection (its accept policy). A refused connection is closed at once: nothing can
/// be answered on it, so the refusals are counted in `/metrics`.
struct ConnectionLimitState: Sendable {
    enum Decision: Equatable, Sendable {
        case accept
        case refuseTotal
        case refusePerClient
    }

    let maximum: Int?
    let maximumPerClient: Int?
    private(set) var total = 0
    private(set) var perClient: [String: Int] = [:]

    init(maximum: Int?, maximumPerClient: Int?) {
        self.maximum = maximum
        self.maximumPerClient = maximumPerClient
    }

    /// A connection from `client` is being accepted; an accepted one counts until `closed`.
    mutating func accepting(client: String) -> Decision {
        if let maximum, total >= maximum { return .refuseTotal }
        let fromClient = perClient[client, default: 0]
        if let maximumPerClient, fromClient >= maximumPerClient { return .refusePerClient }
        total += 1
        perClient[client] = fromClient + 1
        return .accept
    }

    /// A connection accepted earlier has closed.
    mutating func closed(client: String) {
        guard let count = perClient[client] else { return }
        total -= 1
        perClient[client] = count > 1 ? count - 1 : nil
    }
}

/// The limits behind one lock, with their counters.
final class ConnectionLimits: Sendable {
    private let state: Mutex<ConnectionLimitState>
    private let refusedTotal = Counter(label: "nbd_gateway_connections_refused_total", dimensions: [("limit", "max_connections")])
    private let refusedPerClient = Counter(label: "nbd_gateway_connections_refused_total", dimensions: [("limit", "max_connections_per_client")])
    private let open = Gauge(label: "nbd_gateway_http_connections")

    init(maximum: Int?, maximumPerClient: Int?) {
        state = Mutex(ConnectionLimitState(maximum: maximum, maximumPerClient: maximumPerClient))
    }

    func accepting(client: String) -> Bool {
        let (decision, total) = state.withLock { state in (state.accepting(client: client), state.total) }
        switch decision {
        case .accept:
            open.record(total)
            return true
        case .refuseTotal:
            refusedTotal.increment()
        case .refusePerClient:
            refusedPerClient.increment()
        }
        return false
    }

    func closed(client: String) {
        let total = state.withLock { state in
            state.closed(client: client)
            return state.total
        }
        open.record(total)
    }
}
