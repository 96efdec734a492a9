import NBDClient

/// How pools open and keep connections.
public struct PoolSettings: Sendable {
    /// Most connections per export (used only when the export has CAN_MULTI_CONN).
    public var maximumConnections: Int
    /// Requests a connection carries at once before the pool spreads to (or opens) another.
    /// Requests batched on one connection cost the gateway and the server less CPU than the
    /// same requests spread thin: 4 KiB reads at 32 at once took about a fifth less CPU on one
    /// connection than over four. More connections help when one is this busy.
    public var requestsPerConnection: Int
    /// Client settings for every connection (timeouts, in-flight bounds, TLS).
    public var client: NBDClientConfiguration
    /// Connections unused this long are closed.
    public var idleTimeout: Duration
    /// How many unused connections all pools together keep before the idle timeout (nil: all).
    public var idleConnectionCap: IdleConnectionCap?

    /// Settings with the gateway's defaults; counts below one are raised to one.
    public init(
        maximumConnections: Int = 4, requestsPerConnection: Int = 32,
        client: NBDClientConfiguration = NBDClientConfiguration(), idleTimeout: Duration = .seconds(300),
        idleConnectionCap: IdleConnectionCap? = nil
    ) {
        self.maximumConnections = max(1, maximumConnections)
        self.requestsPerConnection = max(1, requestsPerConnection)
        self.client = client
        self.idleTimeout = idleTimeout
        self.idleConnectionCap = idleConnectionCap
    }
}

/// Where a pool reads the time: `ContinuousClock` in production, a clock the test moves by
/// hand in tests. Every event the pool's state machine gets carries this clock's `now`.
public protocol PoolClock: Sendable {
    /// The current instant.
    var now: ContinuousClock.Instant { get }
}

extension ContinuousClock: PoolClock {}
