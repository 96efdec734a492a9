import ArgumentParser
import Logging
import Metrics
import NBDClient
import NBDGateway
import NIOCore
import Prometheus
import ServiceLifecycle

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nbd-gateway",
        abstract: "Serve NBD exports over HTTP (GET/PUT with byte ranges, JSON metadata and errors).",
        discussion: """
        Every option can also be set with an environment variable: NBD_GATEWAY_HOST, NBD_GATEWAY_PORT,
        NBD_GATEWAY_BACKEND and NBD_GATEWAY_EXPORT (several separated by spaces), NBD_GATEWAY_READ_ONLY=1,
        NBD_GATEWAY_POOL_SIZE, NBD_GATEWAY_REQUESTS_PER_CONNECTION, NBD_GATEWAY_REQUEST_TIMEOUT,
        NBD_GATEWAY_IDLE_TIMEOUT, NBD_GATEWAY_SHUTDOWN_GRACE, NBD_GATEWAY_READ_RETRIES, NBD_GATEWAY_KEEP_ALIVE_TIMEOUT, NBD_GATEWAY_MAX_BODY_SIZE, NBD_GATEWAY_LOG_LEVEL.
        Flags win over the environment. With no backend at all, an nbdkit memory disk is started.
        """
    )

    @Option(help: "Address to listen on (IPv4, IPv6 or localhost).") var host: String?
    @Option(help: "Port to listen on; 0 picks a free one.") var port: Int?
    @Option(name: .customLong("backend"), help: "NBD server whose listed exports are all served (repeatable).") var backends: [String] = []
    @Option(name: .customLong("export"), help: "NAME=URI: serve one NBD export under NAME (repeatable).") var exports: [String] = []
    @Flag(name: .customLong("read-only"), help: "Refuse every write.") var readOnly = false
    @Option(name: .customLong("pool-size"), help: "Most NBD connections per export (used with CAN_MULTI_CONN).") var poolSize: Int?
    @Option(name: .customLong("requests-per-connection"), help: "Requests one pooled connection carries before the pool spreads to another.") var requestsPerConnection: Int?
    @Option(name: .customLong("request-timeout"), help: "Seconds to wait for an NBD reply (504 after).") var requestTimeout: Int?
    @Option(name: .customLong("idle-timeout"), help: "Seconds before an unused NBD connection is closed.") var idleTimeout: Int?
    @Option(name: .customLong("max-body-size"), help: "Largest PUT body in bytes (413 above it; unlimited by default).") var maxBodySize: UInt64?
    @Option(name: .customLong("keep-alive-timeout"), help: "Seconds an idle HTTP keep-alive connection stays open (not the NBD pool's --idle-timeout).") var keepAliveTimeout: Int?
    @Option(name: .customLong("read-retries"), help: "Attempts after a read fails with EIO, a lost connection or a timeout (from the first byte not sent).") var readRetries: Int?
    @Option(name: .customLong("shutdown-grace"), help: "Seconds requests in progress get to finish after SIGTERM/SIGINT (then 503 or a cut body).") var shutdownGrace: Double?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.") var logLevel: String?

    func validate() throws {
        let settings = try resolved()
        if settings.port < 0 || settings.port > 65535 { throw ValidationError("--port must be 0...65535") }
        if settings.poolSize < 1 { throw ValidationError("--pool-size must be at least 1") }
        if settings.requestsPerConnection < 1 { throw ValidationError("--requests-per-connection must be at least 1") }
        if settings.requestTimeout < 1 { throw ValidationError("--request-timeout must be at least 1 second") }
        if settings.idleTimeout < 1 { throw ValidationError("--idle-timeout must be at least 1 second") }
        if settings.keepAliveTimeout < 1 { throw ValidationError("--keep-alive-timeout must be at least 1 second") }
        if settings.readRetries < 0 || settings.readRetries > 100 { throw ValidationError("--read-retries must be 0...100") }
        if !(settings.shutdownGrace >= 0 && settings.shutdownGrace <= 3600) { throw ValidationError("--shutdown-grace must be 0...3600 seconds") }
        for export in settings.exports {
            guard let equals = export.firstIndex(of: "=") else { throw ValidationError("--export takes NAME=URI, not \"\(export)\"") }
            do { _ = try NBDURI(parsing: String(export[export.index(after: equals)...])) } catch { throw ValidationError("\(error)") }
        }
        for backend in settings.backends {
            do { _ = try NBDURI(parsing: backend) } catch { throw ValidationError("\(error)") }
        }
    }

    func run() async throws {
        let settings = try resolved()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = Logger.Level(rawValue: settings.logLevel) ?? .info
            return handler
        }
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let logger = Logger(label: "nbd-gateway")

        var embedded: EmbeddedDisk?
        var backendURIs = try settings.backends.map { try NBDURI(parsing: $0) }
        let exportURIs = try settings.exports.map { entry -> (name: String, uri: NBDURI) in
            let equals = entry.firstIndex(of: "=") ?? entry.endIndex
            return (String(entry[..<equals]), try NBDURI(parsing: String(entry[entry.index(after: equals)...])))
        }
        if backendURIs.isEmpty && exportURIs.isEmpty {
            let disk = try await EmbeddedDisk.start(logger: logger)
            embedded = disk
            backendURIs = [disk.uri]
        }

        var client = NBDClientConfiguration()
        client.requestTimeout = .seconds(Int64(settings.requestTimeout))
        let configuration = GatewayConfiguration(
            http: HTTPServerConfiguration(
                host: settings.host, port: settings.port, connectionTimeout: settings.keepAliveTimeout,
                shutdownGrace: .milliseconds(Int64(settings.shutdownGrace * 1000))
            ),
            exports: exportURIs,
            backends: backendURIs,
            pool: PoolSettings(maximumConnections: settings.poolSize, requestsPerConnection: settings.requestsPerConnection, client: client, idleTimeout: .seconds(settings.idleTimeout)),
            routes: GatewayRouteSettings(
                readOnly: settings.readOnly,
                openAPIDocument: try OpenAPIDocument.load(),
                metricsText: { registry.emitToString() },
                readRetries: settings.readRetries,
                maximumBodySize: settings.maxBodySize
            )
        )
        let host = settings.host.contains(":") ? "[\(settings.host)]" : settings.host
        let isEmbedded = embedded != nil
        let service = GatewayService(configuration: configuration, logger: logger) { port in
            let base = "http://\(host):\(port)"
            print("listening on \(base)")
            if isEmbedded {
                let export = EmbeddedDisk.exportName
                print("serving an embedded 1 GiB nbdkit memory disk as export \"\(export)\"; try:")
                print("  curl -s \(base)/exports")
                print("  curl -s \(base)/exports/\(export)")
                print("  curl -s -X PUT --data-binary 'hello, disk' '\(base)/exports/\(export)/data?offset=0'")
                print("  curl -s -r 0-10 \(base)/exports/\(export)/data")
            }
            StandardOutput.flush()
        }
        let group = ServiceGroup(configuration: .init(services: [service], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        do {
            try await group.run()
        } catch {
            await embedded?.stop()
            throw error
        }
        await embedded?.stop()
    }

    /// Flags, then NBD_GATEWAY_* variables, then defaults.
    struct Settings {
        var host: String
        var port: Int
        var backends: [String]
        var exports: [String]
        var readOnly: Bool
        var poolSize: Int
        var requestsPerConnection: Int
        var requestTimeout: Int
        var idleTimeout: Int
        var shutdownGrace: Double
        var readRetries: Int
        var keepAliveTimeout: Int
        var maxBodySize: UInt64?
        var logLevel: String
    }

    func resolved() throws -> Settings {
        let environment = ProcessEnvironment.values
        func env(_ name: String) -> String? { environment["NBD_GATEWAY_" + name].flatMap { $0.isEmpty ? nil : $0 } }
        func envInt(_ name: String) throws -> Int? {
            guard let text = env(name) else { return nil }
            guard let value = Int(text) else { throw ValidationError("NBD_GATEWAY_\(name) must be an integer, not \"\(text)\"") }
            return value
        }
        func envDouble(_ name: String) throws -> Double? {
            guard let text = env(name) else { return nil }
            guard let value = Double(text) else { throw ValidationError("NBD_GATEWAY_\(name) must be a number, not \"\(text)\"") }
            return value
        }
        return Settings(
            host: host ?? env("HOST") ?? "127.0.0.1",
            port: try port ?? envInt("PORT") ?? 8080,
            backends: backends.isEmpty ? (env("BACKEND")?.split(separator: " ").map(String.init) ?? []) : backends,
            exports: exports.isEmpty ? (env("EXPORT")?.split(separator: " ").map(String.init) ?? []) : exports,
            readOnly: readOnly || ["1", "true", "yes"].contains(env("READ_ONLY")?.lowercased() ?? ""),
            poolSize: try poolSize ?? envInt("POOL_SIZE") ?? 4,
            requestsPerConnection: try requestsPerConnection ?? envInt("REQUESTS_PER_CONNECTION") ?? 32,
            requestTimeout: try requestTimeout ?? envInt("REQUEST_TIMEOUT") ?? 30,
            idleTimeout: try idleTimeout ?? envInt("IDLE_TIMEOUT") ?? 300,
            shutdownGrace: try shutdownGrace ?? envDouble("SHUTDOWN_GRACE") ?? 10,
            readRetries: try readRetries ?? envInt("READ_RETRIES") ?? 3,
            keepAliveTimeout: try keepAliveTimeout ?? envInt("KEEP_ALIVE_TIMEOUT") ?? 120,
            maxBodySize: try maxBodySize ?? envInt("MAX_BODY_SIZE").map { value in
                guard value >= 0 else { throw ValidationError("NBD_GATEWAY_MAX_BODY_SIZE must not be negative") }
                return UInt64(value)
            },
            logLevel: logLevel ?? env("LOG_LEVEL") ?? "info"
        )
    }
}
