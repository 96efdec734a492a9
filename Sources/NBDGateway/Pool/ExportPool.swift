import Logging
import NBDClient
import Synchronization

/// The negotiated NBD connections of one export: opened lazily, bounded, shared by many
/// requests at once (each connection pipelines), replaced when broken, with backoff.
///
/// The policy (which connection, when to open another, backoff, retiring, idle closing,
/// shutdown) is `PoolStateMachine`; this class only feeds it events, stamped by the injected
/// clock, and performs its actions: opening with `NBDClient.connect`, disconnecting, resuming
/// the tasks waiting for a lease. A wait for a lease is cancellable.
///
/// Consistency: without CAN_MULTI_CONN every request uses one connection, so a write
/// acknowledged to one client is seen by every later read. With it, requests may spread over
/// up to `maximumConnections`, and writers flush before answering (a FLUSH on any connection
/// makes acknowledged writes visible on all of them).
public final class ExportPool: Sendable {
    typealias Machine = PoolStateMachine<NBDClient>

    /// What a waiting task is told.
    fileprivate enum Outcome: Sendable {
        /// Use this connection.
        case use(NBDClient)
        /// Open a connection for the pool, then wait again.
        case open
    }

    /// A lease whose task has not yet seen its outcome.
    fileprivate enum Waiter {
        /// The task is suspended on this continuation.
        case waiting(CheckedContinuation<Outcome, any Error>)
        /// Outcomes that came before the task suspended, oldest first. More than one only when
        /// an `open` is followed by a cancellation or failure: the task must still open (or
        /// report that it did not) before it sees the end of its lease.
        case ready([Result<Outcome, any Error>])
    }

    fileprivate struct State: Sendable {
        var machine: Machine
        var waiters: [Machine.LeaseID: Waiter] = [:]
        var nextLease = 0
        var info: NBDExportInfo?
        var metrics: PoolMetrics?
        /// The connection count last published (the gauge is set only when it changes).
        var recorded = 0
    }

    /// What to do outside the lock after an event.
    fileprivate struct Effects {
        var resumes: [(CheckedContinuation<Outcome, any Error>, Result<Outcome, any Error>)] = []
        var closes: [([NBDClient], Machine.CloseReason)] = []
    }

    /// The export's name in the gateway.
    public let name: String
    /// Where the export lives.
    public let uri: NBDURI
    private let settings: PoolSettings
    private let logger: Logger
    private let clock: any PoolClock
    private let state: Mutex<State>
    /// The content generation behind the export's ETags.
    public let version = ContentVersion()
    public let tagIdentity: String

    /// A pool for the export `uri` names; nothing is opened until a request needs it.
    /// `clock`: where event times come from (tests pass one they move by hand).
    public init(name: String, uri: NBDURI, settings: PoolSettings, logger: Logger, clock: any PoolClock = ContinuousClock()) {
        self.name = name
        self.tagIdentity = EntityTags.identity(name)
        self.uri = uri
        self.settings = settings
        self.logger = logger
        self.clock = clock
        let configuration = Machine.Configuration(
            maximumConnections: settings.maximumConnections, requestsPerConnection: settings.requestsPerConnection,
            idleTimeout: settings.idleTimeout, exportName: name
        )
        self.state = Mutex(State(machine: Machine(configuration: configuration)))
    }

    /// What the pool's connections negotiated (opening one if none is open yet).
    public func info() async throws -> NBDExportInfo {
        try await withClient { $0.info }
    }

    /// The export info if a connection has negotiated already (it may have closed since).
    public var cachedInfo: NBDExportInfo? { state.withLock { $0.info } }

    /// The export info if a negotiated connection is open now.
    public var liveInfo: NBDExportInfo? {
        state.withLock { state in
            state.machine.connections.usable.contains { $0.connection.isActive } ? state.info : nil
        }
    }

    /// What a streaming read counts for: half a connection. It keeps eight chunks of its
    /// connection's receive buffers busy, half of the sixteen a connection reuses; two of them
    /// share a connection, a third goes to another (4 concurrent 1 GiB GETs: 15% faster, and
    /// less CPU, than on one connection).
    public var streamLoad: Int { max(1, settings.requestsPerConnection / 2) }

