@testable import NBDGateway
import Testing

/// The process-wide cap on unused NBD connections, and when freed memory is worth handing
/// back: pure decisions on exact instants.
@Suite("IdleConnectionCap and FreedMemory")
struct IdleConnectionCapTests {
    static let t0 = ContinuousClock.now

    static func at(_ seconds: Int) -> ContinuousClock.Instant { t0 + .seconds(seconds) }

    @Test("no more unused connections than kept: nothing closes, however old")
    func withinTheCap() {
        let cap = IdleConnectionCap(keep: 3)
        #expect(cap.cutoff(unusedSince: [Self.at(0), Self.at(1), Self.at(2)], now: Self.at(1000)) == nil)
        #expect(cap.cutoff(unusedSince: [], now: Self.at(1000)) == nil)
    }

    @Test("beyond the cap, the most recently used stay: the cutoff is the oldest kept one's last use")
    func keepsTheMostRecent() {
        let cap = IdleConnectionCap(keep: 2, grace: .seconds(1))
        // Unordered on purpose: the catalog gathers them pool by pool.
        let since = [Self.at(3), Self.at(9), Self.at(1), Self.at(7)]
        #expect(cap.cutoff(unusedSince: since, now: Self.at(20)) == Self.at(7))  // 9 and 7 stay.
    }

    @Test("a connection unused for less than the grace stays, even beyond the cap")
    func graceWins() {
        let cap = IdleConnectionCap(keep: 1, grace: .seconds(1))
        let since = [Self.at(10), Self.at(10), Self.at(5)]
        #expect(cap.cutoff(unusedSince: since, now: Self.at(10) + .milliseconds(500)) == Self.at(9) + .milliseconds(500))
    }

    @Test("keeping none closes every connection once the grace is over; counts below zero keep none")
    func keepNone() {
        #expect(IdleConnectionCap(keep: -4).keep == 0)
        let cap = IdleConnectionCap(keep: 0, grace: .seconds(2))
        #expect(cap.cutoff(unusedSince: [Self.at(1)], now: Self.at(5)) == Self.at(3))
    }

    @Test("a trim waits for quiet (nothing borrowed) after memory was let go, and comes once")
    func trimDecisions() {
        var freed = FreedMemory()
        let steps: [(borrowed: Int, closed: Int)] = [
            (0, 0),  // Quiet from the start: nothing was let go.
            (1 << 20, 0),  // Busy.
            (1 << 19, 0),  // Half given back, but still busy.
            (1 << 20, 2),  // Connections closed while busy: not yet.
            (0, 0),  // Everything given back: now.
            (0, 0),  // Quiet again: once is enough.
            (0, 3),  // Connections closed while quiet.
            (1 << 20, 1),  // Busy again.
            (0, 0),
        ]
        let decisions = steps.map { freed.worthTrimming(borrowedNow: $0.borrowed, connectionsClosed: $0.closed) }
        #expect(decisions == [false, false, false, false, true, false, true, false, true])
    }
}
