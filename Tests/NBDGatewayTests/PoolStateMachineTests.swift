@testable import NBDGateway
import NBDClient
import Testing

/// The pool's policy, transition by transition, in virtual time: connections are strings,
/// instants are `t0` plus a duration, and nothing waits.
@Suite("PoolStateMachine: connection choice, backoff, retiring, idle closing, shutdown, cancellation")
struct PoolStateMachineTests {
    typealias Machine = PoolStateMachine<String>

    static let t0 = ContinuousClock.now

    static func at(_ offset: Duration) -> ContinuousClock.Instant { t0 + offset }

    static func machine(maximum: Int = 4, perConnection: Int = 2, idle: Duration = .seconds(300)) -> Machine {
        Machine(configuration: .init(maximumConnections: maximum, requestsPerConnection: perConnection, idleTimeout: idle, exportName: "disk"))
    }

    static let refused = NBDError(.connectionFailed, "connection refused", exportName: "disk")

    /// A machine whose connections `names` are open (opened in turn by leases that were then
    /// released), all at `t0`; the next lease id is `names.count`.
    static func machine(open names: [String], multiConn: Bool = true, maximum: Int = 4, perConnection: Int = 2, idle: Duration = .seconds(300)) -> Machine {
        var machine = machine(maximum: maximum, perConnection: perConnection, idle: idle)
        for (lease, name) in names.enumerated() {
            // Fill the connections open so far, so that the pool opens another.
            var fillers: [Int] = []
            for index in 0..<lease {
                for slot in 0..<perConnection { fillers.append(1000 + 100 * index + slot) }
            }
            for filler in fillers { _ = machine.leaseRequested(filler, load: 1, now: t0) }
            let asked = machine.leaseRequested(lease, load: 1, now: t0)
            precondition(asked.summary == ["open \(lease)"], "setting up: \(asked.summary)")
            _ = machine.connectionOpened(name, multiConn: multiConn, now: t0)
            for filler in fillers { _ = machine.leaseReleased(filler, retire: false, now: t0) }
            _ = machine.leaseReleased(lease, retire: false, now: t0)
        }
        return machine
    }

    // MARK: - Choice

    @Test("the first lease opens a connection and gets it; the next ones fill it before another opens")
    func fillsTheOldestFirst() {
        var machine = Self.machine()
        #expect(machine.leaseRequested(0, load: 1, now: Self.t0).summary == ["open 0"])
        #expect(machine.connectionOpened("A", multiConn: true, now: Self.t0).summary == ["lease 0 A"])
        #expect(machine.leaseRequested(1, load: 1, now: Self.t0).summary == ["lease 1 A"])
        #expect(machine.leaseRequested(2, load: 1, now: Self.t0).summary == ["open 2"])
        #expect(machine.connectionOpened("B", multiConn: true, now: Self.t0).summary == ["lease 2 B"])
        // A has room again: the oldest with room wins over B, which also has room.
        #expect(machine.leaseReleased(0, retire: false, now: Self.t0).isEmpty)
        #expect(machine.leaseRequested(3, load: 1, now: Self.t0).summary == ["lease 3 A"])
        #expect(machine.leaseRequested(4, load: 1, now: Self.t0).summary == ["lease 4 B"])
        #expect(machine.connectionCount == 2)
    }

