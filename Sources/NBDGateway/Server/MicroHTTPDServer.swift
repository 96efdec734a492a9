// The one adapter between libmicrohttpd and the gateway: C callbacks in, GatewayRequest /
// GatewayResponse out. Each request's life is an `HTTPRequestStateMachine`; this file only
// performs what its transitions decide. No thread of the Swift cooperative pool ever blocks:
// a request whose answer needs async work suspends its connection (MHD_suspend_connection),
// the work runs as a job, and the job resumes the connection (MHD_resume_connection).
private import CMicroHTTPD
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// libmicrohttpd serving a `GatewayHTTPHandler`, with an explicit lifecycle.
public final class MicroHTTPDServer: Sendable {
    /// One libmicrohttpd daemon: a listening socket and the threads serving it.
    private struct Daemon: Sendable {
        /// The `MHD_Daemon *` as an address (the daemon is thread-safe).
        var address: Int
        /// Serves TLS (its credentials are replaced on reload).
        var isHTTPS: Bool
        /// Quiesced by a credentials reload: serves the connections it has, accepts no more.
        var isRetired = false
    }

    private enum Lifecycle: Sendable {
        /// Created; no daemon yet.
        case idle
        /// Serving: one daemon per listener (TCP, Unix socket, inherited sockets), plus those
        /// retired by a credentials reload.
        case running([Daemon])
        /// New requests are refused; those in progress finish, then the daemons stop.
        case draining([Daemon])
        /// The daemons have stopped (or never started).
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

    /// Binds and starts a daemon per listener; returns the TCP port bound (0 when serving only
    /// a Unix socket or inherited sockets).
    public func start() throws -> Int {
        let configuration = core.configuration
        var daemons: [Daemon] = []
        var port = 0
        do {
            if configuration.inheritedSockets.isEmpty {
                let host = configuration.host == "localhost" ? "127.0.0.1" : configuration.host.trimmingBrackets
                let address: SocketAddress
                do {
                    address = try SocketAddress(ipAddress: host, port: configuration.port)
                } catch {
                    throw GatewayStartError("cannot bind to host \"\(configuration.host)\": use an IPv4 or IPv6 address, or localhost")
                }
                let daemon = try startDaemon(.address(address), https: configuration.https)
                daemons.append(daemon)
                port = Int(shim_MHD_bound_port(OpaquePointer(bitPattern: daemon.address)))
            }
            for socket in configuration.inheritedSockets {
                daemons.append(try startDaemon(.socket(socket), https: configuration.https))
            }
            if let path = configuration.unixSocketPath {
                // Plain HTTP: whoever may open the socket file is on this machine already.
                daemons.append(try startDaemon(.socket(try UnixListener.bind(path)), https: nil))
            }
        } catch {
            for daemon in daemons { MHD_stop_daemon(OpaquePointer(bitPattern: daemon.address)) }
            throw error
        }
        let started = lifecycle.withLock { state -> Bool in
            guard case .idle = state else { return false }
            state = .running(daemons)
            return true
        }
        guard started else {
            for daemon in daemons { MHD_stop_daemon(OpaquePointer(bitPattern: daemon.address)) }
            throw GatewayStartError("the server was started twice, or after it stopped")
        }
        return port
    }

    private enum Listener {
        case address(SocketAddress)
        /// A listening socket made elsewhere (a Unix socket, or one systemd passed).
        case socket(Int32)
    }

