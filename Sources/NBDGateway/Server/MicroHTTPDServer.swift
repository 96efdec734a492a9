// The one adapter between libmicrohttpd and the gateway: C callbacks in, GatewayRequest /
// GatewayResponse out. No thread of the Swift cooperative pool is ever blocked: a request
// whose answer needs async work suspends its connection (MHD_suspend_connection), the work
// runs as a job, and the job resumes the connection (MHD_resume_connection) when done.
private import CMicroHTTPD
import Logging
import NIOCore
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Settings of the HTTP listener.
public struct HTTPServerConfiguration: Sendable {
    public var host: String
    /// 0 binds a free port (read it back from `MicroHTTPDServer.port`).
    public var port: Int
    /// Threads answering HTTP (each with its own epoll); 1 is one internal thread.
    public var threads: Int
    /// Per-connection memory (headers, upload chunks up to half of it). libmicrohttpd 0.9.75
    /// zeroes all of it after every request, so small is fast for small requests.
    public var connectionMemoryLimit: Int
    /// Seconds an idle keep-alive connection stays open.
    public var connectionTimeout: Int
    /// Largest request header section accepted (answered 431 above it).
    public var maximumHeaderBytes: Int

    public init(host: String = "127.0.0.1", port: Int = 8080, threads: Int = 2, connectionMemoryLimit: Int = 64 << 10, connectionTimeout: Int = 120, maximumHeaderBytes: Int = 16 << 10) {
        self.host = host
        self.port = port
        self.threads = threads
        self.connectionMemoryLimit = connectionMemoryLimit
        self.connectionTimeout = connectionTimeout
        self.maximumHeaderBytes = maximumHeaderBytes
    }
}

/// libmicrohttpd serving a `GatewayHTTPHandler`.
public final class MicroHTTPDServer: Sendable {
    private let core: ServerCore
    /// The `MHD_Daemon *`, as an address (a pointer is not Sendable; the daemon is thread-safe).
    private let daemonAddress: Int
    /// The port actually bound.
    public let port: Int

    public init(
        configuration: HTTPServerConfiguration,
        handler: any GatewayHTTPHandler,
        spawn: @escaping @Sendable (@escaping @Sendable () async -> Void) -> Void,
        logger: Logger
    ) throws {
        let core = ServerCore(configuration: configuration, handler: handler, spawn: spawn, logger: logger)
        self.core = core
        guard let address = SocketAddressStorage(host: configuration.host, port: configuration.port) else {
            throw GatewayStartError("cannot bind to host \"\(configuration.host)\": use an IPv4 or IPv6 address, or localhost")
        }
        var flags = MHD_FLAG(rawValue: MHD_USE_EPOLL_INTERNAL_THREAD.rawValue | MHD_ALLOW_SUSPEND_RESUME.rawValue | MHD_USE_ERROR_LOG.rawValue)
        if address.isIPv6 { flags = MHD_FLAG(rawValue: flags.rawValue | MHD_USE_IPv6.rawValue) }
        let daemon: OpaquePointer? = address.withSockaddr { sockaddr in
            var options: [MHD_OptionItem] = [
                shim_option_pointer(.SOCK_ADDR, 0, sockaddr.map { UnsafeMutableRawPointer(mutating: $0) }),
                shim_option_value(.CONNECTION_MEMORY_LIMIT, configuration.connectionMemoryLimit),
                shim_option_value(.CONNECTION_TIMEOUT, configuration.connectionTimeout),
                shim_option_completed(requestCompleted, Unmanaged.passUnretained(core).toOpaque()),
                shim_option_keep_escapes(),
            ]
            if configuration.threads > 1 {
                options.append(shim_option_value(.THREAD_POOL_SIZE, configuration.threads))
            }
            options.append(shim_option_end())
            return options.withUnsafeMutableBufferPointer { items in
                shim_MHD_start_daemon(flags.rawValue, UInt16(configuration.port), accessHandler, Unmanaged.passUnretained(core).toOpaque(), items.baseAddress)
            }
        }
        guard let daemon else {
            throw GatewayStartError("cannot listen on \(configuration.host):\(configuration.port) (in use, or not an address of this machine)")
        }
        daemonAddress = Int(bitPattern: UnsafeMutableRawPointer(daemon))
        port = Int(shim_MHD_bound_port(daemon))
    }

