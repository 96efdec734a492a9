// The one adapter between libmicrohttpd and the gateway: C callbacks in, GatewayRequest /
// GatewayResponse out. Each request's life is an `HTTPRequestStateMachine`; this file only
// performs what its transitions decide. No thread of the Swift cooperative pool ever blocks:
// a request whose answer needs async work suspends its connection (MHD_suspend_connection),
// the work runs as a job, and the job resumes the connection (MHD_resume_connection).
private import CMicroHTTPD
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// libmicrohttpd serving a `GatewayHTTPHandler`, with an explicit lifecycle.
public final class MicroHTTPDServer: Sendable {
    private enum Lifecycle: Sendable {
        /// Created; no daemon yet.
        case idle
        /// Serving; the `MHD_Daemon *` as an address (the daemon is thread-safe).
        case running(daemon: Int)
        /// New requests are refused; those in progress finish, then the daemon stops.
        case draining(daemon: Int)
        /// The daemon has stopped (or never started).
        case stopped
    }

    private let core: ServerCore
    private let lifecycle = Mutex(Lifecycle.idle)

    public init(
        configuration: HTTPServerConfiguration,
        handler: any GatewayHTTPHandler,
        spawn: @escaping @Sendable (@escaping @Sendable () async -> Void) -> Void,
        logger: Logger
    ) {
        core = ServerCore(configuration: configuration, handler: handler, spawn: spawn, logger: logger, control: connectionControl)
    }

    /// Binds and starts the daemon; returns the port bound.
    public func start() throws -> Int {
        let configuration = core.configuration
        let host = configuration.host == "localhost" ? "127.0.0.1" : configuration.host.trimmingBrackets
        let address: SocketAddress
        do {
            address = try SocketAddress(ipAddress: host, port: configuration.port)
        } catch {
            throw GatewayStartError("cannot bind to host \"\(configuration.host)\": use an IPv4 or IPv6 address, or localhost")
        }
        var flags = MHD_USE_EPOLL_INTERNAL_THREAD.rawValue | MHD_ALLOW_SUSPEND_RESUME.rawValue | MHD_USE_ERROR_LOG.rawValue
        if case .v6 = address { flags |= MHD_USE_IPv6.rawValue }
        let cls = Unmanaged.passUnretained(core).toOpaque()
        let daemon: OpaquePointer? = address.withSockAddr { sockaddr, _ in
            var options: [MHD_OptionItem] = [
                shim_option_pointer(.SOCK_ADDR, 0, UnsafeMutableRawPointer(mutating: sockaddr)),
                shim_option_value(.CONNECTION_MEMORY_LIMIT, configuration.connectionMemoryLimit),
                shim_option_value(.CONNECTION_TIMEOUT, configuration.connectionTimeout),
                shim_option_completed(requestCompleted, cls),
                shim_option_keep_escapes(),
            ]
            if configuration.threads > 1 { options.append(shim_option_value(.THREAD_POOL_SIZE, configuration.threads)) }
            options.append(shim_option_end())
            return options.withUnsafeMutableBufferPointer { items in
                shim_MHD_start_daemon(flags, UInt16(configuration.port), accessHandler, cls, items.baseAddress)
            }
        }
        guard let daemon else {
            throw GatewayStartError("cannot listen on \(configuration.host):\(configuration.port) (in use, or not an address of this machine)")
        }
        let started = lifecycle.withLock { state -> Bool in
            guard case .idle = state else { return false }
            state = .running(daemon: Int(bitPattern: UnsafeMutableRawPointer(daemon)))
            return true
        }
        guard started else {
            MHD_stop_daemon(daemon)
            throw GatewayStartError("the server was started twice, or after it stopped")
        }
        return Int(shim_MHD_bound_port(daemon))
    }

    /// Serves until graceful shutdown (or cancellation), then drains and stops.
    /// `onListening` gets the port; `onGraceExpired` runs when requests outlive the grace
    /// period (the gateway closes their NBD connections without waiting for replies).
    public func run(onListening: (Int) -> Void, onGraceExpired: @escaping @Sendable () async -> Void) async throws {
        onListening(try start())
        try? await gracefulShutdown()
        await shutdown(onGraceExpired: onGraceExpired)
    }

    /// Refuses new requests (503), gives those in progress the grace period, then answers what
    /// still waits (503 before the status line, a cut body after it), waits until no
    /// connection is suspended (libmicrohttpd aborts if stopped with one) and stops the daemon.
    public func shutdown(onGraceExpired: @escaping @Sendable () async -> Void = {}) async {
        let daemonAddress = lifecycle.withLock { state -> Int? in
            guard case .running(let daemon) = state else { return nil }
            state = .draining(daemon: daemon)
            return daemon
        }
        guard let daemonAddress else { return }  // Not running, or another shutdown is under way.
        core.stopAccepting()
        if await !core.liveRequests.waitUntilZero(timeout: core.configuration.shutdownGrace) {
            core.logger.warning("shutdown grace period over: answering what still waits", metadata: ["requests": "\(core.liveRequests.count)"])
            core.expireGrace()
            await onGraceExpired()
            // The answers just given go out on libmicrohttpd's threads; a client that vanished
            // without libmicrohttpd noticing would hold this forever, hence the bound.
            _ = await core.liveRequests.waitUntilZero(timeout: .seconds(1))
        }
        await core.suspendedConnections.waitUntilZero()
        // Re-checked after the awaits: only the shutdown that moved to draining stops the daemon.
        let stop = lifecycle.withLock { state -> Bool in
            guard case .draining(let daemon) = state, daemon == daemonAddress else { return false }
            state = .stopped
            return true
        }
        if stop, let daemon = UnsafeMutableRawPointer(bitPattern: daemonAddress) {
            MHD_stop_daemon(OpaquePointer(daemon))
        }
    }
}