    private func startDaemon(_ listener: Listener, https: HTTPSCredentials?) throws -> Daemon {
        let configuration = core.configuration
        // MHD_USE_ITC lets a daemon be quiesced (a credentials reload hands its socket over).
        var flags = MHD_USE_EPOLL_INTERNAL_THREAD.rawValue | MHD_ALLOW_SUSPEND_RESUME.rawValue | MHD_USE_ERROR_LOG.rawValue | MHD_USE_ITC.rawValue
        if https != nil { flags |= MHD_USE_TLS.rawValue }
        let cls = Unmanaged.passUnretained(core).toOpaque()
        let certificate = https.map { Array($0.certificatePEM.utf8CString) } ?? []
        let key = https.map { Array($0.keyPEM.utf8CString) } ?? []
        func start(_ listenOption: MHD_OptionItem?, port: UInt16) -> OpaquePointer? {
            certificate.withUnsafeBufferPointer { certificate in
                key.withUnsafeBufferPointer { key in
                    var options: [MHD_OptionItem] = [
                        shim_option_value(.CONNECTION_MEMORY_LIMIT, configuration.connectionMemoryLimit),
                        shim_option_value(.CONNECTION_TIMEOUT, configuration.connectionTimeout),
                        shim_option_completed(requestCompleted, cls),
                        shim_option_notify_connection(connectionNotified, cls),
                        shim_option_keep_escapes(),
                    ]
                    if let listenOption { options.append(listenOption) }
                    if https != nil {
                        options.append(shim_option_pointer(.HTTPS_MEM_CERT, 0, UnsafeMutableRawPointer(mutating: certificate.baseAddress)))
                        options.append(shim_option_pointer(.HTTPS_MEM_KEY, 0, UnsafeMutableRawPointer(mutating: key.baseAddress)))
                    }
                    if configuration.threads > 1 { options.append(shim_option_value(.THREAD_POOL_SIZE, configuration.threads)) }
                    options.append(shim_option_end())
                    return options.withUnsafeMutableBufferPointer { items in
                        shim_MHD_start_daemon_policy(flags, port, acceptPolicy, cls, accessHandler, cls, items.baseAddress)
                    }
                }
            }
        }
        let daemon: OpaquePointer?
        switch listener {
        case .address(let address):
            if case .v6 = address { flags |= MHD_USE_IPv6.rawValue }
            daemon = address.withSockAddr { sockaddr, _ in
                start(shim_option_pointer(.SOCK_ADDR, 0, UnsafeMutableRawPointer(mutating: sockaddr)), port: UInt16(configuration.port))
            }
            guard let daemon else {
                if https != nil { throw GatewayStartError("cannot serve HTTPS on \(configuration.host):\(configuration.port): the port is in use, or the certificate and key do not match") }
                throw GatewayStartError("cannot listen on \(configuration.host):\(configuration.port) (in use, or not an address of this machine)")
            }
            return Daemon(address: Int(bitPattern: UnsafeMutableRawPointer(daemon)), isHTTPS: https != nil)
        case .socket(let socket):
            daemon = start(shim_option_value(.LISTEN_SOCKET, Int(socket)), port: 0)
            guard let daemon else { throw GatewayStartError("cannot serve on the listening socket \(socket)") }
            return Daemon(address: Int(bitPattern: UnsafeMutableRawPointer(daemon)), isHTTPS: https != nil)
        }
    }

    /// Serves new HTTPS connections with these credentials (SIGHUP): each HTTPS daemon hands
    /// its listening socket to a new daemon and keeps serving the connections it has.
    /// Credentials libmicrohttpd cannot use leave the old ones in force (the error says why).
    public func reloadCredentials(_ fresh: HTTPSCredentials) throws {
        try lifecycle.withLock { state in
            guard case .running(var daemons) = state else { return }
            for index in daemons.indices where daemons[index].isHTTPS && !daemons[index].isRetired {
                guard let old = OpaquePointer(bitPattern: daemons[index].address) else { continue }
                // Try the new credentials on a daemon of its own first: one that does not start
                // must not cost the listening socket.
                let probe = try? startDaemon(.address(try SocketAddress(ipAddress: "127.0.0.1", port: 0)), https: fresh)
                guard let probe else { throw GatewayStartError("the new certificate and key were not accepted; the old ones stay in force") }
                MHD_stop_daemon(OpaquePointer(bitPattern: probe.address))
                let socket = MHD_quiesce_daemon(old)
                guard socket >= 0 else { continue }
                daemons[index].isRetired = true
                daemons.append(try startDaemon(.socket(socket), https: fresh))
            }
            state = .running(daemons)
        }
    }