    /// Runs `body` with a connection; the connection stays open (not idle) while it runs.
    /// `load`: what `body` counts for against `requestsPerConnection` (1 for a request).
    /// Waiting for a connection ends with `CancellationError` when the task is cancelled.
    public func withClient<T: Sendable>(load: Int = 1, _ body: (NBDClient) async throws -> T) async throws -> T {
        let (lease, client) = try await acquire(load: load)
        do {
            let result = try await body(client)
            await release(lease, retire: false)
            return result
        } catch let error as NBDError {
            metrics?.failed(error)
            // ESHUTDOWN: the server is going away: stop using its connections, let them finish and close.
            await release(lease, retire: error.errno == .ESHUTDOWN)
            throw error
        } catch {
            await release(lease, retire: false)
            throw error
        }
    }

    private var metrics: PoolMetrics? { state.withLock { $0.metrics } }

    /// Counts bytes a GET read from the export.
    public func countRead(_ bytes: Int) {
        metrics?.bytesRead.increment(by: Int64(bytes))
    }

    /// Counts bytes a PUT wrote to the export.
    public func countWritten(_ bytes: Int) {
        metrics?.bytesWritten.increment(by: Int64(bytes))
    }

    /// Whether a connection can be had right now (opens one if needed).
    public func probe() async -> Bool {
        (try? await info()) != nil
    }

    /// Closes connections unused for the idle timeout or longer.
    public func closeIdle() async {
        let now = clock.now
        await perform(feed { $0.idleTick(now: now) })
    }

    /// When each unused connection was last used (for the process-wide `IdleConnectionCap`).
    var unusedSince: [ContinuousClock.Instant] {
        state.withLock { $0.machine.unusedSince }
    }

    /// Closes the unused connections last used before `cutoff`; returns how many.
    func closeUnused(usedBefore cutoff: ContinuousClock.Instant) async -> Int {
        let effects = feed { $0.closeUnused(usedBefore: cutoff) }
        await perform(effects)
        return effects.closes.reduce(0) { $0 + $1.0.count }
    }

    /// Disconnects every connection (they finish their in-flight requests first); leases
    /// waiting for a connection, and every later one, fail.
    public func close() async {
        await perform(feed { $0.shutdown() })
    }

    /// Closes every connection now, without waiting for replies (requests in flight fail);
    /// no new ones are opened. For a shutdown whose grace period is over.
    public func abort() async {
        await perform(feed { $0.shutdown() }, abort: true)
    }

    /// Leases waiting for the connection being opened (for tests).
    var parkedLeases: Int { state.withLock { $0.machine.queue.count } }

    /// Connections open, as the pool counts them (for tests).
    var openConnections: Int { state.withLock { $0.machine.connectionCount } }

    // MARK: - Executing the machine

    private func acquire(load: Int) async throws -> (Machine.LeaseID, NBDClient) {
        let now = clock.now
        // The fast path: granted (or failed) at once, with no continuation.
        let (lease, first, effects) = state.withLock { state in
            let lease = state.nextLease
            state.nextLease += 1
            var actions = Self.lostConnections(&state.machine)
            actions += state.machine.leaseRequested(lease, load: load, now: now)
            let effects = state.apply(actions)
            state.recordConnections()
            return (lease, state.takeReady(lease), effects)
        }
        await perform(effects)
        switch first {
        case .success(.use(let client)):
            return (lease, client)
        case .failure(let error):
            throw error
        case .success(.open), nil:
            break
        }
        // Parked, or told to open: cancelling the task from here on takes the lease out of the queue.
        return try await withTaskCancellationHandler {
            var next = first
            while true {
                let outcome: Outcome
                if let ready = next {
                    outcome = try ready.get()
                    next = nil
                } else {
                    outcome = try await wait(for: lease)
                }
                switch outcome {
                case .use(let client):
                    return (lease, client)
                case .open:
                    await openConnection()
                }
            }
        } onCancel: {
            let effects = feed { $0.leaseCancelled(lease) }
            // Only resumes (a parked lease holds no connection to close): nothing to await.
            for (continuation, result) in effects.resumes { continuation.resume(with: result) }
        }
    }

    /// Suspends until lease `lease` has an outcome (at once if one came already).
    private func wait(for lease: Machine.LeaseID) async throws -> Outcome {
        try await withCheckedThrowingContinuation { continuation in
            let ready = state.withLock { state -> Result<Outcome, any Error>? in
                if let result = state.takeReady(lease) { return result }
                state.waiters[lease] = .waiting(continuation)
                return nil
            }
            if let ready { continuation.resume(with: ready) }
        }
    }

