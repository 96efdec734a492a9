import Logging
import NBDProtocol
import NIOCore
import NIOPosix
import NIOSSL
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension NBDClient {
    /// Connects to the export a URI names (`nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://`) and negotiates it.
    public static func connect(
        to uri: String,
        configuration: NBDClientConfiguration = NBDClientConfiguration(),
        logger: Logger = Logger(label: "nbd.client")
    ) async throws -> NBDClient {
        try await connect(to: NBDURI(parsing: uri), configuration: configuration, logger: logger)
    }

    /// Connects to the export `uri` names and negotiates it.
    public static func connect(
        to uri: NBDURI,
        configuration: NBDClientConfiguration = NBDClientConfiguration(),
        logger: Logger = Logger(label: "nbd.client")
    ) async throws -> NBDClient {
        let (channel, info) = try await open(uri, goal: .negotiate(exportName: uri.exportName), configuration: configuration, logger: logger)
        guard case .negotiated(let exportInfo) = info else {
            throw NBDError.violation("handshake ended without negotiating")
        }
        logger.debug("negotiated", metadata: ["uri": "\(uri)", "size": "\(exportInfo.size)"])
        return NBDClient(info: exportInfo, channel: channel, configuration: configuration, logger: logger)
    }

    /// Lists the exports of the server `uri` names (its export name is ignored).
    ///
    /// Throws `.listingRefused` when the server disabled listing (`NBD_REP_ERR_POLICY`) and
    /// `.listingUnsupported` when it cannot list (`NBD_REP_ERR_UNSUP`, oldstyle).
    public static func list(
        _ uri: String,
        configuration: NBDClientConfiguration = NBDClientConfiguration(),
        logger: Logger = Logger(label: "nbd.client")
    ) async throws -> [NBDExportListing] {
        try await list(NBDURI(parsing: uri), configuration: configuration, logger: logger)
    }

    /// Lists the exports of the server `uri` names.
    public static func list(
        _ uri: NBDURI,
        configuration: NBDClientConfiguration = NBDClientConfiguration(),
        logger: Logger = Logger(label: "nbd.client")
    ) async throws -> [NBDExportListing] {
        let (channel, outcome) = try await open(uri, goal: .list, configuration: configuration, logger: logger)
        try? await channel.closeFuture.get()
        guard case .listed(let exports) = outcome else {
            throw NBDError.violation("handshake ended without a listing")
        }
        return exports
    }

    /// Negotiates `exportName` on a channel that is already connected to an NBD server and has
    /// not read anything yet (the server's greeting must still be unread).
    public static func negotiate(
        on channel: any Channel,
        exportName: String,
        tlsServerName: String? = nil,
        configuration: NBDClientConfiguration = NBDClientConfiguration(),
        logger: Logger = Logger(label: "nbd.client")
    ) async throws -> NBDClient {
        let handshake = NBDHandshakeStateMachine.Configuration(
            goal: .negotiate(exportName: exportName),
            useTLS: configuration.tls != nil,
            structuredReplies: configuration.structuredReplies,
            metaContexts: configuration.metaContexts,
            listedContextPrefixes: configuration.listedContextPrefixes
        )
        let tlsFactory = try configuration.tls.map { try makeTLSFactory($0, host: tlsServerName) }
        let promise = channel.eventLoop.makePromise(of: NBDHandshakeOutcome.self)
        let timeout = configuration.requestTimeout
        try await channel.eventLoop.submit {
            let handler = NBDChannelHandler(configuration: handshake, handshakePromise: promise, requestTimeout: timeout, tlsHandlerFactory: tlsFactory)
            try channel.pipeline.syncOperations.addHandler(handler)
        }.get()
        let outcome = try await awaitHandshake(promise, channel: channel, timeout: configuration.connectTimeout)
        guard case .negotiated(let info) = outcome else { throw NBDError.violation("handshake ended without negotiating") }
        return NBDClient(info: info, channel: channel, configuration: configuration, logger: logger)
    }

    // MARK: - Connecting

    static func open(
        _ uri: NBDURI,
        goal: NBDHandshakeStateMachine.Goal,
        configuration: NBDClientConfiguration,
        logger: Logger
    ) async throws -> (any Channel, NBDHandshakeOutcome) {
        var tls = configuration.tls
        if uri.tls && tls == nil {
            tls = uri.tlsCertificates.map { NBDTLSConfiguration.directory($0, verifyPeer: uri.tlsVerifyPeer) }
                ?? NBDTLSConfiguration(verifyPeer: uri.tlsVerifyPeer)
        }
        if !uri.tls { tls = nil }
        let host: String? = if case .tcp(let host, _) = uri.transport { host } else { nil }
        let tlsFactory = try tls.map { try makeTLSFactory($0, host: host) }
        let handshake = NBDHandshakeStateMachine.Configuration(
            goal: goal,
            useTLS: tls != nil,
            structuredReplies: configuration.structuredReplies,
            metaContexts: configuration.metaContexts,
            listedContextPrefixes: configuration.listedContextPrefixes
        )
        let group = configuration.eventLoopGroup
        let promise = group.next().makePromise(of: NBDHandshakeOutcome.self)
        let timeout = configuration.requestTimeout
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(configuration.connectTimeout)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 65536, maximum: configuration.receiveBufferSize))
            // NIO keeps up to maxMessagesPerRead receive buffers and reuses any no longer
            // referenced. With a budget, one until requests are in flight (see the handler).
            .channelOption(.maxMessagesPerRead, value: UInt(configuration.receiveBufferBudget == nil ? configuration.receiveBufferPoolSize : 1))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let share = configuration.receiveBufferBudget.map {
                        NBDChannelHandler.BufferShare(
                            budget: $0, wanted: configuration.receiveBufferPoolSize - 1, bufferSize: configuration.receiveBufferSize
                        )
                    }
                    let handler = NBDChannelHandler(
                        configuration: handshake, handshakePromise: promise, requestTimeout: timeout, tlsHandlerFactory: tlsFactory,
                        bufferShare: share
                    )
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let channel: any Channel
        do {
            switch uri.transport {
            case .tcp(let host, let port):
                channel = try await bootstrap
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .connect(host: host, port: port).get()
            case .unix(let path):
                channel = try await bootstrap.connect(unixDomainSocketPath: path).get()
            }
        } catch {
            promise.fail(error)
            logger.debug("connect failed", metadata: ["uri": "\(uri)", "error": "\(error)"])
            throw NBDError(.connectionFailed, "cannot connect to \(uri): \(NBDClient.plainDescription(of: error))", exportName: uri.exportName)
        }
        logger.trace("connected", metadata: ["uri": "\(uri)"])
        do {
            return (channel, try await awaitHandshake(promise, channel: channel, timeout: configuration.connectTimeout))
        } catch {
            try? await channel.close()
            throw error
        }
    }

    private static func awaitHandshake(
        _ promise: EventLoopPromise<NBDHandshakeOutcome>,
        channel: any Channel,
        timeout: TimeAmount
    ) async throws -> NBDHandshakeOutcome {
        let timer = channel.eventLoop.scheduleTask(in: timeout) {
            channel.pipeline.fireErrorCaught(NBDError(.timeout, "handshake did not finish within \(timeout.nanoseconds / 1_000_000_000) s"))
        }
        defer { timer.cancel() }
        do {
            return try await promise.futureResult.get()
        } catch let error as NBDError {
            throw error
        } catch {
            throw NBDError(.connectionLost, plainDescription(of: error))
        }
    }

    static func makeTLSFactory(_ tls: NBDTLSConfiguration, host: String?) throws(NBDError) -> @Sendable () throws -> NIOSSLClientHandler {
        var configuration = TLSConfiguration.makeClientConfiguration()
        do {
            if let ca = tls.caCertificateFile { configuration.trustRoots = .file(ca) }
            if let certificate = tls.clientCertificateFile, let key = tls.clientKeyFile {
                configuration.certificateChain = try NIOSSLCertificate.fromPEMFile(certificate).map { .certificate($0) }
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            if !tls.verifyPeer { configuration.certificateVerification = .none }
            let context = try NIOSSLContext(configuration: configuration)
            let serverName = tls.serverName ?? host
            // SNI cannot carry an IP literal; certificate checks then use the address itself.
            let sniName = serverName.flatMap { $0.contains(":") || $0.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : $0 }
            return { try NIOSSLClientHandler(context: context, serverHostname: sniName) }
        } catch {
            throw NBDError(.tlsFailure, "cannot set up TLS: \(error)")
        }
    }
}

