#if canImport(Glibc)
import Glibc
#endif
import Logging
import Synchronization

/// Suspending and resuming a libmicrohttpd connection (given as the address of its
/// `MHD_Connection`), as the adapter performs them: the only calls into the library here.
struct ConnectionControl: Sendable {
    let suspend: @Sendable (Int) -> Void
    let resume: @Sendable (Int) -> Void
}

/// A PUT accepted into an upload, with how its outcome becomes the answer.
struct AcceptedUpload: Sendable {
    let session: UploadSession
    let respond: @Sendable (Result<UInt64, UploadFailure>) -> GatewayResponse
}

/// One HTTP request: its state machine behind one lock, and the connection it suspends and
/// resumes. Touched by the libmicrohttpd thread and by jobs.
final class RequestContext: Sendable {
    typealias Machine = HTTPRequestStateMachine<GatewayResponse, AcceptedUpload>

    private struct Locked {
        var machine = Machine()
        var stream: ResponseBodyStream?
    }

    let request: GatewayRequest
    /// The `MHD_Connection *` as an address; valid until the request completes.
    let connection: Int
    private let locked = Mutex(Locked())
    private let core: ServerCore
    /// For the access log: who asked, for what path as sent, when, and what went each way.
    let client: String
    let path: String
    private let startedAt = WallClock.now
    private let started = ContinuousClock.now
    private let statusCode = Atomic<Int>(0)
    private let bytesIn = Atomic<UInt64>(0)
    private let bytesOut = Atomic<UInt64>(0)
    /// The block its streamed response took from `ServerCore.responseBlocks` (0: none).
    private let responseBlock = Atomic<Int>(0)

    init(request: GatewayRequest, connection: Int, core: ServerCore, client: String = "", path: String? = nil) {
        self.path = path ?? request.rawPath
        self.request = request
        self.connection = connection
        self.core = core
        self.client = client
    }

    /// The status of the answer queued.
    var status: Int {
        get { statusCode.load(ordering: .relaxed) }
        set { statusCode.store(newValue, ordering: .relaxed) }
    }

    func received(_ count: Int) { bytesIn.add(UInt64(count), ordering: .relaxed) }
    func sent(_ count: Int) { bytesOut.add(UInt64(count), ordering: .relaxed) }

    /// A block size for this request's streamed response, taken from the server's share.
    func takeResponseBlock() -> Int {
        let size = core.responseBlocks.take()
        responseBlock.store(size, ordering: .relaxed)
        return size
    }

    /// Its streamed response is gone (libmicrohttpd freed it, or never made it).
    func giveResponseBlock() {
        let size = responseBlock.exchange(0, ordering: .relaxed)
        if size > 0 { core.responseBlocks.give(size) }
    }

    /// The access-log line of the finished request.
    func accessLogEntry() -> AccessLogEntry {
        let elapsed = ContinuousClock.now - started
        return AccessLogEntry(
            time: startedAt, method: request.method, path: path, status: status,
            bytesIn: bytesIn.load(ordering: .relaxed), bytesOut: bytesOut.load(ordering: .relaxed),
            durationSeconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
            requestID: request.requestID, export: Route.parse(request.rawPath).flatMap { try? $0.decodedExportName() },
            token: AccessControl.fingerprint(of: request), client: client
        )
    }

    /// Makes one transition under the lock. A suspension it asks for is made under the same
    /// lock, so the resume that follows it (made by whoever wins the lock next) cannot overtake
    /// it; a resume is made after the lock (the thread it wakes takes the lock at once).
    @discardableResult
    func transition(_ event: (inout Machine) -> Machine.Action) -> Machine.Action {
        let action = locked.withLock { locked -> Machine.Action in
            let action = event(&locked.machine)
            if action.suspends {
                core.control.suspend(connection)
                core.suspendedConnections.increment()
            }
            return action
        }
        if case .resume = action {
            // The connection is still valid: libmicrohttpd completes no suspended connection,
            // and nothing else resumes it once the machine says it is not suspended.
            core.control.resume(connection)
            core.suspendedConnections.decrement()  // After: the daemon stops only at zero.
        }
        return action
    }

    /// A job's answer.
    func answer(_ response: GatewayResponse) { transition { $0.answerReady(response) } }

    /// A body producer or upload must wait (on the libmicrohttpd thread, in a callback).
    func suspend() { transition { $0.suspendWanted() } }