    /// Stops serving: refuses new requests, lets those in progress finish (bounded), then
    /// answers what is still suspended with 503, waits (bounded) for it to be resumed, and
    /// stops the daemon (which libmicrohttpd forbids while any connection is suspended).
    public func shutdown(grace: Duration = .seconds(10)) async {
        // New requests get 503 from now on; those in progress have `grace` to finish.
        core.stopAccepting()
        let deadline = ContinuousClock.now + grace
        while core.liveCount > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        core.beginShutdown()
        for _ in 0..<500 where core.suspendedCount > 0 {
            try? await Task.sleep(for: .milliseconds(10))
        }
        guard let daemon = UnsafeMutableRawPointer(bitPattern: daemonAddress) else { return }
        MHD_stop_daemon(OpaquePointer(daemon))
    }
}

public struct GatewayStartError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

// MARK: - Per-request state

/// One HTTP request's progress. Touched by the libmicrohttpd thread and by jobs; every
/// mutable field lives in the mutex.
final class RequestContext: Sendable {
    enum Phase {
        /// Headers are in; the answer starts on the call after the body (suspending on the
        /// first call would make libmicrohttpd 0.9.75 close the connection afterwards).
        case starting
        /// A job is deciding (connection suspended).
        case deciding
        /// An answer is ready to queue.
        case respond(GatewayResponse)
        /// A PUT was accepted; its body has not arrived yet.
        case accepted(UploadSession, @Sendable (Result<UInt64, GatewayError>) -> GatewayResponse)
        /// A PUT body is streaming into its upload.
        case uploading(UploadSession, @Sendable (Result<UInt64, GatewayError>) -> GatewayResponse)
        /// The upload is finishing (connection suspended).
        case finishing
        /// The answer was queued.
        case queued
    }

    private struct State {
        var phase: Phase = .deciding
        var suspended = false
        var completed = false
        var stream: ResponseBodyStream?
    }

    let request: GatewayRequest
    /// The `MHD_Connection *` as an address; valid until `completed`.
    private let connectionAddress: Int
    private let state = Mutex(State())
    private let core: ServerCore

    init(request: GatewayRequest, connection: OpaquePointer, core: ServerCore) {
        self.request = request
        self.connectionAddress = Int(bitPattern: UnsafeMutableRawPointer(connection))
        self.core = core
    }

    private var connection: OpaquePointer? {
        UnsafeMutableRawPointer(bitPattern: connectionAddress).map(OpaquePointer.init)
    }

    var phase: Phase {
        get { state.withLock { $0.phase } }
        set { state.withLock { $0.phase = newValue } }
    }

    var stream: ResponseBodyStream? {
        get { state.withLock { $0.stream } }
        set { state.withLock { $0.stream = newValue } }
    }

    var isSuspended: Bool { state.withLock { $0.suspended } }

    /// On the libmicrohttpd thread, inside a callback.
    func suspend() {
        state.withLock { state in
            guard !state.suspended, !state.completed, let connection else { return }
            state.suspended = true
            core.adjustSuspended(by: 1)
            MHD_suspend_connection(connection)
        }
    }

    /// From any thread. Never after the request completed (the connection is gone then).
    func resume() {
        let resuming = state.withLock { state -> OpaquePointer? in
            guard state.suspended, !state.completed, let connection else { return nil }
            state.suspended = false
            return connection
        }
        guard let resuming else { return }
        // Outside the lock: the libmicrohttpd thread this wakes takes the lock at once, and
        // would spin on it meanwhile. The connection stays valid: libmicrohttpd completes no
        // suspended connection, and nothing else resumes it once `suspended` is false.
        MHD_resume_connection(resuming)
        core.adjustSuspended(by: -1)  // After: shutdown stops the daemon only at zero.
    }

    /// Sets the answer unless one was queued already, then resumes.
    func answer(_ response: GatewayResponse) {
        state.withLock { state in
            if case .queued = state.phase { return }
            state.phase = .respond(response)
        }
        resume()
    }

    func complete() {
        let stream = state.withLock { state -> ResponseBodyStream? in
            state.completed = true
            if state.suspended {
                state.suspended = false
                core.adjustSuspended(by: -1)
            }
            return state.stream
        }
        stream?.cancel()
    }
}

/// What the callbacks reach through their `cls` pointer.
final class ServerCore: Sendable {
    let configuration: HTTPServerConfiguration
    let handler: any GatewayHTTPHandler
    let spawn: @Sendable (@escaping @Sendable () async -> Void) -> Void
    let logger: Logger
    private let live = Mutex<[ObjectIdentifier: RequestContext]>([:])
    private let suspended = Atomic<Int>(0)
    private let shuttingDown = Atomic<Bool>(false)
    private let requestCounter = Atomic<UInt64>(0)
    private let requestPrefix = String(UInt32.random(in: 0...UInt32.max), radix: 36)

