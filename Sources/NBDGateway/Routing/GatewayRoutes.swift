import Logging
import Metrics
import NBDClient
import NIOCore

/// What the HTTP adapter calls: plain request → response logic, testable without sockets.
public protocol GatewayHTTPHandler: Sendable {
    /// Answers a request that carries no body the gateway reads.
    func respond(to request: GatewayRequest) async -> GatewayResponse
    /// Decides on a PUT before its body is read: refuse it, or stream it into an upload.
    func beginUpload(_ request: GatewayRequest) async -> UploadDecision
    /// The same decision without waiting, when everything it needs is known already; nil otherwise.
    func decideUploadImmediately(_ request: GatewayRequest) -> UploadDecision?
}

/// A PUT's fate, decided from its headers alone.
public enum UploadDecision: Sendable {
    case reject(GatewayResponse)
    case accept(UploadSession, respond: @Sendable (Result<UInt64, UploadFailure>) -> GatewayResponse)
}

/// The gateway's routes over an export catalog (`ExportCatalog` in the gateway; an in-memory
/// one in the tests, which run the routes in process).
public struct GatewayRoutes<Catalog: ExportDirectory>: GatewayHTTPHandler {
    public typealias Settings = GatewayRouteSettings

    let catalog: Catalog
    let settings: Settings
    /// Starts background work tied to a response (streaming bodies, upload writes).
    let spawn: @Sendable (@escaping @Sendable () async -> Void) -> Void
    let logger: Logger
    let metrics = GatewayMetrics()
    /// Failures, logged once per cause and window with a count.
    let failures: FailureLog
    /// Requests admitted to NBD work now (`--max-in-flight`).
    let inFlight = InFlightLimit()
    /// Strong ETags, unique to this run of the gateway.
    let tags = EntityTags()

    public init(catalog: Catalog, settings: Settings, spawn: @escaping @Sendable (@escaping @Sendable () async -> Void) -> Void, logger: Logger) {
        self.catalog = catalog
        self.settings = settings
        self.spawn = spawn
        self.logger = logger
        self.failures = FailureLog(logger: logger)
    }

    /// Writes the counts of failures whose window is over; call it every second or so.
    public func reportRepeatedFailures() {
        failures.tick()
    }

    /// Writes every count of failures not reported yet (at shutdown).
    public func reportAllRepeatedFailures() {
        failures.drain()
    }

    public func respond(to request: GatewayRequest) async -> GatewayResponse {
        let started = ContinuousClock.now
        var response: GatewayResponse
        do {
            response = try await route(request)
        } catch {
            response = error.response(requestID: request.requestID)
        }
        record(request, response, since: started)
        return response
    }

    public func beginUpload(_ request: GatewayRequest) async -> UploadDecision {
        let decision: Result<UploadDecision, GatewayError> = await Result(catching: { () async throws(GatewayError) -> UploadDecision in
            try await uploadDecision(request)
        })
        switch decision {
        case .success(let decision):
            return decision
        case .failure(let error):
            let response = error.response(requestID: request.requestID)
            record(request, response, since: .now)
            return .reject(response)
        }
    }

    private func uploadDecision(_ request: GatewayRequest) async throws(GatewayError) -> UploadDecision {
        guard let route = Route.parse(request.rawPath) else { throw .notFound(request.rawPath) }
        try authorize(request, route)
        guard case .data = route else { throw .methodNotAllowed(request.method, allow: route.allowed) }
        let admitted = try admit(route)
        defer { if admitted { inFlight.release() } }
        return try await beginPut(request, route: route)
    }

    public func decideUploadImmediately(_ request: GatewayRequest) -> UploadDecision? {
        do {
            guard let route = Route.parse(request.rawPath) else { throw GatewayError.notFound(request.rawPath) }
            try authorize(request, route)
            guard case .data = route else { throw GatewayError.methodNotAllowed(request.method, allow: route.allowed) }
            let name = try exportName(route) ?? ""
            let syntax = try putSyntax(request)
            guard let pool = catalog.cachedPool(for: name), let info = pool.cachedInfo else { return nil }
            return try preparePut(request, syntax, pool: pool, info: info, name: name)
        } catch {
            let response = error.response(requestID: request.requestID)
            record(request, response, since: .now)
            return .reject(response)
        }
    }

