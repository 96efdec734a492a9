import NBDClient

/// The policy of one export's connection pool, with no I/O and no clock of its own: every event
/// carries the instant it happened at and returns the actions its executor (`ExportPool`)
/// performs. Generic over the connection so that tests need no NBD server.
///
/// Which connection a lease gets: the oldest usable one with room for the lease's load under
/// `requestsPerConnection`; else a new one, if the export allows more (CAN_MULTI_CONN, up to
/// `maximumConnections`), none is being opened and connecting is not backing off; else, while
/// one is being opened, the lease is parked until it is up (or failed); else the least loaded
/// usable connection, the scan starting at a rotating index so that equals take turns; else
/// (nothing usable, backing off) the lease fails with the last connect error.
///
/// The task whose lease asked for a new connection opens it (`Action.open`) and reports
/// `connectionOpened` or `connectFailed`; parked leases are then decided again, in order.
struct PoolStateMachine<Connection: Sendable>: Sendable {
    /// Identifies one lease (one `withClient` call) from request to release.
    typealias LeaseID = Int
    /// Instants come from the executor's injected clock.
    typealias Instant = ContinuousClock.Instant

    /// The limits the policy works with.
    struct Configuration: Sendable {
        /// Most connections when the export has CAN_MULTI_CONN (else one).
        var maximumConnections: Int
        /// Load one connection carries before the pool spreads to (or opens) another.
        var requestsPerConnection: Int
        /// Connections unused this long are closed by `idleTick`.
        var idleTimeout: Duration
        /// Named in the errors the machine makes.
        var exportName: String
    }

    /// Why connections are to be closed (for the executor's log).
    enum CloseReason: Sendable, Equatable {
        /// The server said ESHUTDOWN: retired connections are closed once unused.
        case retired
        /// Unused for `idleTimeout`, or among the longest unused when the process keeps too many.
        case idle
        /// The connection broke; it is closed to release what it holds.
        case lost
        /// The pool shut down.
        case shutdown
    }

    /// What the executor does after an event.
    enum Action: Sendable {
        /// Lease `id` uses this connection (its load is counted on it until `leaseReleased`).
        case lease(LeaseID, Connection)
        /// Lease `id` waits for the connection being opened (resumed by a later action).
        case park(LeaseID)
        /// The task of lease `id` opens a connection for the pool, then reports
        /// `connectionOpened` or `connectFailed`; its lease stays parked meanwhile.
        case open(LeaseID)
        /// Lease `id` fails with this error.
        case fail(LeaseID, NBDError)
        /// Lease `id` was cancelled while parked: its task gets `CancellationError`.
        case cancel(LeaseID)
        /// Disconnect these connections (they finish what they carry first).
        case close([Connection], CloseReason)
    }

    /// Where the pool is in its life.
    private enum State: Sendable {
        /// Connecting works (or has not been tried): connections open on demand.
        case running
        /// The last connect failed: no new connection before `retryAt`.
        case backingOff(Backoff)
        /// `shutdown()` happened: leases fail, connections that come up are closed.
        case shutDown
    }

    /// Consecutive connect failures and what they imply.
    struct Backoff: Sendable {
        /// Failed connects since the last success.
        var failures: Int
        /// No new connection is attempted before this instant.
        var retryAt: Instant
        /// What the last attempt failed with (what leases fail with while nothing is open).
        var lastError: NBDError
    }

    /// Wait after the `failures`-th consecutive failure: 50 ms doubling, at most 5 s.
    static func backoffDelay(failures: Int) -> Duration {
        min(.milliseconds(50 << min(max(failures - 1, 0), 7)), .seconds(5))
    }

    let configuration: Configuration
    private var state: State = .running
    private(set) var connections = ConnectionGroup()
    private(set) var queue = RequestQueue()
    /// The connection each granted lease is counted on, and its load.
    private var leases: [LeaseID: (connection: Int, load: Int)] = [:]

    init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// When connecting is backing off: the instant the next attempt is allowed.
    var retryAt: Instant? {
        if case .backingOff(let backoff) = state { return backoff.retryAt }
        return nil
    }

    /// Connections open and not known to be broken (retired ones included).
    var connectionCount: Int { connections.entries.count { !$0.lost } }

    /// The earliest instant at which `idleTick` would close a connection, if one is unused.
    var nextIdleDeadline: Instant? {
        connections.entries.filter { $0.load == 0 }.map { $0.lastUsed + configuration.idleTimeout }.min()
    }

    // MARK: - Events

    /// A task wants a connection for `load` (1 for a request, `streamLoad` for a streaming GET).
    mutating func leaseRequested(_ id: LeaseID, load: Int, now: Instant) -> [Action] {
        let action = decide(id, load: load, now: now)
        if case .park = action { queue.append(id, load: load) }
        if case .open = action { queue.append(id, load: load) }
        return [action]
    }

    /// The connection a lease was told to open (`Action.open`) is up and negotiated.
    mutating func connectionOpened(_ connection: Connection, multiConn: Bool, now: Instant) -> [Action] {
        connections.opening = false
        if case .shutDown = state { return [.close([connection], .shutdown)] }
        state = .running
        connections.multiConn = multiConn
        connections.add(connection, now: now)
        return decideParked(now: now)
    }

    /// Opening a connection failed: back off, then decide the parked leases again (they fall
    /// back to open connections, or fail with `error` when none is open).
    mutating func connectFailed(_ error: NBDError, now: Instant) -> [Action] {
        connections.opening = false
        switch state {
        case .shutDown:
            return []
        case .running:
            state = .backingOff(Backoff(failures: 1, retryAt: now + Self.backoffDelay(failures: 1), lastError: error))
        case .backingOff(var backoff):
            backoff.failures += 1
            backoff.retryAt = now + Self.backoffDelay(failures: backoff.failures)
            backoff.lastError = error
            state = .backingOff(backoff)
        }
        return decideParked(now: now)
    }

