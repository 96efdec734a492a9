/// How many unused NBD connections the whole process keeps open, across every export. Each
/// keeps one receive buffer for its next read (NIO holds it), so 200 exports read once would
/// otherwise hold 200 buffers until their idle timeout. The most recently used stay open; the
/// others close once unused for `grace` (a quarter second), and their pools open a fresh one
/// when next asked (a handshake away).
public struct IdleConnectionCap: Sendable, Equatable {
    /// Unused connections kept open at the least.
    public var keep: Int
    /// How long a connection is unused before it may be closed: a stream's pause between
    /// requests does not close it.
    public var grace: Duration

    public init(keep: Int, grace: Duration = .milliseconds(250)) {
        self.keep = max(0, keep)
        self.grace = grace
    }

    /// Given when each unused connection was last used, the instant before which they close;
    /// nil when none does. Ties at the boundary all stay.
    public func cutoff(unusedSince: [ContinuousClock.Instant], now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        guard unusedSince.count > keep else { return nil }
        let settled = now - grace
        guard keep > 0 else { return settled }
        let oldestKept = unusedSince.sorted(by: >)[keep - 1]
        return min(oldestKept, settled)
    }
}