    /// Serves until graceful shutdown (or cancellation), then drains and stops.
    /// `onListening` gets the port; `onGraceExpired` runs when requests outlive the grace
    /// period (the gateway closes their NBD connections without waiting for replies).
    public func run(onListening: (Int) -> Void, onGraceExpired: @escaping @Sendable () async -> Void) async throws {
        onListening(try start())
        let deadlines = core.headerDeadlines
        let sweeper = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(500))
                deadlines.sweep(now: .now)
            }
        }
        try? await gracefulShutdown()
        sweeper.cancel()
        await shutdown(onGraceExpired: onGraceExpired)
    }

    /// Refuses new requests (503), gives those in progress the grace period, then answers what
    /// still waits (503 before the status line, a cut body after it), waits until no
    /// connection is suspended (libmicrohttpd aborts if stopped with one) and stops the daemon.
    public func shutdown(onGraceExpired: @escaping @Sendable () async -> Void = {}) async {
        let draining = lifecycle.withLock { state -> [Daemon]? in
            guard case .running(let daemons) = state else { return nil }
            state = .draining(daemons)
            return daemons
        }
        guard let draining else { return }  // Not running, or another shutdown is under way.
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
        // Re-checked after the awaits: only the shutdown that moved to draining stops the daemons.
        let stop = lifecycle.withLock { state -> Bool in
            guard case .draining(let daemons) = state, daemons.map(\.address) == draining.map(\.address) else { return false }
            state = .stopped
            return true
        }
        if stop {
            for daemon in draining { MHD_stop_daemon(OpaquePointer(bitPattern: daemon.address)) }
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

private let accessHandler: MHD_AccessHandlerCallback = { cls, connection, url, method, version, uploadData, uploadDataSize, contextPointer in
    guard let cls, let connection, let url, let method, let uploadDataSize, let contextPointer else { return .NO }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    guard let existing = contextPointer.pointee else {
        let isHTTP11 = version.map { strcmp($0, "HTTP/1.1") == 0 } ?? false
        let (context, result) = firstCall(core, connection, url: String(cString: url), method: String(cString: method), requiresHost: isHTTP11)
        contextPointer.pointee = Unmanaged.passRetained(context).toOpaque()
        return result
    }
    let context = Unmanaged<RequestContext>.fromOpaque(existing).takeUnretainedValue()
    return nextCall(core, context, connection, uploadData, uploadDataSize)
}

/// Headers are complete: build the request and let the machine decide how it starts.
private func firstCall(_ core: ServerCore, _ connection: OpaquePointer, url: String, method: String, requiresHost: Bool) -> (RequestContext, MHD_Result) {
    // The header is complete: from here on the connection is idle only between requests.
    core.headerDeadlines.clear(connection: Int(bitPattern: UnsafeMutableRawPointer(connection)))
    if core.configuration.headerTimeout != core.configuration.connectionTimeout {
        shim_MHD_set_timeout(connection, UInt32(core.configuration.connectionTimeout))
    }
    let collected = HeaderCollector()
    MHD_get_connection_values(connection, .HEADER_KIND, collectValue, Unmanaged.passUnretained(collected).toOpaque())
    let arguments = HeaderCollector()
    MHD_get_connection_values(connection, .GET_ARGUMENT_KIND, collectValue, Unmanaged.passUnretained(arguments).toOpaque())
    let query = arguments.pairs.map { (name: NBDQuery.decode($0.name), value: NBDQuery.decode($0.value)) }
    let target = GatewayRequest.originForm(url)
    let fullPath = target.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(target[..<$0]) } ?? target
    // Under --base-path every route lives below the prefix; anything else is not ours.
    let basePath = core.configuration.basePath
    let rawPath: String?
    if basePath.isEmpty {
        rawPath = fullPath
    } else if fullPath == basePath {
        rawPath = ""  // Redirected to basePath + "/".
    } else {
        rawPath = fullPath.utf8.starts(with: (basePath + "/").utf8) ? String(fullPath.dropFirst(basePath.count)) : nil
    }
    var received = GatewayRequest(method: method, rawPath: rawPath ?? fullPath, query: query, headers: collected.pairs)
    received.requestID = received.header("X-Request-Id").flatMap { NBDQuery.isValidRequestID($0) ? $0 : nil } ?? core.nextRequestID()
    let peer = core.needsPeer ? peerAddress(connection) : ""
    received.isSecure = core.configuration.https != nil && peer != "unix"
    if !core.configuration.trustedProxies.networks.isEmpty { received.isFromTrustedProxy = core.configuration.trustedProxies.trusts(peer) }
    let request = received
    let client = core.configuration.accessLog == nil ? "" : core.configuration.trustedProxies.client(peer: peer, forwardedFor: request.header("X-Forwarded-For"))
    let context = RequestContext(request: request, connection: Int(bitPattern: UnsafeMutableRawPointer(connection)), core: core, client: client, path: fullPath)
    core.register(context)

    let start: RequestContext.Machine.Start
    if rawPath == nil {
        start = .refuse(refusingBody(GatewayError.notFound(fullPath).response(requestID: request.requestID), of: request))
    } else if requiresHost && request.header("Host") == nil {
        // RFC 9112 §3.2: an HTTP/1.1 request without Host is answered 400.
        start = .refuse(refusingBody(GatewayError.badRequest("an HTTP/1.1 request needs a Host header").response(requestID: request.requestID), of: request))
    } else if collected.bytes > core.configuration.maximumHeaderBytes {
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
        context.received(size)
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
        mhdResponse = heldBodyResponse([buffer])
    case .slices(let buffers):
        mhdResponse = heldBodyResponse(buffers)
    case .stream(let length, let body):
        if isHead {
            mhdResponse = MHD_create_response_from_callback(length, 4096, noBody, nil, nil)
        } else {
            stream = body
            context.stream = body
            // The response owns a buffer of this size (not from the connection pool): what
            // each reader call copies and each send sends (see `ResponseBlocks`).
            let blockSize = context.takeResponseBlock()
            mhdResponse = MHD_create_response_from_callback(
                length, blockSize, readBody, Unmanaged.passRetained(context).toOpaque(), releaseContext
            )
            if mhdResponse == nil {
                context.giveResponseBlock()
                Unmanaged.passUnretained(context).release()
            }
        }
    }
    guard let mhdResponse else { return .NO }
    context.status = response.status
    if !isHead, let buffers = response.body.heldBuffers { context.sent(buffers.reduce(0) { $0 + $1.readableBytes }) }
    MHD_add_response_header(mhdResponse, "X-Request-Id", context.request.requestID)
    for (name, value) in response.headers {
        MHD_add_response_header(mhdResponse, name, value)
    }
    if core.configuration.cors.isEnabled {
        for (name, value) in core.configuration.cors.responseHeaders(origin: context.request.header("Origin")) {
            MHD_add_response_header(mhdResponse, name, value)
        }
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
    case .bytes(let count):
        context.sent(count)
        return count
    case .pending: return 0  // Suspended: no busy loop; the producer resumes us.
    case .end: return shim_MHD_CONTENT_READER_END_OF_STREAM
    case .failed: return shim_MHD_CONTENT_READER_END_WITH_ERROR
    }
}

private let noBody: MHD_ContentReaderCallback = { _, _, _, _ in shim_MHD_CONTENT_READER_END_WITH_ERROR }

/// A response body libmicrohttpd sends from our memory (a ByteBuffer's storage never moves
/// or changes while a reference to it is held).
private final class HeldBody {
    let buffers: [ByteBuffer]
    init(_ buffers: [ByteBuffer]) { self.buffers = buffers }
}

/// A response sent with writev from `buffers` themselves, not a copy: the box keeps their
/// storage alive, unchanged, until libmicrohttpd destroys the response and calls `releaseBody`.
private func heldBodyResponse(_ buffers: [ByteBuffer]) -> OpaquePointer? {
    let box = Unmanaged.passRetained(HeldBody(buffers))
    let vectors = buffers.map { buffer in
        buffer.withUnsafeReadableBytes { MHD_IoVec(iov_base: $0.baseAddress, iov_len: $0.count) }
    }
    let response = MHD_create_response_from_iovec(vectors, UInt32(vectors.count), releaseBody, box.toOpaque())
    if response == nil { box.release() }
    return response
}

private extension GatewayResponse.Body {
    /// The buffers of a body held in memory; nil for none or a stream.
    var heldBuffers: [ByteBuffer]? {
        switch self {
        case .bytes(let buffer): [buffer]
        case .slices(let buffers): buffers
        case .empty, .stream: nil
        }
    }
}

private let releaseBody: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    Unmanaged<HeldBody>.fromOpaque(cls).release()
}