    init(configuration: HTTPServerConfiguration, handler: any GatewayHTTPHandler, spawn: @escaping @Sendable (@escaping @Sendable () async -> Void) -> Void, logger: Logger) {
        self.configuration = configuration
        self.handler = handler
        self.spawn = spawn
        self.logger = logger
    }

    var suspendedCount: Int { suspended.load(ordering: .relaxed) }
    var isShuttingDown: Bool { shuttingDown.load(ordering: .relaxed) }

    func adjustSuspended(by delta: Int) {
        suspended.add(delta, ordering: .relaxed)
    }

    func nextRequestID() -> String {
        "\(requestPrefix)-\(String(requestCounter.add(1, ordering: .relaxed).newValue, radix: 36))"
    }

    func register(_ context: RequestContext) { live.withLock { $0[ObjectIdentifier(context)] = context } }
    func unregister(_ context: RequestContext) { live.withLock { _ = $0.removeValue(forKey: ObjectIdentifier(context)) } }

    var liveCount: Int { live.withLock { $0.count } }

    func stopAccepting() {
        shuttingDown.store(true, ordering: .relaxed)
    }

    /// Cuts what is still running: streams stop, suspended requests answer 503.
    func beginShutdown() {
        shuttingDown.store(true, ordering: .relaxed)
        let contexts = live.withLock { Array($0.values) }
        for context in contexts {
            context.stream?.cancel()
            if context.isSuspended {
                context.answer(GatewayError.unavailable("the gateway is shutting down").response(requestID: context.request.requestID))
            }
        }
    }
}

// MARK: - Callbacks (non-capturing; they find the server through `cls`)

private let accessHandler: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadDataSize, contextPointer in
    guard let cls, let connection, let url, let method, let uploadDataSize, let contextPointer else { return .NO }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    guard let existing = contextPointer.pointee else {
        let context = firstCall(core, connection, url: String(cString: url), method: String(cString: method))
        contextPointer.pointee = Unmanaged.passRetained(context).toOpaque()
        return .YES
    }
    let context = Unmanaged<RequestContext>.fromOpaque(existing).takeUnretainedValue()
    return nextCall(core, context, connection, uploadData, uploadDataSize)
}

/// Headers are complete: build the request, start the job that answers or decides, suspend.
private func firstCall(_ core: ServerCore, _ connection: OpaquePointer, url: String, method: String) -> RequestContext {
    let collected = HeaderCollector()
    let collector = Unmanaged.passUnretained(collected).toOpaque()
    MHD_get_connection_values(connection, .HEADER_KIND, collectValue, collector)
    let headers = collected.pairs
    let headerBytes = collected.bytes
    let arguments = HeaderCollector()
    MHD_get_connection_values(connection, .GET_ARGUMENT_KIND, collectValue, Unmanaged.passUnretained(arguments).toOpaque())
    let query = arguments.pairs.map { (name: NBDQuery.decode($0.name), value: NBDQuery.decode($0.value)) }
    let rawPath = url.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(url[..<$0]) } ?? url
    var received = GatewayRequest(method: method, rawPath: rawPath, query: query, headers: headers)
    received.requestID = received.header("X-Request-Id").flatMap { NBDQuery.isValidRequestID($0) ? $0 : nil } ?? core.nextRequestID()
    let request = received
    let context = RequestContext(request: request, connection: connection, core: core)
    core.register(context)

    if headerBytes > core.configuration.maximumHeaderBytes {
        refuseNow(GatewayError.headerTooLarge("request headers exceed \(core.configuration.maximumHeaderBytes) bytes"), context, connection, core)
        return context
    }
    if core.isShuttingDown {
        refuseNow(GatewayError.unavailable("the gateway is shutting down"), context, connection, core)
        return context
    }
    let handler = core.handler
    guard method == "PUT" else {
        context.phase = .starting
        return context
    }
    // A PUT is decided before its body: at once when the export is known, else by a job
    // while the connection is suspended.
    if let decision = handler.decideUploadImmediately(request) {
        if case .reject(let response) = decision {
            // Queued now, before libmicrohttpd sends 100 Continue and before any body byte is
            // awaited: a client that withholds its body still gets the answer.
            context.phase = .queued
            _ = queue(refusingBody(response, of: request), for: context, on: connection, core: core)
        } else {
            apply(decision, to: context)
        }
        return context
    }
    context.suspend()
    core.spawn {
        apply(await handler.beginUpload(request), to: context)
        context.resume()
    }
    return context
}