    /// Opens a connection on the machine's behalf and reports how it went.
    private func openConnection() async {
        if Task.isCancelled {
            let now = clock.now
            await perform(feed { $0.openAbandoned(now: now) })
            return
        }
        do {
            let client = try await NBDClient.connect(to: uri, configuration: settings.client, logger: logger)
            let now = clock.now
            let effects = state.withLock { state in
                state.info = client.info
                if state.metrics == nil { state.metrics = PoolMetrics(export: name) }
                // With no connection open the backend may have changed unseen (a restart).
                if state.machine.connectionCount == 0 { version.advance() }
                let actions = state.machine.connectionOpened(client, multiConn: client.info.canMultiConn, now: now)
                defer { state.recordConnections() }
                return state.apply(actions)
            }
            logger.debug("opened NBD connection", metadata: ["export": "\(name)", "uri": "\(uri)"])
            await perform(effects)
        } catch is CancellationError {
            let now = clock.now
            await perform(feed { $0.openAbandoned(now: now) })
        } catch {
            let nbdError = error as? NBDError ?? NBDError(.connectionFailed, "\(error)", exportName: name)
            let now = clock.now
            let effects = state.withLock { state in
                state.metrics?.connectFailures.increment()
                return state.apply(state.machine.connectFailed(nbdError, now: now))
            }
            logger.warning("cannot open NBD connection", metadata: ["export": "\(name)", "error": "\(nbdError)"])
            await perform(effects)
        }
    }

    /// Returns lease `lease`'s connection. `retire`: the server said ESHUTDOWN, so every
    /// connection to it stops taking leases and closes once unused (the server waits for its
    /// clients to leave).
    private func release(_ lease: Machine.LeaseID, retire: Bool) async {
        let now = clock.now
        await perform(feed { $0.leaseReleased(lease, retire: retire, now: now) })
    }

    /// Feeds one event under the lock and returns what to do after it.
    private func feed(_ event: (inout Machine) -> [Machine.Action]) -> Effects {
        state.withLock { state in
            let effects = state.apply(event(&state.machine))
            state.recordConnections()
            return effects
        }
    }

    /// Connections whose channel has closed, reported to the machine.
    private static func lostConnections(_ machine: inout Machine) -> [Machine.Action] {
        var actions: [Machine.Action] = []
        for entry in machine.connections.entries where !entry.lost && !entry.connection.isActive {
            actions += machine.connectionLost(entry.id)
        }
        return actions
    }

    private func perform(_ effects: Effects, abort: Bool = false) async {
        for (continuation, result) in effects.resumes { continuation.resume(with: result) }
        for (clients, reason) in effects.closes {
            switch reason {
            case .retired:
                logger.info("closing NBD connection: the server is shutting down", metadata: ["export": "\(name)"])
            case .idle:
                logger.debug("closing idle NBD connection", metadata: ["export": "\(name)"])
            case .lost, .shutdown:
                break
            }
            for client in clients {
                if abort { await client.abort() } else { await client.disconnect() }
            }
        }
    }
}

extension ExportPool.State {
    /// Turns the machine's actions into outcomes for waiting tasks (resumed after the lock is
    /// released, or kept for a task that has not suspended yet) and connections to close.
    fileprivate mutating func apply(_ actions: [ExportPool.Machine.Action]) -> ExportPool.Effects {
        var effects = ExportPool.Effects()
        for action in actions {
            switch action {
            case .lease(let lease, let client):
                resolve(lease, .success(.use(client)), &effects)
            case .open(let lease):
                resolve(lease, .success(.open), &effects)
            case .fail(let lease, let error):
                resolve(lease, .failure(error), &effects)
            case .cancel(let lease):
                resolve(lease, .failure(CancellationError()), &effects)
            case .park:
                break
            case .close(let clients, let reason):
                effects.closes.append((clients, reason))
            }
        }
        return effects
    }

    private mutating func resolve(_ lease: Int, _ result: Result<ExportPool.Outcome, any Error>, _ effects: inout ExportPool.Effects) {
        switch waiters.removeValue(forKey: lease) {
        case .waiting(let continuation):
            effects.resumes.append((continuation, result))
        case .ready(let earlier):
            waiters[lease] = .ready(earlier + [result])
        case nil:
            waiters[lease] = .ready([result])
        }
    }

    /// The oldest outcome kept for lease `lease`, if any.
    fileprivate mutating func takeReady(_ lease: Int) -> Result<ExportPool.Outcome, any Error>? {
        guard case .ready(var results) = waiters[lease], !results.isEmpty else { return nil }
        let first = results.removeFirst()
        waiters[lease] = results.isEmpty ? nil : .ready(results)
        return first
    }

    /// Publishes how many connections are open, when that changed.
    fileprivate mutating func recordConnections() {
        let count = machine.connectionCount
        guard count != recorded, let metrics else { return }
        recorded = count
        metrics.connections.record(count)
    }
}
