import Logging
import NBDClient
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// Everything the gateway is configured with.
public struct GatewayConfiguration: Sendable {
    public var http: HTTPServerConfiguration
    /// `--export NAME=URI`.
    public var exports: [(name: String, uri: NBDURI)]
    /// `--backend URI`: every export the server lists.
    public var backends: [NBDURI]
    public var pool: PoolSettings
    public var routes: GatewayRouteSettings

    public init(http: HTTPServerConfiguration, exports: [(name: String, uri: NBDURI)], backends: [NBDURI], pool: PoolSettings, routes: GatewayRouteSettings) {
        self.http = http
        self.exports = exports
        self.backends = backends
        self.pool = pool
        self.routes = routes
    }
}

/// The gateway as a service: runs until graceful shutdown, then answers what is suspended,
/// stops the HTTP daemon and disconnects every pool.
///
/// Work that must outlive a libmicrohttpd callback (answers, body streams, upload writes) runs
/// as jobs of a `JobRunner`, which `run()` waits for before it closes the pools.
public final class GatewayService: Service {
    private let configuration: GatewayConfiguration
    private let logger: Logger
    private let onListening: @Sendable (Int) -> Void
    /// The HTTP server while it runs (for credentials reloads).
    private let server = Mutex<MicroHTTPDServer?>(nil)

    public init(configuration: GatewayConfiguration, logger: Logger, onListening: @escaping @Sendable (Int) -> Void) {
        self.configuration = configuration
        self.logger = logger
        self.onListening = onListening
    }

    public func run() async throws {
        // Every NBD connection and every job share one event loop: a request's handler, its NBD
        // requests and their replies then run on one thread, with no hop per NBD request.
        let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
        var poolSettings = configuration.pool
        poolSettings.client.eventLoopGroup = eventLoop
        let executor = NBDEventLoopExecutor(eventLoop: eventLoop)
        try await withTaskExecutorPreference(executor) {
            try await serve(poolSettings, jobs: JobRunner(executor: executor))
        }
    }

    /// New HTTPS connections get these credentials; those open keep theirs.
    public func reloadCredentials(_ credentials: HTTPSCredentials) throws {
        try server.withLock { $0 }?.reloadCredentials(credentials)
    }

    private func serve(_ poolSettings: PoolSettings, jobs: JobRunner) async throws {
        let spawn: @Sendable (@escaping @Sendable () async -> Void) -> Void = { jobs.spawn($0) }
        let catalog = ExportCatalog(exports: configuration.exports, backends: configuration.backends, settings: poolSettings, logger: logger)
        let routes = GatewayRoutes(catalog: catalog, settings: configuration.routes, spawn: spawn, logger: logger)
        let server = MicroHTTPDServer(configuration: configuration.http, handler: routes, spawn: spawn, logger: logger)
        self.server.withLock { $0 = server }
        defer { self.server.withLock { $0 = nil } }
        let idleTimeout = poolSettings.idleTimeout
        try await withThrowingDiscardingTaskGroup { group in
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: min(idleTimeout / 2, .seconds(30)))
                    await catalog.closeIdle()
                }
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: .seconds(1))
                    routes.reportRepeatedFailures()
                }
            }
            group.addTask {
                // Often enough that many exports read in turn do not pile up unused connections.
                var freed = FreedMemory()
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(250))
                    let closed = if let cap = poolSettings.idleConnectionCap { await catalog.closeIdle(beyond: cap) } else { 0 }
                    let borrowed = poolSettings.client.receiveBufferBudget?.inUse ?? 0
                    if freed.worthTrimming(borrowedNow: borrowed, connectionsClosed: closed) { FreedMemory.trim() }
                }
            }
            // Until graceful shutdown (or cancellation): then drain and stop. Requests that
            // outlive the grace period lose their NBD connections without waiting for replies.
            try await server.run(onListening: onListening, onGraceExpired: { await catalog.abort() })
            group.cancelAll()
        }
        // The daemon has stopped: what still runs are producers told to stop and writes
        // finishing on their connections. The pools close after them.
        await jobs.waitUntilIdle()
        await catalog.close()
        routes.reportAllRepeatedFailures()
        logger.info("stopped")
    }
}
