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
        NBD_GATEWAY_IDLE_TIMEOUT, NBD_GATEWAY_SHUTDOWN_GRACE, NBD_GATEWAY_READ_RETRIES, NBD_GATEWAY_KEEP_ALIVE_TIMEOUT, NBD_GATEWAY_HEADER_TIMEOUT, NBD_GATEWAY_MAX_BODY_SIZE, NBD_GATEWAY_BUFFER_MEMORY, NBD_GATEWAY_LOG_LEVEL,
        NBD_GATEWAY_AUTH_FILE, NBD_GATEWAY_HTTPS_CERT, NBD_GATEWAY_HTTPS_KEY, NBD_GATEWAY_MAX_IN_FLIGHT, NBD_GATEWAY_MAX_CONNECTIONS,
        NBD_GATEWAY_MAX_CONNECTIONS_PER_CLIENT, NBD_GATEWAY_ACCESS_LOG, NBD_GATEWAY_TRUSTED_PROXY (several separated by spaces),
        NBD_GATEWAY_BASE_PATH, NBD_GATEWAY_UNIX_SOCKET, NBD_GATEWAY_NBD_TLS_CA, NBD_GATEWAY_NBD_TLS_CERT, NBD_GATEWAY_NBD_TLS_KEY,
        NBD_GATEWAY_CORS_ORIGIN (several separated by spaces), NBD_GATEWAY_NO_UI=1.
        Flags win over the environment. With no backend at all, an nbdkit memory disk is started.
        With LISTEN_FDS (systemd socket activation) the gateway serves the sockets it is given instead of --host/--port.
        SIGHUP reloads the auth file and the HTTPS certificate and key, and reopens the access log.
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
    @Option(name: .customLong("buffer-memory"), help: "Bytes of NBD receive buffers busy connections share (64 MiB). An unused connection keeps one buffer; those beyond a quarter of this close, the longest unused first.") var bufferMemory: Int?
    @Option(name: .customLong("header-timeout"), help: "Seconds a connection has to send a whole request header, however it drips (30).") var headerTimeout: Int?
    @Option(name: .customLong("keep-alive-timeout"), help: "Seconds an idle HTTP keep-alive connection stays open (not the NBD pool's --idle-timeout).") var keepAliveTimeout: Int?
    @Option(name: .customLong("read-retries"), help: "Attempts after a read fails with EIO, a lost connection or a timeout (from the first byte not sent).") var readRetries: Int?
    @Option(name: .customLong("shutdown-grace"), help: "Seconds requests in progress get to finish after SIGTERM/SIGINT (then 503 or a cut body).") var shutdownGrace: Double?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.") var logLevel: String?
    @Option(name: .customLong("auth-file"), help: "Tokens, one a line: TOKEN ACCESS EXPORTS (ro|rw, names or *); every /exports route then needs one.") var authFile: String?
    @Option(name: .customLong("https-cert"), help: "PEM certificate chain: serve HTTPS (with --https-key).") var httpsCert: String?
    @Option(name: .customLong("https-key"), help: "PEM private key of --https-cert.") var httpsKey: String?
    @Option(name: .customLong("max-in-flight"), help: "Most requests waiting for NBD work at once (503 with Retry-After past it).") var maxInFlight: Int?
    @Option(name: .customLong("max-connections"), help: "Most HTTP connections open at once (more are closed as they are accepted).") var maxConnections: Int?
    @Option(name: .customLong("max-connections-per-client"), help: "Most HTTP connections from one client address (behind a proxy, that is the proxy).") var maxConnectionsPerClient: Int?
    @Option(name: .customLong("access-log"), help: "File for one JSON line per request, or - for standard output.") var accessLog: String?
    @Option(name: .customLong("trusted-proxy"), help: "CIDR of a reverse proxy whose X-Forwarded-* headers are believed (repeatable).") var trustedProxies: [String] = []
    @Option(name: .customLong("base-path"), help: "Path prefix every route lives under (e.g. /nbd).") var basePath: String?
    @Option(name: .customLong("unix-socket"), help: "Also serve plain HTTP on this Unix socket.") var unixSocket: String?
    @Option(name: .customLong("nbd-tls-ca"), help: "PEM CA certificates trusted for nbds:// backends.") var nbdTLSCA: String?
    @Option(name: .customLong("nbd-tls-cert"), help: "PEM client certificate for nbds:// backends.") var nbdTLSCert: String?
    @Option(name: .customLong("nbd-tls-key"), help: "PEM key of --nbd-tls-cert.") var nbdTLSKey: String?
    @Option(name: .customLong("cors-origin"), help: "Web origin (https://host[:port]) whose pages may read answers, or * (repeatable).") var corsOrigins: [String] = []
    @Flag(name: .customLong("no-ui"), help: "Do not serve the disk browser page at /.") var noUI = false

    func validate() throws {
        let settings = try resolved()
        if settings.port < 0 || settings.port > 65535 { throw ValidationError("--port must be 0...65535") }
        if settings.poolSize < 1 { throw ValidationError("--pool-size must be at least 1") }
        if settings.requestsPerConnection < 1 { throw ValidationError("--requests-per-connection must be at least 1") }
        if settings.requestTimeout < 1 { throw ValidationError("--request-timeout must be at least 1 second") }
        if settings.idleTimeout < 1 { throw ValidationError("--idle-timeout must be at least 1 second") }
        if settings.keepAliveTimeout < 1 { throw ValidationError("--keep-alive-timeout must be at least 1 second") }
        if settings.headerTimeout < 1 { throw ValidationError("--header-timeout must be at least 1 second") }
        if settings.readRetries < 0 || settings.readRetries > 100 { throw ValidationError("--read-retries must be 0...100") }
        if !(settings.shutdownGrace >= 0 && settings.shutdownGrace <= 3600) { throw ValidationError("--shutdown-grace must be 0...3600 seconds") }
        if settings.bufferMemory < 0 { throw ValidationError("--buffer-memory must not be negative") }
        for export in settings.exports {
            guard let equals = export.firstIndex(of: "=") else { throw ValidationError("--export takes NAME=URI, not \"\(export)\"") }
            do { _ = try NBDURI(parsing: String(export[export.index(after: equals)...])) } catch { throw ValidationError("\(error)") }
        }
        for backend in settings.backends {
            do { _ = try NBDURI(parsing: backend) } catch { throw ValidationError("\(error)") }
        }
        if let value = settings.maxInFlight, value < 1 { throw ValidationError("--max-in-flight must be at least 1") }
        if let value = settings.maxConnections, value < 1 { throw ValidationError("--max-connections must be at least 1") }
        if let value = settings.maxConnectionsPerClient, value < 1 { throw ValidationError("--max-connections-per-client must be at least 1") }
        if (settings.httpsCert == nil) != (settings.httpsKey == nil) { throw ValidationError("--https-cert and --https-key go together") }
        if (settings.nbdTLSCert == nil) != (settings.nbdTLSKey == nil) { throw ValidationError("--nbd-tls-cert and --nbd-tls-key go together") }
        for proxy in settings.trustedProxies where TrustedProxies.Network(proxy) == nil {
            throw ValidationError("--trusted-proxy takes an address or ADDRESS/BITS, not \"\(proxy)\"")
        }
        for origin in settings.corsOrigins where origin != "*" && !(origin.hasPrefix("http://") || origin.hasPrefix("https://")) || origin.hasSuffix("/") {
            throw ValidationError("--cors-origin takes * or an origin like https://dash.example.org, not \"\(origin)\"")
        }
        let base = settings.basePath
        if !base.isEmpty && (!base.hasPrefix("/") || base.hasSuffix("/") || base.contains("?") || base.contains("#") || base.contains("//")) {
            throw ValidationError("--base-path must start with / and not end with one, like /nbd")
        }
        // Files are read now, so a bad one stops the start with its reason.
        if let path = settings.authFile { _ = try Reloadable.accessFile(path) }
        if let cert = settings.httpsCert, let key = settings.httpsKey { _ = try Reloadable.credentials(certificate: cert, key: key) }
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
        let bufferBudget = NBDReceiveBufferBudget(bytes: settings.bufferMemory)
        client.receiveBufferBudget = bufferBudget
        // Dirty bitmaps and allocation depth, where the export offers them, for /extents?context=.
        client.listedContextPrefixes = ["qemu:dirty-bitmap:", "qemu:allocation-depth"]
        if settings.nbdTLSCA != nil || settings.nbdTLSCert != nil {
            // Used for nbds:// backends only; nbd:// ones stay plain.
            client.tls = NBDTLSConfiguration(caCertificateFile: settings.nbdTLSCA, clientCertificateFile: settings.nbdTLSCert, clientKeyFile: settings.nbdTLSKey)
        }
        var http = HTTPServerConfiguration(
            host: settings.host, port: settings.port, connectionTimeout: settings.keepAliveTimeout,
            shutdownGrace: .milliseconds(Int64(settings.shutdownGrace * 1000))
        )
        http.headerTimeout = settings.headerTimeout
        http.basePath = settings.basePath
        http.unixSocketPath = settings.unixSocket
        http.inheritedSockets = SocketActivation.sockets()
        http.maximumConnections = settings.maxConnections
        http.maximumConnectionsPerClient = settings.maxConnectionsPerClient
        http.trustedProxies = TrustedProxies(settings.trustedProxies.compactMap(TrustedProxies.Network.init))
        if let cert = settings.httpsCert, let key = settings.httpsKey { http.https = try Reloadable.credentials(certificate: cert, key: key) }
        let accessLog = try settings.accessLog.map { path in
            do { return try AccessLog(path: path) } catch { throw ValidationError("\(error)") }
        }
        http.accessLog = accessLog
        http.cors = CORSPolicy(allowedOrigins: settings.corsOrigins)
        let access = try settings.authFile.map { AccessControl(try Reloadable.accessFile($0)) }
        let configuration = GatewayConfiguration(
            http: http,
            exports: exportURIs,
            backends: backendURIs,
            pool: PoolSettings(
                maximumConnections: settings.poolSize, requestsPerConnection: settings.requestsPerConnection, client: client,
                idleTimeout: .seconds(settings.idleTimeout),
                idleConnectionCap: IdleConnectionCap(keep: settings.bufferMemory / 4 / client.receiveBufferSize)
            ),
            routes: GatewayRouteSettings(
                readOnly: settings.readOnly,
                openAPIDocument: try OpenAPIDocument.load(),
                metricsText: {
                    // Sampled when scraped: the bytes busy connections have borrowed right now.
                    Gauge(label: "nbd_gateway_receive_buffer_bytes").record(bufferBudget.inUse)
                    return registry.emitToString()
                },
                readRetries: settings.readRetries,
                maximumBodySize: settings.maxBodySize,
                access: access,
                maximumInFlight: settings.maxInFlight,
                basePath: settings.basePath,
                cors: http.cors,
                userInterface: !settings.noUI
            )
        )
        let host = settings.host.contains(":") ? "[\(settings.host)]" : settings.host
        let isEmbedded = embedded != nil
        let scheme = http.https == nil ? "http" : "https"
        let inherited = http.inheritedSockets.count
        let unixSocket = settings.unixSocket
        let basePath = settings.basePath
        let service = GatewayService(configuration: configuration, logger: logger) { port in
            let base = "\(scheme)://\(host):\(port)\(basePath)"
            if inherited > 0 {
                print("listening on \(inherited) socket\(inherited == 1 ? "" : "s") from systemd (LISTEN_FDS)")
            } else {
                print("listening on \(base)")
            }
            if let unixSocket { print("listening on unix:\(unixSocket)") }
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
        let reloader = Reloader(settings: settings, access: access, accessLog: accessLog, service: service, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [service, reloader], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
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
        var headerTimeout: Int
        var maxBodySize: UInt64?
        var bufferMemory: Int
        var logLevel: String
        var authFile: String?
        var httpsCert: String?
        var httpsKey: String?
        var maxInFlight: Int?
        var maxConnections: Int?
        var maxConnectionsPerClient: Int?
        var accessLog: String?
        var trustedProxies: [String]
        var basePath: String
        var unixSocket: String?
        var nbdTLSCA: String?
        var nbdTLSCert: String?
        var nbdTLSKey: String?
        var corsOrigins: [String]
        var noUI: Bool
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
            headerTimeout: try headerTimeout ?? envInt("HEADER_TIMEOUT") ?? 30,
            maxBodySize: try maxBodySize ?? envInt("MAX_BODY_SIZE").map { value in
                guard value >= 0 else { throw ValidationError("NBD_GATEWAY_MAX_BODY_SIZE must not be negative") }
                return UInt64(value)
            },
            bufferMemory: try bufferMemory ?? envInt("BUFFER_MEMORY") ?? 64 << 20,
            logLevel: logLevel ?? env("LOG_LEVEL") ?? "info",
            authFile: authFile ?? env("AUTH_FILE"),
            httpsCert: httpsCert ?? env("HTTPS_CERT"),
            httpsKey: httpsKey ?? env("HTTPS_KEY"),
            maxInFlight: try maxInFlight ?? envInt("MAX_IN_FLIGHT"),
            maxConnections: try maxConnections ?? envInt("MAX_CONNECTIONS"),
            maxConnectionsPerClient: try maxConnectionsPerClient ?? envInt("MAX_CONNECTIONS_PER_CLIENT"),
            accessLog: accessLog ?? env("ACCESS_LOG"),
            trustedProxies: trustedProxies.isEmpty ? (env("TRUSTED_PROXY")?.split(separator: " ").map(String.init) ?? []) : trustedProxies,
            basePath: basePath ?? env("BASE_PATH") ?? "",
            unixSocket: unixSocket ?? env("UNIX_SOCKET"),
            nbdTLSCA: nbdTLSCA ?? env("NBD_TLS_CA"),
            nbdTLSCert: nbdTLSCert ?? env("NBD_TLS_CERT"),
            nbdTLSKey: nbdTLSKey ?? env("NBD_TLS_KEY"),
            corsOrigins: corsOrigins.isEmpty ? (env("CORS_ORIGIN")?.split(separator: " ").map(String.init) ?? []) : corsOrigins,
            noUI: noUI || ["1", "true", "yes"].contains(env("NO_UI")?.lowercased() ?? "")
        )
    }
}