    @Test("every connection full and the maximum reached: the least loaded, equals taking turns")
    func spreadsWhenFull() {
        var machine = Self.machine(open: ["A", "B"], maximum: 2, perConnection: 1)
        #expect(machine.leaseRequested(10, load: 1, now: Self.t0).summary == ["lease 10 A"])
        #expect(machine.leaseRequested(11, load: 1, now: Self.t0).summary == ["lease 11 B"])
        // Both carry 1, the limit: no room, no more connections, so least loaded with rotation.
        #expect(machine.leaseRequested(12, load: 1, now: Self.t0).summary == ["lease 12 B"])
        #expect(machine.leaseRequested(13, load: 1, now: Self.t0).summary == ["lease 13 A"])
        #expect(machine.leaseRequested(14, load: 1, now: Self.t0).summary == ["lease 14 B"])
        // A lighter connection wins whatever the rotation says.
        #expect(machine.leaseReleased(10, retire: false, now: Self.t0).isEmpty)
        #expect(machine.leaseReleased(13, retire: false, now: Self.t0).isEmpty)
        #expect(machine.leaseRequested(15, load: 1, now: Self.t0).summary == ["lease 15 A"])
        #expect(machine.leaseRequested(16, load: 1, now: Self.t0).summary == ["lease 16 A"])
    }

    @Test("a streaming lease counts its load: two share a connection, the third opens another")
    func streamingLoad() {
        var machine = Self.machine(perConnection: 32)
        #expect(machine.leaseRequested(0, load: 16, now: Self.t0).summary == ["open 0"])
        #expect(machine.connectionOpened("A", multiConn: true, now: Self.t0).summary == ["lease 0 A"])
        #expect(machine.leaseRequested(1, load: 16, now: Self.t0).summary == ["lease 1 A"])
        #expect(machine.leaseRequested(2, load: 16, now: Self.t0).summary == ["open 2"])
        #expect(machine.connectionOpened("B", multiConn: true, now: Self.t0).summary == ["lease 2 B"])
        // A request of load 1 still fits beside one stream, not beside two.
        #expect(machine.leaseRequested(3, load: 1, now: Self.t0).summary == ["lease 3 B"])
    }

    @Test("without CAN_MULTI_CONN no second connection opens: a full connection takes more")
    func noSecondConnectionWithoutMultiConn() {
        var machine = Self.machine(perConnection: 1)
        #expect(machine.leaseRequested(0, load: 1, now: Self.t0).summary == ["open 0"])
        #expect(machine.connectionOpened("A", multiConn: false, now: Self.t0).summary == ["lease 0 A"])
        #expect(machine.leaseRequested(1, load: 1, now: Self.t0).summary == ["lease 1 A"])
        #expect(machine.leaseRequested(2, load: 16, now: Self.t0).summary == ["lease 2 A"])
        #expect(machine.connectionCount == 1)
    }

    @Test("one connection opens at a time; leases asking meanwhile are parked, then decided in order")
    func oneOpeningAtATime() {
        var machine = Self.machine()
        #expect(machine.leaseRequested(0, load: 1, now: Self.t0).summary == ["open 0"])
        #expect(machine.leaseRequested(1, load: 1, now: Self.t0).summary == ["park 1"])
        #expect(machine.leaseRequested(2, load: 1, now: Self.t0).summary == ["park 2"])
        #expect(machine.leaseRequested(3, load: 1, now: Self.t0).summary == ["park 3"])
        #expect(machine.queue.count == 4)
        // A takes two; lease 2 must open the next one; lease 3 waits for it.
        #expect(machine.connectionOpened("A", multiConn: true, now: Self.t0).summary == ["lease 0 A", "lease 1 A", "open 2"])
        #expect(machine.leaseRequested(4, load: 1, now: Self.t0).summary == ["park 4"])
        #expect(machine.connectionOpened("B", multiConn: true, now: Self.t0).summary == ["lease 2 B", "lease 3 B", "open 4"])
        #expect(machine.connectionOpened("C", multiConn: true, now: Self.t0).summary == ["lease 4 C"])
        #expect(machine.queue.isEmpty)
    }

    @Test("a lease that fits on an open connection is not held behind parked ones")
    func roomBeatsTheQueue() {
        var machine = Self.machine(open: ["A"], perConnection: 4)
        #expect(machine.leaseRequested(10, load: 4, now: Self.t0).summary == ["lease 10 A"])
        #expect(machine.leaseRequested(11, load: 2, now: Self.t0).summary == ["open 11"])
        #expect(machine.leaseReleased(10, retire: false, now: Self.t0).isEmpty)
        #expect(machine.leaseRequested(12, load: 1, now: Self.t0).summary == ["lease 12 A"])
    }

