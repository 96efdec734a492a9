import NBDProtocol
import NIOCore
import NIOSSL
import NIOTLS

/// A command for the channel handler, sent with `channel.writeAndFlush`.
enum NBDChannelCommand {
    case request(NBDCommandRequest)
    /// Wait for in-flight requests, send NBD_CMD_DISC, close.
    case disconnect(EventLoopPromise<Void>)
}

/// One transmission request and where its outcome goes.
struct NBDCommandRequest {
    var command: NBDCommand
    var flags: NBDCommandFlags = []
    var offset: UInt64 = 0
    var length: UInt32 = 0
    /// WRITE payload, possibly in several pieces (written with one gathering write).
    var payload: [ByteBuffer] = []
    /// READ destination.
    var sink: NBDReadSink?
    var promise: EventLoopPromise<NBDCommandResult>
}

/// A successful reply.
enum NBDCommandResult: Sendable {
    case done
    /// Block status descriptors by metadata context id.
    case blockStatus([UInt32: [NBDBlockDescriptor]])
}

/// What the handshake produced.
enum NBDHandshakeOutcome: Sendable {
    case negotiated(NBDExportInfo)
    case listed([NBDExportListing])
}

/// The one adapter between the socket and the protocol state machines: runs the handshake,
/// then pipelines requests (cookie table, out-of-order replies, structured chunks).
final class NBDChannelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = NBDChannelCommand
    typealias OutboundOut = ByteBuffer

    private struct InFlight {
        var expectation: NBDReplyDecoder.Expectation
        var sink: NBDReadSink?
        var promise: EventLoopPromise<NBDCommandResult>
        var firstError: NBDError?
        var blockStatus: [UInt32: [NBDBlockDescriptor]] = [:]
        /// Structured READ chunks seen so far, to prove full, non-overlapping coverage.
        var covered: [Range<UInt64>] = []
        var timeout: Scheduled<Void>?
    }

    private enum Phase {
        /// Negotiating.
        case handshake
        /// Transmission: requests and replies flow.
        case transmission
        /// Waiting for in-flight requests before NBD_CMD_DISC.
        case draining(EventLoopPromise<Void>)
        /// Closed or failed: every request fails with this error.
        case closed(NBDError)
    }

    private var machine: NBDHandshakeStateMachine
    private let handshakePromise: EventLoopPromise<NBDHandshakeOutcome>
    private let tlsHandlerFactory: (@Sendable () throws -> NIOSSLClientHandler)?
    private let requestTimeout: TimeAmount?
    private var phase: Phase = .handshake
    private var decoder = NBDReplyDecoder(structuredReplies: false)
    private var inFlight: [UInt64: InFlight] = [:]
    private var nextCookie: UInt64 = 1
    private var pending: ByteBuffer?
    private var context: ChannelHandlerContext?

    init(
        configuration: NBDHandshakeStateMachine.Configuration,
        handshakePromise: EventLoopPromise<NBDHandshakeOutcome>,
        requestTimeout: TimeAmount?,
        tlsHandlerFactory: (@Sendable () throws -> NIOSSLClientHandler)?
    ) {
        self.machine = NBDHandshakeStateMachine(configuration: configuration)
        self.handshakePromise = handshakePromise
        self.requestTimeout = requestTimeout
        self.tlsHandlerFactory = tlsHandlerFactory
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        if var earlier = pending {
            pending = nil
            earlier.writeBuffer(&buffer)
            buffer = earlier
        }
        switch phase {
        case .handshake:
            runHandshake(context: context, buffer: &buffer)
        case .transmission, .draining:
            decodeReplies(context: context, buffer: &buffer)
        case .closed:
            return
        }
        if buffer.readableBytes > 0 { pending = buffer }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent, case .handshake = phase {
            perform(machine.tlsEstablished(), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let error: NBDError
        switch phase {
        case .handshake:
            error = machine.connectionClosed()
        case .draining(let promise):
            promise.succeed(())
            error = NBDError(.disconnected, "disconnected")
        case .transmission:
            error = NBDError(.connectionLost, "server closed the connection")
        case .closed(let earlier):
            error = earlier
        }
        shutDown(with: error, context: context, close: false)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let nbdError: NBDError
        if let error = error as? NBDError {
            nbdError = error
        } else if case .handshake = phase, error is NIOSSLError || error is BoringSSLError {
            nbdError = NBDError(.tlsFailure, NBDClient.plainDescription(of: error))
        } else {
            nbdError = NBDError(.connectionLost, NBDClient.plainDescription(of: error))
        }
        shutDown(with: nbdError, context: context, close: true)
    }

    // MARK: - Handshake

    private func runHandshake(context: ChannelHandlerContext, buffer: inout ByteBuffer) {
        while case .handshake = phase {
            let action = machine.receive(&buffer)
            if case .wait = action { return }
            perform(action, context: context)
            if case .transmission = phase, buffer.readableBytes > 0 {
                decodeReplies(context: context, buffer: &buffer)
            }
        }
    }

    private func perform(_ action: NBDHandshakeStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .wait:
            break
        case .send(let bytes):
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .sendAndStartTLS(let bytes):
            if bytes.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(bytes), promise: nil) }
            guard let factory = tlsHandlerFactory else {
                shutDown(with: NBDError(.tlsFailure, "TLS requested without a TLS configuration"), context: context, close: true)
                return
            }
            do {
                try context.pipeline.syncOperations.addHandler(factory(), position: .first)
            } catch {
                shutDown(with: NBDError(.tlsFailure, "cannot start TLS: \(error)"), context: context, close: true)
            }
        case .negotiated(let info):
            decoder = NBDReplyDecoder(structuredReplies: info.structuredReplies)
            phase = .transmission
            handshakePromise.succeed(.negotiated(info))
        case .listed(let exports, let abort):
            phase = .closed(NBDError(.disconnected, "listing finished"))
            handshakePromise.succeed(.listed(exports))
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(abort)).whenComplete { _ in channel.close(promise: nil) }
        case .fail(let error, let farewell):
            if let farewell {
                context.writeAndFlush(wrapOutboundOut(farewell), promise: nil)
            }
            shutDown(with: error, context: context, close: true)
        }
    }

    // MARK: - Transmission

    private func decodeReplies(context: ChannelHandlerContext, buffer: inout ByteBuffer) {
        var decoder = self.decoder
        defer { self.decoder = decoder }
        do {
            while let event = try decoder.next(&buffer, expectation: { self.inFlight[$0]?.expectation }) {
                try handle(event)
            }
        } catch {
            shutDown(with: error, context: context, close: true)
            buffer.clear()
        }
        if case .draining = phase, inFlight.isEmpty {
            sendDisconnect(context: context)
        }
    }

    private func handle(_ event: NBDReplyDecoder.Event) throws(NBDError) {
        switch event {
        case .data(let cookie, let offset, let bytes):
            try cover(cookie, offset: offset, length: UInt64(bytes.readableBytes))
            inFlight[cookie]?.sink?.write(bytes, at: offset)
        case .hole(let cookie, let offset, let length):
            try cover(cookie, offset: offset, length: UInt64(length))
            inFlight[cookie]?.sink?.zero(at: offset, length: Int(length))
        case .blockStatus(let cookie, let contextID, let descriptors):
            inFlight[cookie]?.blockStatus[contextID, default: []].append(contentsOf: descriptors)
        case .error(let cookie, let errno, let message, let offset):
            guard inFlight[cookie]?.firstError == nil else { return }
            var text = message
            if let offset { text += text.isEmpty ? "at offset \(offset)" : " (at offset \(offset))" }
            let command = inFlight[cookie]?.expectation.command ?? .read
            if text.isEmpty { text = "\(command) failed: \(errno.explanation)" }
            inFlight[cookie]?.firstError = NBDError(.serverError, text, errno: errno)
        case .done(let cookie):
            guard let entry = inFlight.removeValue(forKey: cookie) else { return }
            entry.timeout?.cancel()
            if let error = entry.firstError {
                entry.promise.fail(error)
                return
            }
            if decoder.structuredReplies, entry.expectation.command == .read {
                let total = entry.covered.reduce(0) { $0 + UInt64($1.count) }
                guard total == UInt64(entry.expectation.length) else {
                    entry.promise.fail(NBDError.violation("read reply covered \(total) of \(entry.expectation.length) bytes"))
                    throw .violation("read reply covered \(total) of \(entry.expectation.length) bytes")
                }
            }
            if entry.expectation.command == .blockStatus {
                entry.promise.succeed(.blockStatus(entry.blockStatus))
            } else {
                entry.promise.succeed(.done)
            }
        }
    }

    /// Records a structured READ chunk's range, refusing any overlap (a server must not send
    /// them): with no overlap and every chunk inside the request, byte counts prove coverage.
    private func cover(_ cookie: UInt64, offset: UInt64, length: UInt64) throws(NBDError) {
        guard decoder.structuredReplies, var entry = inFlight[cookie] else { return }
        let range = offset..<(offset + length)
        guard !entry.covered.contains(where: { $0.overlaps(range) }) else {
            throw .violation("overlapping read chunks at offset \(offset)")
        }
        if let last = entry.covered.last, last.upperBound == range.lowerBound {
            // Data streamed in pieces: extend the previous range.
            entry.covered[entry.covered.count - 1] = last.lowerBound..<range.upperBound
        } else {
            entry.covered.append(range)
        }
        inFlight[cookie] = entry
    }

    // MARK: - Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .request(let request):
            promise?.succeed(())
            send(request, context: context)
        case .disconnect(let done):
            promise?.succeed(())
            disconnect(done, context: context)
        }
    }

    private func send(_ request: NBDCommandRequest, context: ChannelHandlerContext) {
        switch phase {
        case .transmission:
            break
        case .handshake:
            request.promise.fail(NBDError(.disconnected, "the handshake has not finished"))
            return
        case .draining:
            request.promise.fail(NBDError(.disconnected, "the client is disconnecting"))
            return
        case .closed(let error):
            request.promise.fail(error)
            return
        }
        let cookie = nextCookie
        nextCookie &+= 1
        var entry = InFlight(
            expectation: .init(command: request.command, offset: request.offset, length: request.length),
            sink: request.sink,
            promise: request.promise
        )
        if let requestTimeout {
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            entry.timeout = context.eventLoop.scheduleTask(in: requestTimeout) {
                guard let context = handler.value.context else { return }
                handler.value.shutDown(
                    with: NBDError(.timeout, "no reply to \(request.command) within \(requestTimeout.nanoseconds / 1_000_000) ms"),
                    context: context,
                    close: true
                )
            }
        }
        inFlight[cookie] = entry
        var header = context.channel.allocator.buffer(capacity: NBDWire.requestHeaderSize)
        header.writeNBDRequest(
            NBDRequestHeader(flags: request.flags, command: request.command, cookie: cookie, offset: request.offset, length: request.length)
        )
        context.write(wrapOutboundOut(header), promise: nil)
        for piece in request.payload {
            context.write(wrapOutboundOut(piece), promise: nil)
        }
    }

    func flush(context: ChannelHandlerContext) {
        context.flush()
    }

    private func disconnect(_ done: EventLoopPromise<Void>, context: ChannelHandlerContext) {
        switch phase {
        case .transmission:
            phase = .draining(done)
            if inFlight.isEmpty { sendDisconnect(context: context) }
        case .draining(let earlier):
            earlier.futureResult.cascade(to: done)
        case .handshake, .closed:
            phase = .closed(NBDError(.disconnected, "disconnected"))
            context.close().whenComplete { _ in done.succeed(()) }
        }
    }

    private func sendDisconnect(context: ChannelHandlerContext) {
        guard case .draining(let done) = phase else { return }
        phase = .closed(NBDError(.disconnected, "disconnected"))
        var header = context.channel.allocator.buffer(capacity: NBDWire.requestHeaderSize)
        header.writeNBDRequest(NBDRequestHeader(command: .disconnect, cookie: nextCookie, offset: 0, length: 0))
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(header)).whenComplete { _ in
            channel.close().whenComplete { _ in done.succeed(()) }
        }
    }

    // MARK: - Failure

    /// Fails the handshake and every in-flight request with `error`, and closes the channel.
    private func shutDown(with error: NBDError, context: ChannelHandlerContext, close: Bool) {
        switch phase {
        case .handshake:
            handshakePromise.fail(error)
        case .draining(let done):
            done.succeed(())
        case .transmission, .closed:
            break
        }
        if case .closed = phase {} else { phase = .closed(error) }
        let entries = inFlight
        inFlight.removeAll()
        for entry in entries.values {
            entry.timeout?.cancel()
            entry.promise.fail(error)
        }
        pending = nil
        if close { context.close(promise: nil) }
    }
}