    private func route(_ request: GatewayRequest) async throws(GatewayError) -> GatewayResponse {
        guard let route = Route.parse(request.rawPath) else { throw .notFound(request.rawPath) }
        // A preflight needs no token: the request it announces will.
        if settings.cors.isPreflight(request) { return settings.cors.preflightResponse(methods: route.allowed) }
        let grant = try authorize(request, route)
        let method = request.method == "HEAD" && route.allowed.contains("GET") ? "HEAD" : request.method
        guard route.allowed.contains(method) else { throw .methodNotAllowed(request.method, allow: route.allowed) }
        let admitted = try admit(route)
        defer { if admitted { inFlight.release() } }
        switch route {
        case .exports: return try await listExports(request, visibleTo: grant)
        case .health: return .json(200, #"{"status":"ok"}"#)
        case .ready: return try await readiness(request)
        case .metrics:
            return GatewayResponse(status: 200, headers: [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")],
                                   body: .bytes(ByteBuffer(string: await settings.metricsText())))
        case .openAPI: return servedContract(request)
        case .page, .asset, .baseRedirect: return try userInterface(request, route: route)
        case .export: return try await metadata(request, route: route)
        case .data:
            switch method {
            case "OPTIONS": return try await dataOptions(request, route: route)
            case "HEAD": return try await head(request, route: route)
            default: return try await get(request, route: route)
            }
        case .extents: return try await extents(request, route: route)
        case .flush: return try await flush(request, route: route)
        case .trim: return try await trim(request, route: route)
        case .zero: return try await zero(request, route: route)
        case .checksum: return try await checksum(request, route: route)
        case .checksumAlgorithms: return try await checksumAlgorithms(request, route: route)
        }
    }

    // MARK: - Shared steps

    /// The export's pool and negotiated info, or the error that says why not.
    func open(_ route: Route) async throws(GatewayError) -> (Catalog.Export, NBDExportInfo, String) {
        let name = try exportName(route) ?? ""
        let pool: Catalog.Export
        do {
            pool = try await catalog.pool(for: name)
        } catch {
            throw GatewayError(error, export: name)
        }
        // Negotiated on a connection that is still open: flags and size are current.
        if let info = pool.liveInfo { return (pool, info, name) }
        do {
            return (pool, try await pool.info(), name)
        } catch let error as NBDError {
            throw GatewayError(error, export: name)
        } catch {
            throw .internalError("\(error)")
        }
    }

    /// Runs NBD work on a pooled connection, turning NBD errors into HTTP ones.
    func withClient<T: Sendable>(
        _ pool: Catalog.Export, _ info: NBDExportInfo, writing: Bool = false, _ body: (Catalog.Export.Device) async throws -> T
    ) async throws(GatewayError) -> T {
        try await answeringNBDErrors(pool, info, writing: writing) { try await pool.withClient(body) }
    }

    /// `withClient` for a read, retried after transient failures (see `NBDReadRetry`).
    func withReadRetries<T: Sendable>(
        _ pool: Catalog.Export, _ info: NBDExportInfo, _ body: (Catalog.Export.Device) async throws -> T
    ) async throws(GatewayError) -> T {
        try await answeringNBDErrors(pool, info) {
            try await NBDReadRetry(attempts: settings.readRetries).run(progress: { 0 }) { try await pool.withClient(body) }
        }
    }

    /// Runs `work`, turning the NBD errors it throws into HTTP ones (`NBDErrorTable`).
    func answeringNBDErrors<T>(
        _ pool: Catalog.Export, _ info: NBDExportInfo, writing: Bool = false, _ work: () async throws -> T
    ) async throws(GatewayError) -> T {
        do {
            return try await work()
        } catch let error as NBDError {
            throw GatewayError(error, export: pool.name, exportSize: info.size, writing: writing)
        } catch let error as GatewayError {
            throw error
        } catch {
            throw .internalError("\(error)")
        }
    }

    /// The export name of `route`, decoded; a 400 when it is malformed.
    func exportName(_ route: Route) throws(GatewayError) -> String? {
        do {
            return try route.decodedExportName()
        } catch {
            throw .badRequest(error.message)
        }
    }

    /// The export's current ETag.
    func etag(_ pool: Catalog.Export, _ name: String) -> String {
        tags.tag(identity: pool.tagIdentity, generation: pool.version.current)
    }

    /// Admits a write, zero or trim: with `If-Match`, only if it names the current tag and no
    /// other change is running (412 otherwise); the check, the generation step and the count of
    /// running changes are one operation.
    func admitChange(_ request: GatewayRequest, _ pool: Catalog.Export, _ name: String) throws(GatewayError) -> RunningChange {
        let condition = request.header("If-Match")
        if condition == nil || EntityTags.list(condition ?? "", contains: "*"), let change = pool.version.beginChange() {
            return change
        }
        let current = pool.version.current
        if let condition, EntityTags.list(condition, contains: tags.tag(identity: pool.tagIdentity, generation: current)) {
            if let change = pool.version.beginChange(from: current) { return change }
            throw .preconditionFailed("If-Match \(condition): another change to the export is running", export: name)
        }
        throw .preconditionFailed("If-Match \(condition ?? "") does not name the current ETag \(etag(pool, name))", export: name)
    }

    func requireWritable(_ info: NBDExportInfo, _ name: String) throws(GatewayError) {
        if settings.readOnly || info.isReadOnly { throw .readOnly(name) }
    }

    /// Parses a 0/1 flag.
    func flag(_ request: GatewayRequest, _ name: String) throws(GatewayError) -> Bool {
        switch request.queryValue(name) {
        case nil, "0": return false
        case "1": return true
        case let value?: throw .badRequest("query parameter \(name) must be 0 or 1, not \"\(value)\"")
        }
    }

    /// Parses a non-negative integer query parameter.
    func number(_ request: GatewayRequest, _ name: String) throws(GatewayError) -> UInt64? {
        guard let text = request.queryValue(name) else { return nil }
        guard let value = ByteRanges.decimal(Substring(text)) else {
            throw .invalidRange("query parameter \(name) must be a non-negative integer below 2^63, not \"\(text)\"")
        }
        return value
    }

    func record(_ request: GatewayRequest, _ response: GatewayResponse, since started: ContinuousClock.Instant) {
        metrics.requests(method: request.method, status: response.status).increment()
        metrics.duration(method: request.method).recordInterval(since: started)
        if response.status >= 500 {
            failures.failed(request, status: response.status, export: Route.parse(request.rawPath).flatMap { try? $0.decodedExportName() })
        }
    }
}

extension Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }
}