private let releaseContext: MHD_ContentReaderFreeCallback = { cls in
    guard let cls else { return }
    let context = Unmanaged<RequestContext>.fromOpaque(cls)
    context.takeUnretainedValue().giveResponseBlock()
    context.release()
}

private let requestCompleted: MHD_RequestCompletedCallback = { cls, connection, contextPointer, _ in
    guard let cls, let contextPointer, let pointer = contextPointer.pointee else { return }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    if let connection {
        // The next request's header: within the keep-alive wait plus the header timeout.
        let configuration = core.configuration
        core.headerDeadlines.expect(
            connection: Int(bitPattern: UnsafeMutableRawPointer(connection)), socket: shim_MHD_connection_fd(connection),
            by: .now + .seconds(configuration.connectionTimeout + configuration.headerTimeout)
        )
    }
    let context = Unmanaged<RequestContext>.fromOpaque(pointer).takeRetainedValue()
    contextPointer.pointee = nil
    context.complete()
    core.unregister(context)
    if let log = core.configuration.accessLog { log.write(context.accessLogEntry()) }
}

// MARK: - Connections: limits and peer addresses

/// The connection's peer: an IP address, or "unix" for a Unix socket.
private func peerAddress(_ connection: OpaquePointer) -> String {
    guard let address = shim_MHD_client_address(connection) else { return "unknown" }
    return socketAddressText(address)
}