    /// The task told to open a connection was cancelled before it began: another parked
    /// lease takes over (no failure is counted).
    mutating func openAbandoned(now: Instant) -> [Action] {
        connections.opening = false
        if case .shutDown = state { return [] }
        return decideParked(now: now)
    }

    /// Lease `id` is done with its connection. `retire`: the server answered ESHUTDOWN, so no
    /// connection takes new leases and each closes once unused.
    mutating func leaseReleased(_ id: LeaseID, retire: Bool, now: Instant) -> [Action] {
        guard let lease = leases.removeValue(forKey: id) else { return [] }
        connections.release(lease.connection, load: lease.load, now: now)
        if retire { connections.retireAll() }
        var actions: [Action] = []
        let retired = connections.removeUnused { $0.retired && !$0.lost }
        if !retired.isEmpty { actions.append(.close(retired, .retired)) }
        let lost = connections.removeUnused { $0.lost }
        if !lost.isEmpty { actions.append(.close(lost, .lost)) }
        return actions
    }

    /// The task of lease `id` was cancelled: a parked lease leaves the queue. A lease already
    /// granted or failed is not affected (its task sees the outcome and releases as usual).
    mutating func leaseCancelled(_ id: LeaseID) -> [Action] {
        queue.remove(id) ? [.cancel(id)] : []
    }

    /// The executor found connection `id` broken (its channel closed): it takes no new lease
    /// and is dropped once unused.
    mutating func connectionLost(_ id: Int) -> [Action] {
        connections.markLost(id)
        let lost = connections.removeUnused { $0.lost }
        return lost.isEmpty ? [] : [.close(lost, .lost)]
    }

    /// When each unused connection was last used: what the catalog weighs across exports to
    /// cap how many idle connections the process keeps (each keeps a receive buffer).
    var unusedSince: [Instant] {
        connections.entries.filter { $0.load == 0 && !$0.lost }.map(\.lastUsed)
    }

    /// Unused connections last used before `cutoff` are closed (the process keeps too many idle).
    mutating func closeUnused(usedBefore cutoff: Instant) -> [Action] {
        let idle = connections.removeUnused { !$0.lost && $0.lastUsed < cutoff }
        return idle.isEmpty ? [] : [.close(idle, .idle)]
    }

    /// Periodic: connections unused for `idleTimeout` or longer are closed.
    mutating func idleTick(now: Instant) -> [Action] {
        let idleTimeout = configuration.idleTimeout
        let idle = connections.removeUnused { now - $0.lastUsed >= idleTimeout }
        return idle.isEmpty ? [] : [.close(idle, .idle)]
    }

    /// The pool closes: parked leases fail, every connection is closed, later leases fail, and a
    /// connection still being opened is closed when it comes up.
    mutating func shutdown() -> [Action] {
        if case .shutDown = state { return [] }
        state = .shutDown
        let error = shutdownError
        var actions: [Action] = queue.removeAll().map { .fail($0, error) }
        leases.removeAll()
        let all = connections.removeAll()
        if !all.isEmpty { actions.append(.close(all, .shutdown)) }
        return actions
    }

    // MARK: - Choosing

    private var shutdownError: NBDError {
        NBDError(.disconnected, "the gateway is shutting down", exportName: configuration.exportName)
    }

    /// Decides one lease (new or parked) and books the connection it is granted.
    private mutating func decide(_ id: LeaseID, load: Int, now: Instant) -> Action {
        let backingOff: Bool
        switch state {
        case .shutDown:
            return .fail(id, shutdownError)
        case .running:
            backingOff = false
        case .backingOff(let backoff):
            backingOff = now < backoff.retryAt
        }
        let usable = connections.usableIndices
        // 1. The oldest connection with room.
        if let roomy = usable.first(where: { connections.entries[$0].load + load <= configuration.requestsPerConnection }) {
            return grant(id, load: load, at: roomy, now: now)
        }
        // 2. Another connection, if the export allows one, none is on its way and we are not backing off.
        let limit = connections.multiConn ? configuration.maximumConnections : 1
        if !connections.opening && usable.count < limit && !backingOff {
            connections.opening = true
            return .open(id)
        }
        // 3. One is on its way: it will have room.
        if connections.opening { return .park(id) }
        // 4. All busy and no more may be opened: the least loaded, equals taking turns.
        if let index = connections.leastLoaded(among: usable) {
            return grant(id, load: load, at: index, now: now)
        }
        // 5. None usable, and connecting failed a moment ago.
        if case .backingOff(let backoff) = state { return .fail(id, backoff.lastError) }
        return .fail(id, NBDError(.connectionFailed, "cannot connect", exportName: configuration.exportName))
    }

    private mutating func grant(_ id: LeaseID, load: Int, at index: Int, now: Instant) -> Action {
        let entry = connections.take(at: index, load: load, now: now)
        leases[id] = (entry.id, load)
        return .lease(id, entry.connection)
    }

    /// Decides every parked lease again, in the order they came: each is granted a connection,
    /// told to open one (then it stays parked), stays parked, or fails.
    private mutating func decideParked(now: Instant) -> [Action] {
        var actions: [Action] = []
        for parked in queue.leases {
            let action = decide(parked.id, load: parked.load, now: now)
            switch action {
            case .park:
                continue
            case .open:
                actions.append(action)
            default:
                queue.remove(parked.id)
                actions.append(action)
            }
        }
        return actions
    }
}