/// A refusal sent before the request's body was read. libmicrohttpd then closes the
/// connection rather than read a body nobody wants (RFC 9112 §9.6 allows it); saying so in
/// `Connection: close` lets the client know not to reuse it.
private func refusingBody(_ response: GatewayResponse, of request: GatewayRequest) -> GatewayResponse {
    let declaresBody = request.header("Transfer-Encoding") != nil || (request.header("Content-Length").map { $0 != "0" } ?? false)
    guard declaresBody else { return response }
    var closing = response
    closing.headers.append(("Connection", "close"))
    return closing
}

/// Answers during the first call, before any body is read.
private func refuseNow(_ error: GatewayError, _ context: RequestContext, _ connection: OpaquePointer, _ core: ServerCore) {
    context.phase = .queued
    _ = queue(refusingBody(error.response(requestID: context.request.requestID), of: context.request), for: context, on: connection, core: core)
}

private func apply(_ decision: UploadDecision, to context: RequestContext) {
    switch decision {
    case .reject(let response):
        // Decided while suspended, before any body byte was read.
        context.phase = .respond(refusingBody(response, of: context.request))
    case .accept(let session, let respond):
        session.setWake { context.resume() }
        context.phase = .accepted(session, respond)
    }
}

private func nextCall(
    _ core: ServerCore, _ context: RequestContext, _ connection: OpaquePointer,
    _ uploadData: UnsafePointer<CChar>?, _ uploadDataSize: UnsafeMutablePointer<Int>
) -> MHD_Result {
    let size = uploadDataSize.pointee
    switch context.phase {
    case .starting:
        if size > 0 {
            uploadDataSize.pointee = 0  // A body this method does not use is discarded.
            return .YES
        }
        if core.isShuttingDown { return refuseDuringShutdown(context, connection, core) }
        context.phase = .deciding
        context.suspend()
        let handler = core.handler
        let request = context.request
        core.spawn { context.answer(await handler.respond(to: request)) }
        return .YES
    case .respond(let response):
        // A body we do not read is discarded; the answer goes out on a call without data.
        if size > 0 {
            uploadDataSize.pointee = 0
            return .YES
        }
        context.phase = .queued
        return queue(response, for: context, on: connection, core: core)
    case .accepted(let session, let respond):
        context.phase = .uploading(session, respond)
        if size == 0 { return .YES }  // Called again before the body (100 Continue goes out now).
        return upload(session, context, uploadData, uploadDataSize)
    case .uploading(let session, let respond):
        if size > 0 { return upload(session, context, uploadData, uploadDataSize) }
        // The body ended: finish the writes in a job, answer when it is done. (During shutdown
        // too: the writes were acknowledged to nobody yet, and the daemon waits for us.)
        context.phase = .finishing
        context.suspend()
        core.spawn { context.answer(respond(await session.finish())) }
        return .YES
    case .deciding, .finishing, .queued:
        uploadDataSize.pointee = 0
        return .YES
    }
}

/// New work is refused once shutdown began: the daemon stops when nothing is suspended.
private func refuseDuringShutdown(_ context: RequestContext, _ connection: OpaquePointer, _ core: ServerCore) -> MHD_Result {
    context.phase = .queued
    return queue(GatewayError.unavailable("the gateway is shutting down").response(requestID: context.request.requestID), for: context, on: connection, core: core)
}

private func upload(_ session: UploadSession, _ context: RequestContext, _ data: UnsafePointer<CChar>?, _ size: UnsafeMutablePointer<Int>) -> MHD_Result {
    if let data {
        session.offer(UnsafeRawBufferPointer(start: data, count: size.pointee)) { context.suspend() }
    }
    size.pointee = 0
    return .YES
}