private func socketAddressText(_ address: UnsafePointer<sockaddr>) -> String {
    switch Int32(address.pointee.sa_family) {
    case AF_INET:
        return address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { v4 in
            withUnsafeBytes(of: v4.pointee.sin_addr) { IPAddress.text(Array($0)) } ?? "unknown"
        }
    case AF_INET6:
        return address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { v6 in
            withUnsafeBytes(of: v6.pointee.sin6_addr) { IPAddress.text(Array($0)) } ?? "unknown"
        }
    case AF_UNIX:
        return "unix"
    default:
        return "unknown"
    }
}

/// libmicrohttpd's accept policy: the connection limits, decided before any byte is read.
private let acceptPolicy: MHD_AcceptPolicyCallback = { cls, address, _ in
    guard let cls else { return .YES }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    guard let limits = core.connectionLimits else { return .YES }
    let client = address.map(socketAddressText) ?? "unix"
    return limits.accepting(client: client) ? .YES : .NO
}

/// A new connection gets the header timeout until its request headers are complete; each
/// accepted one remembers its client until it closes (the limits count it).
private let connectionNotified: MHD_NotifyConnectionCallback = { cls, connection, socketContext, event in
    guard let cls, let connection, let socketContext else { return }
    let core = Unmanaged<ServerCore>.fromOpaque(cls).takeUnretainedValue()
    switch event {
    case MHD_ConnectionNotificationCode(rawValue: 0):  // MHD_CONNECTION_NOTIFY_STARTED
        shim_MHD_set_timeout(connection, UInt32(core.configuration.headerTimeout))
        core.headerDeadlines.expect(
            connection: Int(bitPattern: UnsafeMutableRawPointer(connection)), socket: shim_MHD_connection_fd(connection),
            by: .now + .seconds(core.configuration.headerTimeout)
        )
        if core.connectionLimits != nil {
            socketContext.pointee = Unmanaged.passRetained(ClientKey(peerAddress(connection))).toOpaque()
        }
    case MHD_ConnectionNotificationCode(rawValue: 1):  // MHD_CONNECTION_NOTIFY_CLOSED
        core.headerDeadlines.clear(connection: Int(bitPattern: UnsafeMutableRawPointer(connection)))
        guard let limits = core.connectionLimits, let pointer = socketContext.pointee else { return }
        socketContext.pointee = nil
        limits.closed(client: Unmanaged<ClientKey>.fromOpaque(pointer).takeRetainedValue().address)
    default:
        break
    }
}

private final class ClientKey {
    let address: String
    init(_ address: String) { self.address = address }
}

/// A listening Unix socket (`--unix-socket`); a stale socket file from an earlier run is replaced.
enum UnixListener {
    static func bind(_ path: String) throws -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else { throw GatewayStartError("the Unix socket path is longer than \(capacity - 1) bytes: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
            raw[path.utf8.count] = 0
        }
        var status = stat()
        if lstat(path, &status) == 0 {
            guard status.st_mode & S_IFMT == S_IFSOCK else { throw GatewayStartError("\(path) exists and is not a socket") }
            unlink(path)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw GatewayStartError("cannot create a Unix socket: \(String(cString: strerror(errno)))") }
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(fd, 128) == 0 else {
            let reason = String(cString: strerror(errno))
            close(fd)
            throw GatewayStartError("cannot listen on the Unix socket \(path): \(reason)")
        }
        return fd
    }
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