    /// A body producer or upload can go on (any thread).
    func wake() { transition { $0.resumeWanted() } }

    /// The body stream of the queued answer, stopped when the request ends.
    var stream: ResponseBodyStream? {
        get { locked.withLock { $0.stream } }
        set { locked.withLock { $0.stream = newValue } }
    }

    /// The machine's state, for logs.
    var stateDescription: String { locked.withLock { "\($0.machine)" } }

    /// The grace period is over.
    func expire(refusal: GatewayResponse) {
        stream?.cancel()  // First: once resumed, the content reader finds it cancelled and cuts the body.
        transition { $0.shutdown(refusal: refusal) }
    }

    /// libmicrohttpd completed the request.
    func complete() {
        let (wasSuspended, stream) = locked.withLock { ($0.machine.completed(), $0.stream) }
        if wasSuspended { core.suspendedConnections.decrement() }
        stream?.cancel()
    }
}

// MARK: - What the callbacks share

/// What the callbacks reach through their `cls` pointer.
final class ServerCore: Sendable {
    let configuration: HTTPServerConfiguration
    let handler: any GatewayHTTPHandler
    let spawn: @Sendable (@escaping @Sendable () async -> Void) -> Void
    let logger: Logger
    /// libmicrohttpd's suspend and resume, as the adapter performs them.
    let control: ConnectionControl
    /// Requests between their headers and their completion.
    let liveRequests = ActivityCounter()
    /// Connections that must finish a request header by a deadline (`--header-timeout`).
    let headerDeadlines = HeaderDeadlines()
    /// `--max-connections` and `--max-connections-per-client`; nil when neither is set.
    let connectionLimits: ConnectionLimits?
    /// The peer's address is needed (access log, trusted proxies, HTTPS next to a Unix socket).
    let needsPeer: Bool
    /// Connections suspended now; the daemon may stop only at zero.
    let suspendedConnections = ActivityCounter()
    /// The block sizes of streamed responses.
    let responseBlocks = ResponseBlocks()
    private let live = Mutex<[ObjectIdentifier: RequestContext]>([:])
    private let shuttingDown = Atomic<Bool>(false)
    private let requestCounter = Atomic<UInt64>(0)
    private let requestPrefix = String(UInt32.random(in: 0...UInt32.max), radix: 36)

    init(
        configuration: HTTPServerConfiguration, handler: any GatewayHTTPHandler,
        spawn: @escaping @Sendable (@escaping @Sendable () async -> Void) -> Void, logger: Logger, control: ConnectionControl
    ) {
        self.configuration = configuration
        self.handler = handler
        self.spawn = spawn
        self.logger = logger
        self.control = control
        connectionLimits = configuration.maximumConnections == nil && configuration.maximumConnectionsPerClient == nil
            ? nil : ConnectionLimits(maximum: configuration.maximumConnections, maximumPerClient: configuration.maximumConnectionsPerClient)
        needsPeer = configuration.accessLog != nil || !configuration.trustedProxies.networks.isEmpty
            || (configuration.https != nil && configuration.unixSocketPath != nil)
    }

    var isShuttingDown: Bool { shuttingDown.load(ordering: .relaxed) }

    func stopAccepting() { shuttingDown.store(true, ordering: .relaxed) }

    func nextRequestID() -> String {
        "\(requestPrefix)-\(String(requestCounter.add(1, ordering: .relaxed).newValue, radix: 36))"
    }

    func register(_ context: RequestContext) {
        liveRequests.increment()
        live.withLock { $0[ObjectIdentifier(context)] = context }
    }

    func unregister(_ context: RequestContext) {
        live.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(context)) }
        liveRequests.decrement()
    }

    /// The grace period is over: what waits on a job answers 503, streams are cut, and every
    /// suspended connection is resumed.
    func expireGrace() {
        for context in live.withLock({ Array($0.values) }) {
            logger.debug("answering at the end of the grace period", metadata: [
                "request_id": "\(context.request.requestID)", "method": "\(context.request.method)", "path": "\(context.request.rawPath)",
                "state": "\(context.stateDescription)",
            ])
            context.expire(refusal: GatewayError.unavailable("the gateway is shutting down").response(requestID: context.request.requestID))
        }
    }
}

/// Seconds since the epoch (for log timestamps; durations use ContinuousClock).
enum WallClock {
    static var now: Double {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }
}