extension Error {
    /// Any error as the contract's JSON error answer.
    func response(requestID: String) -> GatewayResponse {
        if let error = self as? GatewayError { return error.response(requestID: requestID) }
        if let error = self as? NBDError { return GatewayError(error, export: nil).response(requestID: requestID) }
        return GatewayError.internalError("\(self)").response(requestID: requestID)
    }
}

extension Result {
    /// The outcome of an async throwing body, as a value. `beginUpload` goes through this
    /// rather than a do/catch around typed-throws calls, which crashes the Swift 6.3 optimiser
    /// (signal 11 while splitting the coroutine) in release builds.
    init(catching body: () async throws(Failure) -> Success) async {
        do {
            self = .success(try await body())
        } catch {
            self = .failure(error)
        }
    }
}

/// What the routes serve besides the exports, and how they move bytes.
public struct GatewayRouteSettings: Sendable {
    /// Refuse every write, whatever the exports allow.
    public var readOnly: Bool
    /// The contract served at /openapi.yaml.
    public var openAPIDocument: String
    /// The Prometheus text served at /metrics.
    public var metricsText: @Sendable () async -> String
    /// Size of each NBD read while streaming a GET. Four are in flight and four more may
    /// wait for the HTTP client: small enough that the connection's pooled receive buffers
    /// (`NBDClientConfiguration.receiveBufferPoolSize`) cover them all and are reused.
    public var readChunkSize: Int
    /// Size of each NBD write of a PUT (chunks are cut at multiples of it).
    public var writeChunkSize: Int
    /// Attempts after a read fails with a transient error (EIO, a lost connection, a timeout).
    public var readRetries: Int
    /// Largest PUT body accepted (413 above it, before the body when its length is declared).
    public var maximumBodySize: UInt64?
    /// The tokens of `--auth-file`; nil serves everyone.
    public var access: AccessControl?
    /// Most requests waiting for NBD work at once (503 past it); nil is unbounded.
    public var maximumInFlight: Int?
    /// `--base-path` ("" or "/prefix"): named in the served contract's `servers`.
    public var basePath: String
    /// `--cors-origin`: preflights are answered for these origins.
    public var cors: CORSPolicy
    /// Serve the disk browser at `/` (`--no-ui` turns it off).
    public var userInterface: Bool

    public init(
        readOnly: Bool = false, openAPIDocument: String = "", metricsText: @escaping @Sendable () async -> String = { "" },
        readChunkSize: Int = 256 << 10, writeChunkSize: Int = 1 << 20, readRetries: Int = 3, maximumBodySize: UInt64? = nil,
        access: AccessControl? = nil, maximumInFlight: Int? = nil, basePath: String = "",
        cors: CORSPolicy = CORSPolicy(), userInterface: Bool = true
    ) {
        self.cors = cors
        self.userInterface = userInterface
        self.basePath = basePath
        self.access = access
        self.maximumInFlight = maximumInFlight
        self.readOnly = readOnly
        self.openAPIDocument = openAPIDocument
        self.metricsText = metricsText
        self.readChunkSize = readChunkSize
        self.writeChunkSize = writeChunkSize
        self.readRetries = readRetries
        self.maximumBodySize = maximumBodySize
    }
}
