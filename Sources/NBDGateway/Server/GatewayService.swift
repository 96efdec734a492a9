import Logging
import NBDClient
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Everything the gateway is configured with.
public struct GatewayConfiguration: Sendable {
    public var http: HTTPServerConfiguration
    /// `--export NAME=URI`.
    public var exports: [(name: String, uri: NBDURI)]
    /// `--backend URI`: every export the server lists.
    public var backends: [NBDURI]
    public var pool: PoolSettings
    public var routes: GatewayRoutes.Settings

    public init(http: HTTPServerConfiguration, exports: [(name: String, uri: NBDURI)], backends: [NBDURI], pool: PoolSettings, routes: GatewayRoutes.Settings) {
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
/// Work that must outlive a libmicrohttpd callback (answers, body streams, upload writes) is
/// queued as jobs and runs as child tasks of `run()`: nothing is fire-and-forget.
public final class GatewayService: Service {
    private let configuration: GatewayConfiguration
    private let logger: Logger
    private let onListening: @Sendable (Int) -> Void

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
        try await withTaskExecutorPreference(NBDEventLoopExecutor(eventLoop: eventLoop)) {
            try await serve(poolSettings)
        }
    }

    private func serve(_ poolSettings: PoolSettings) async throws {
        let (jobs, queue) = AsyncStream.makeStream(of: (@Sendable () async -> Void).self)
        let spawn: @Sendable (@escaping @Sendable () async -> Void) -> Void = { job in queue.yield(job) }
        let catalog = ExportCatalog(exports: configuration.exports, backends: configuration.backends, settings: poolSettings, logger: logger)
        let routes = GatewayRoutes(catalog: catalog, settings: configuration.routes, spawn: spawn, logger: logger)
        let server = try MicroHTTPDServer(configuration: configuration.http, handler: routes, spawn: spawn, logger: logger)
        onListening(server.port)
        let idleTimeout = poolSettings.idleTimeout

        await withDiscardingTaskGroup { group in
            group.addTask {
                // Until graceful shutdown (or cancellation): then drain and stop.
                try? await gracefulShutdown()
                await server.shutdown()
                queue.finish()
            }
            group.addTask {
                while !Task.isCancelled {
                    try? await Task.sleep(for: min(idleTimeout / 2, .seconds(30)))
                    await catalog.closeIdle()
                }
            }
            for await job in jobs {
                group.addTask { await job() }
            }
            group.cancelAll()
        }
        await catalog.close()
        logger.info("stopped")
    }
}