    // MARK: - Backoff

    @Test("connect failures back off 50 ms, doubling, capped at 5 s; with nothing open a lease fails with the last error")
    func backoffSchedule() {
        var machine = Self.machine()
        var now = Self.t0
        var lease = 0
        let expected: [Duration] = [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000].map { .milliseconds($0) }
        for (attempt, delay) in expected.enumerated() {
            #expect(machine.leaseRequested(lease, load: 1, now: now).summary == ["open \(lease)"])
            let error = NBDError(.connectionFailed, "attempt \(attempt)", exportName: "disk")
            #expect(machine.connectFailed(error, now: now).summary == ["fail \(lease) connection_failed attempt \(attempt)"])
            #expect(machine.retryAt == now + delay)
            // Until the delay is over, leases fail at once with that error.
            lease += 1
            #expect(machine.leaseRequested(lease, load: 1, now: now + delay - .nanoseconds(1)).summary == ["fail \(lease) connection_failed attempt \(attempt)"])
            lease += 1
            now = now + delay
        }
        // A success resets the schedule.
        #expect(machine.leaseRequested(lease, load: 1, now: now).summary == ["open \(lease)"])
        #expect(machine.connectionOpened("A", multiConn: true, now: now).summary == ["lease \(lease) A"])
        #expect(machine.retryAt == nil)
        #expect(machine.leaseRequested(lease + 1, load: 1, now: now).summary == ["lease \(lease + 1) A"])
        #expect(machine.leaseRequested(lease + 2, load: 1, now: now).summary == ["open \(lease + 2)"])
        _ = machine.connectFailed(Self.refused, now: now)
        #expect(machine.retryAt == now + .milliseconds(50))
    }

    @Test("a connect failure with connections open: the parked leases and new ones fall back to them")
    func backoffFallsBackToOpenConnections() {
        var machine = Self.machine(open: ["A"], perConnection: 1)
        #expect(machine.leaseRequested(10, load: 1, now: Self.t0).summary == ["lease 10 A"])
        #expect(machine.leaseRequested(11, load: 1, now: Self.t0).summary == ["open 11"])
        #expect(machine.leaseRequested(12, load: 1, now: Self.t0).summary == ["park 12"])
        #expect(machine.connectFailed(Self.refused, now: Self.t0).summary == ["lease 11 A", "lease 12 A"])
        // Backing off: no attempt, the open connection takes it.
        #expect(machine.leaseRequested(13, load: 1, now: Self.at(.milliseconds(49))).summary == ["lease 13 A"])
        // Once the delay is over, the next lease tries again.
        #expect(machine.leaseRequested(14, load: 1, now: Self.at(.milliseconds(50))).summary == ["open 14"])
    }