private func queue(_ response: GatewayResponse, for context: RequestContext, on connection: OpaquePointer, core: ServerCore) -> MHD_Result {
    let isHead = context.request.method == "HEAD"
    let mhdResponse: OpaquePointer?
    var stream: ResponseBodyStream?
    switch response.body {
    case .empty:
        if let length = response.headLength {
            // A HEAD answer: the GET's length, and libmicrohttpd sends no body for HEAD.
            mhdResponse = MHD_create_response_from_callback(length, 4096, noBody, nil, nil)
        } else {
            mhdResponse = MHD_create_response_from_buffer(0, nil, .RESPMEM_PERSISTENT)
        }
    case .bytes(let buffer):
        mhdResponse = buffer.withUnsafeReadableBytes { bytes in
            MHD_create_response_from_buffer(bytes.count, UnsafeMutableRawPointer(mutating: bytes.baseAddress), .RESPMEM_MUST_COPY)
        }
    case .stream(let length, let body):
        if isHead {
            mhdResponse = MHD_create_response_from_callback(length, 4096, noBody, nil, nil)
        } else {
            stream = body
            context.stream = body
            // The response owns a buffer of this size (not from the connection pool): one read
            // chunk per call and per send, and it stays in cache.
            let blockSize = 256 << 10
            mhdResponse = MHD_create_response_from_callback(
                length, blockSize, readBody, Unmanaged.passRetained(context).toOpaque(), releaseContext
            )
        }
    }
    guard let mhdResponse else { return .NO }
    MHD_add_response_header(mhdResponse, "X-Request-Id", context.request.requestID)
    for (name, value) in response.headers {
        MHD_add_response_header(mhdResponse, name, value)
    }
    let result = MHD_queue_response(connection, UInt32(response.status), mhdResponse)
    MHD_destroy_response(mhdResponse)
    if let stream, result == .YES {
        core.spawn { await stream.run(wake: { context.resume() }) }
    }
    return result
}

private let readBody: MHD_ContentReaderCallback = { cls, _, buffer, max in
    guard let cls, let buffer else { return shim_MHD_CONTENT_READER_END_WITH_ERROR }
    let context = Unmanaged<RequestContext>.fromOpaque(cls).takeUnretainedValue()
    guard let stream = context.stream else { return shim_MHD_CONTENT_READER_END_WITH_ERROR }
    switch stream.read(into: UnsafeMutableRawBufferPointer(start: buffer, count: max), suspend: { context.suspend() }) {
    case .bytes(let count): return count
    case .pending: return 0  // Suspended: no busy loop; the producer resumes us.
    case .end: return shim_MHD_CONTENT_READER_END_OF_STREAM
    case .failed: return shim_MHD_CONTENT_READER_END_WITH_ERROR
    }
}

private let noBody: MHD_ContentReaderCallback = { _, _, _, _ in shim_MHD_CONTENT_READER_END_WITH_ERROR }

private let releaseContext: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    Unmanaged<RequestContext>.fromOpaque(cls).release()
}

private let requestCompleted: MHD_RequestCompletedCallback = { cls, _, contextPointer, _ in
    guard let cls, let contextPointer, let pointer = contextPointer.pointee else { return }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    let context = Unmanaged<RequestContext>.fromOpaque(pointer).takeRetainedValue()
    contextPointer.pointee = nil
    context.complete()
    core.unregister(context)
}

/// Gathers header or query pairs from MHD_get_connection_values (on the libmicrohttpd thread only).
private final class HeaderCollector {
    var pairs: [(name: String, value: String)] = []
    var bytes = 0
}

private let collectValue: MHD_KeyValueIterator = { cls, _, key, value in
    guard let cls, let key else { return .YES }
    let collector = Unmanaged<HeaderCollector>.fromOpaque(cls).takeUnretainedValue()
    let name = String(cString: key)
    let text = value.map { String(cString: $0) } ?? ""
    collector.bytes += name.utf8.count + text.utf8.count + 4
    collector.pairs.append((name, text))
    return .YES
}

/// An IPv4 or IPv6 socket address for MHD_OPTION_SOCK_ADDR.
private struct SocketAddressStorage {
    private let storage: sockaddr_storage
    let isIPv6: Bool

    init?(host: String, port: Int) {
        let literal = host == "localhost" ? "127.0.0.1" : host.trimmingCharacters(in: "[]")
        var storage = sockaddr_storage()
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET, literal, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = UInt16(port).bigEndian
            withUnsafeBytes(of: v4) { source in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) } }
            isIPv6 = false
        } else if inet_pton(AF_INET6, literal, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = UInt16(port).bigEndian
            withUnsafeBytes(of: v6) { source in withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: source) } }
            isIPv6 = true
        } else {
            return nil
        }
        self.storage = storage
    }

    func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>?) -> T) -> T {
        withUnsafeBytes(of: storage) { raw in
            body(raw.baseAddress?.assumingMemoryBound(to: sockaddr.self))
        }
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var text = Substring(self)
        while let first = text.first, set.contains(first) { text.removeFirst() }
        while let last = text.last, set.contains(last) { text.removeLast() }
        return String(text)
    }
}