extension NBDClient {
    /// What went wrong, in a person's words ("connection refused", "no such socket", "host not
    /// found", "TLS certificate not trusted"), for errors SwiftNIO and NIOSSL raise while
    /// connecting. Their own descriptions (kept for debug logging) name internal types.
    public static func plainDescription(of error: any Error) -> String {
        if let error = error as? NBDError { return error.message.isEmpty ? "\(error.code)" : error.message }
        if let error = error as? NIOConnectionError {
            if let first = error.connectionErrors.first { return plainDescription(of: first.error) }
            if error.dnsAError != nil || error.dnsAAAAError != nil { return "host not found: \(error.host)" }
            return "cannot connect to \(error.host):\(error.port)"
        }
        if let error = error as? IOError { return errnoText(error.errnoCode) }
        if case ChannelError.connectTimeout = error { return "connection timed out" }
        if let error = error as? SocketAddressError {
            if case .unknown(let host, _) = error { return "host not found: \(host)" }
            return "bad address"
        }
        if error is NIOSSLError || error is BoringSSLError {
            let detail = "\(error)"
            if detail.contains("CERTIFICATE_VERIFY_FAILED") { return "TLS certificate not trusted" }
            if detail.contains("WRONG_VERSION_NUMBER") || detail.contains("PACKET_LENGTH_TOO_LONG") { return "the server does not speak TLS here" }
            if case NIOSSLError.unableToValidateCertificate = error { return "TLS certificate not trusted" }
            return "TLS handshake failed"
        }
        return "\(error)"
    }

    private static func errnoText(_ code: Int32) -> String {
        switch code {
        case ECONNREFUSED: "connection refused"
        case ENOENT: "no such socket"
        case EACCES, EPERM: "permission denied"
        case ETIMEDOUT: "connection timed out"
        case EHOSTUNREACH: "host unreachable"
        case ENETUNREACH: "network unreachable"
        case ECONNRESET: "connection reset by the server"
        case ENOTSOCK, ECONNABORTED: "not a socket"
        default: String(cString: strerror(code)).lowercased()
        }
    }
}