    @Test("a connect failure with nothing open fails every parked lease with that error")
    func backoffFailsParkedLeases() {
        var machine = Self.machine()
        #expect(machine.leaseRequested(0, load: 1, now: Self.t0).summary == ["open 0"])
        #expect(machine.leaseRequested(1, load: 1, now: Self.t0).summary == ["park 1"])
        #expect(machine.connectFailed(Self.refused, now: Self.t0).summary == [
            "fail 0 connection_failed connection refused", "fail 1 connection_failed connection refused",
        ])
        #expect(machine.queue.isEmpty)
    }

    // MARK: - Retiring, losing, idling

    @Test("ESHUTDOWN retires every connection: no new leases, each closed once unused")
    func retiresOnShutdownError() {
        var machine = Self.machine(open: ["A", "B"])
        #expect(machine.leaseRequested(10, load: 1, now: Self.t0).summary == ["lease 10 A"])
        #expect(machine.leaseRequested(11, load: 1, now: Self.t0).summary == ["lease 11 A"])
        // B is unused: closed at once; A still carries lease 11.
        #expect(machine.leaseReleased(10, retire: true, now: Self.t0).summary == ["close B retired"])
        // Retired connections take no lease: a new one is opened.
        #expect(machine.leaseRequested(12, load: 1, now: Self.t0).summary == ["open 12"])
        #expect(machine.leaseReleased(11, retire: false, now: Self.t0).summary == ["close A retired"])
        #expect(machine.connectionOpened("C", multiConn: true, now: Self.t0).summary == ["lease 12 C"])
        #expect(machine.connectionCount == 1)
    }

    @Test("a broken connection takes no lease and is closed once unused")
    func lostConnection() {
        var machine = Self.machine(open: ["A"])
        #expect(machine.leaseRequested(10, load: 1, now: Self.t0).summary == ["lease 10 A"])
        #expect(machine.connectionLost(0).isEmpty)
        #expect(machine.leaseRequested(11, load: 1, now: Self.t0).summary == ["open 11"])
        #expect(machine.leaseReleased(10, retire: false, now: Self.t0).summary == ["close A lost"])
        #expect(machine.connectionOpened("B", multiConn: true, now: Self.t0).summary == ["lease 11 B"])
        #expect(machine.connectionLost(0).isEmpty)  // Gone already.
    }

    @Test("a connection is closed by the idle tick at exactly idleTimeout after its last use, not before")
    func idleClosing() {
        var machine = Self.machine(open: ["A", "B"], idle: .seconds(10))
        #expect(machine.leaseRequested(10, load: 1, now: Self.at(.seconds(1))).summary == ["lease 10 A"])
        #expect(machine.leaseReleased(10, retire: false, now: Self.at(.seconds(2))).isEmpty)
        #expect(machine.leaseRequested(11, load: 1, now: Self.at(.seconds(3))).summary == ["lease 11 A"])
        #expect(machine.nextIdleDeadline == Self.at(.seconds(10)))  // B, unused since t0.
        #expect(machine.idleTick(now: Self.at(.seconds(10)) - .nanoseconds(1)).isEmpty)
        #expect(machine.idleTick(now: Self.at(.seconds(10))).summary == ["close B idle"])
        // A is in use: never idle, however long.
        #expect(machine.idleTick(now: Self.at(.seconds(100))).isEmpty)
        #expect(machine.leaseReleased(11, retire: false, now: Self.at(.seconds(100))).isEmpty)
        #expect(machine.nextIdleDeadline == Self.at(.seconds(110)))
        #expect(machine.idleTick(now: Self.at(.seconds(110)) - .nanoseconds(1)).isEmpty)
        #expect(machine.idleTick(now: Self.at(.seconds(110))).summary == ["close A idle"])
        #expect(machine.connectionCount == 0)
        #expect(machine.nextIdleDeadline == nil)
    }

    @Test("unused connections report their last use; closeUnused closes exactly those used before the cutoff, never one in use")
    func closeUnusedBeforeCutoff() {
        var machine = Self.machine(open: ["A", "B", "C"])
        #expect(machine.leaseRequested(10, load: 1, now: Self.at(.seconds(5))).summary == ["lease 10 A"])
        #expect(machine.leaseRequested(11, load: 1, now: Self.at(.seconds(6))).summary == ["lease 11 A"])
        #expect(machine.leaseRequested(12, load: 1, now: Self.at(.seconds(7))).summary == ["lease 12 B"])
        #expect(machine.leaseReleased(12, retire: false, now: Self.at(.seconds(8))).isEmpty)
        // A is in use; B was last used at 8 s, C at t0.
        #expect(machine.unusedSince == [Self.at(.seconds(8)), Self.t0])
        #expect(machine.closeUnused(usedBefore: Self.t0).isEmpty)
        #expect(machine.closeUnused(usedBefore: Self.at(.seconds(8))).summary == ["close C idle"])
        #expect(machine.closeUnused(usedBefore: Self.at(.seconds(100))).summary == ["close B idle"])
        #expect(machine.unusedSince.isEmpty)
        #expect(machine.connectionCount == 1)
        #expect(machine.leaseRequested(13, load: 1, now: Self.at(.seconds(101))).summary == ["open 13"])
    }

    // MARK: - Shutdown and cancellation

    @Test("shutdown fails parked leases, closes every connection, and closes one that comes up later")
    func shutdown() {
        var machine = Self.machine(open: ["A"], perConnection: 1)
        #expect(machine.leaseRequested(10, load: 1, now: Self.t0).summary == ["lease 10 A"])
        #expect(machine.leaseRequested(11, load: 1, now: Self.t0).summary == ["open 11"])
        #expect(machine.leaseRequested(12, load: 1, now: Self.t0).summary == ["park 12"])
        #expect(machine.shutdown().summary == [
            "fail 11 disconnected the gateway is shutting down", "fail 12 disconnected the gateway is shutting down", "close A shutdown",
        ])
        #expect(machine.connectionOpened("B", multiConn: true, now: Self.t0).summary == ["close B shutdown"])
        #expect(machine.leaseRequested(13, load: 1, now: Self.t0).summary == ["fail 13 disconnected the gateway is shutting down"])
        // The lease that held A returns it: it was closed already.
        #expect(machine.leaseReleased(10, retire: false, now: Self.t0).isEmpty)
        #expect(machine.shutdown().isEmpty)
        #expect(machine.connectionCount == 0)
    }

    @Test("a cancelled parked lease leaves the queue; a granted one is not affected")
    func cancelledLeaseLeavesTheQueue() {
        var machine = Self.machine()
        #expect(machine.leaseRequested(0, load: 1, now: Self.t0).summary == ["open 0"])
        #expect(machine.leaseRequested(1, load: 1, now: Self.t0).summary == ["park 1"])
        #expect(machine.leaseRequested(2, load: 1, now: Self.t0).summary == ["park 2"])
        #expect(machine.leaseCancelled(1).summary == ["cancel 1"])
        #expect(machine.queue.leases.map(\.id) == [0, 2])
        #expect(machine.connectionOpened("A", multiConn: true, now: Self.t0).summary == ["lease 0 A", "lease 2 A"])
        #expect(machine.leaseCancelled(2).isEmpty)
        #expect(machine.leaseCancelled(1).isEmpty)
    }

    @Test("the lease told to open is cancelled before connecting: the next parked lease opens instead")
    func abandonedOpen() {
        var machine = Self.machine()
        #expect(machine.leaseRequested(0, load: 1, now: Self.t0).summary == ["open 0"])
        #expect(machine.leaseRequested(1, load: 1, now: Self.t0).summary == ["park 1"])
        #expect(machine.leaseCancelled(0).summary == ["cancel 0"])
        #expect(machine.openAbandoned(now: Self.t0).summary == ["open 1"])
        #expect(machine.retryAt == nil)  // Not a failure.
        #expect(machine.connectionOpened("A", multiConn: true, now: Self.t0).summary == ["lease 1 A"])
    }
}

extension Array where Element == PoolStateMachine<String>.Action {
    /// One line per action, e.g. `lease 3 A`, `fail 4 connection_failed refused`, `close A,B idle`.
    var summary: [String] {
        map { action in
            switch action {
            case .lease(let id, let connection): "lease \(id) \(connection)"
            case .park(let id): "park \(id)"
            case .open(let id): "open \(id)"
            case .fail(let id, let error): "fail \(id) \(error.code.name) \(error.message)"
            case .cancel(let id): "cancel \(id)"
            case .close(let connections, let reason): "close \(connections.joined(separator: ",")) \(reason)"
            }
        }
    }
}