public struct GatewayStartError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

extension String {
    /// An IPv6 literal may come as `[::1]`.
    fileprivate var trimmingBrackets: String {
        hasPrefix("[") && hasSuffix("]") ? String(dropFirst().dropLast()) : self
    }
}


// MARK: - Callbacks (non-capturing; they find the server through `cls`)

private func connectionPointer(_ address: Int) -> OpaquePointer? {
    UnsafeMutableRawPointer(bitPattern: address).map(OpaquePointer.init)
}

private let connectionControl = ConnectionControl(
    suspend: { address in connectionPointer(address).map { MHD_suspend_connection($0) } },
    resume: { address in connectionPointer(address).map { MHD_resume_connection($0) } }
)

private let accessHandler: MHD_AccessHandlerCallback = { cls, connection, url, method, _, uploadData, uploadDataSize, contextPointer in
    guard let cls, let connection, let url, let method, let uploadDataSize, let contextPointer else { return .NO }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    guard let existing = contextPointer.pointee else {
        let (context, result) = firstCall(core, connection, url: String(cString: url), method: String(cString: method))
        contextPointer.pointee = Unmanaged.passRetained(context).toOpaque()
        return result
    }
    let context = Unmanaged<RequestContext>.fromOpaque(existing).takeUnretainedValue()
    return nextCall(core, context, connection, uploadData, uploadDataSize)
}

/// Headers are complete: build the request and let the machine decide how it starts.
private func firstCall(_ core: ServerCore, _ connection: OpaquePointer, url: String, method: String) -> (RequestContext, MHD_Result) {
    let collected = HeaderCollector()
    MHD_get_connection_values(connection, .HEADER_KIND, collectValue, Unmanaged.passUnretained(collected).toOpaque())
    let arguments = HeaderCollector()
    MHD_get_connection_values(connection, .GET_ARGUMENT_KIND, collectValue, Unmanaged.passUnretained(arguments).toOpaque())
    let query = arguments.pairs.map { (name: NBDQuery.decode($0.name), value: NBDQuery.decode($0.value)) }
    let target = GatewayRequest.originForm(url)
    let rawPath = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(target[..<$0]) } ?? target
    var received = GatewayRequest(method: method, rawPath: rawPath, query: query, headers: collected.pairs)
    received.requestID = received.header("X-Request-Id").flatMap { NBDQuery.isValidRequestID($0) ? $0 : nil } ?? core.nextRequestID()
    let request = received
    let context = RequestContext(request: request, connection: Int(bitPattern: UnsafeMutableRawPointer(connection)), core: core)
    core.register(context)

    let start: RequestContext.Machine.Start
    if collected.bytes > core.configuration.maximumHeaderBytes {
        start = .refuse(refusingBody(GatewayError.headerTooLarge("request headers exceed \(core.configuration.maximumHeaderBytes) bytes").response(requestID: request.requestID), of: request))
    } else if core.isShuttingDown {
        start = .refuse(refusingBody(GatewayError.unavailable("the gateway is shutting down").response(requestID: request.requestID), of: request))
    } else if method != "PUT" {
        start = .respondLater
    } else if let decision = core.handler.decideUploadImmediately(request) {
        start = verdict(decision, context)  // The export is known: decided now, before any body byte.
    } else {
        start = .decideUpload
    }
    let handler = core.handler
    switch context.transition({ $0.headersReceived(start) }) {
    case .queue(let response):
        return (context, queue(response, for: context, on: connection, core: core))
    case .suspendAndDecide:
        core.spawn {
            let decided = verdict(await handler.beginUpload(request), context)
            context.transition { $0.decided(decided) }
        }
        return (context, .YES)
    default:
        return (context, .YES)
    }
}

/// An upload decision as the machine's verdict; an accepted upload wakes this connection.
private func verdict(_ decision: UploadDecision, _ context: RequestContext) -> RequestContext.Machine.Start {
    switch decision {
    case .reject(let response):
        return .refuse(refusingBody(response, of: context.request))
    case .accept(let session, let respond):
        session.setWake { context.wake() }
        return .upload(AcceptedUpload(session: session, respond: respond))
    }
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

private func nextCall(
    _ core: ServerCore, _ context: RequestContext, _ connection: OpaquePointer,
    _ uploadData: UnsafePointer<CChar>?, _ uploadDataSize: UnsafeMutablePointer<Int>
) -> MHD_Result {
    let size = uploadDataSize.pointee
    let refusal = core.isShuttingDown ? GatewayError.unavailable("the gateway is shutting down").response(requestID: context.request.requestID) : nil
    let request = context.request
    switch context.transition({ $0.called(bodyBytes: size, refusal: refusal) }) {
    case .proceed, .suspend, .resume:
        return .YES
    case .discard:
        uploadDataSize.pointee = 0
        return .YES
    case .queue(let response):
        return queue(response, for: context, on: connection, core: core)
    case .suspendAndRespond:
        let handler = core.handler
        core.spawn { context.answer(await handler.respond(to: request)) }
        return .YES
    case .suspendAndDecide:
        return .YES  // Decisions start on the first call only.
    case .offer(let upload):
        if let uploadData {
            upload.session.offer(UnsafeRawBufferPointer(start: uploadData, count: size)) { context.suspend() }
        }
        uploadDataSize.pointee = 0
        return .YES
    case .suspendAndFinish(let upload):
        core.spawn { context.answer(upload.respond(await upload.session.finish())) }
        return .YES
    }
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
        core.spawn { await stream.run(wake: { context.wake() }) }
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
