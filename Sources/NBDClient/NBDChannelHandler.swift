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

/// What the handshake produced.
enum NBDHandshakeOutcome: Sendable {
    case negotiated(NBDExportInfo)
    case listed([NBDExportListing])
}

/// The one adapter between the socket and `NBDConnectionStateMachine`: it reports every event
/// to the machine and performs the actions it answers, keeping by cookie what the machine must
/// not hold (promises, READ destinations, timers).
final class NBDChannelHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = NBDChannelCommand
    typealias OutboundOut = ByteBuffer

    /// The caller's side of one request in flight.
    private struct Waiter {
        var promise: EventLoopPromise<NBDCommandResult>
        var sink: NBDReadSink?
        var timer: Scheduled<Void>?
        /// Bytes of data its reply may carry (a read's length; 0 for other commands).
        var replyBytes = 0
    }

    private var machine: NBDConnectionStateMachine
    private let handshakePromise: EventLoopPromise<NBDHandshakeOutcome>
    private let tlsHandlerFactory: (@Sendable () throws -> NIOSSLClientHandler)?
    private var waiters: [UInt64: Waiter] = [:]
    private var disconnectWaiters: [EventLoopPromise<Void>] = []
    private var context: ChannelHandlerContext?

    /// This connection's part of a shared receive-buffer budget.
    struct BufferShare {
        let budget: NBDReceiveBufferBudget
        /// Most buffers beyond the first that a busy connection borrows.
        let wanted: Int
        let bufferSize: Int
        var borrowed = 0
        /// Gives the borrowed buffers back a tenth of a second after the last reply, unless busy
        /// again: a client's pause between requests does not drop its buffers.
        var release: Scheduled<Void>?
    }

    private var bufferShare: BufferShare?
    /// Data the replies in flight may carry: what the borrowed buffers are for.
    private var replyBytesInFlight = 0

    init(
        configuration: NBDHandshakeStateMachine.Configuration,
        handshakePromise: EventLoopPromise<NBDHandshakeOutcome>,
        requestTimeout: TimeAmount?,
        tlsHandlerFactory: (@Sendable () throws -> NIOSSLClientHandler)?,
        bufferShare: BufferShare? = nil
    ) {
        self.machine = NBDConnectionStateMachine(handshake: configuration, requestTimeout: requestTimeout)
        self.handshakePromise = handshakePromise
        self.tlsHandlerFactory = tlsHandlerFactory
        self.bufferShare = bufferShare
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        giveBackBuffers(context: nil)
    }

    // MARK: - Receive buffers

    /// Borrows a buffer for each buffer's worth of data the requests in flight ask for beyond
    /// the first (a reply's bytes stay in them until its reader has passed them on; the
    /// connection's own buffer is the first), up to `wanted`; gives them back a tenth of a
    /// second after the last reply. Borrowing the whole pool at once let 20 streams, each with
    /// 1 MiB asked for, hold the whole 64 MiB budget; one stream reads no faster with more
    /// than it can fill.
    private func requestsInFlightChanged(context: ChannelHandlerContext) {
        guard var share = bufferShare else { return }
        if waiters.isEmpty {
            guard share.borrowed > 0, share.release == nil else { return }
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            share.release = context.eventLoop.scheduleTask(in: .milliseconds(100)) {
                let handler = handler.value
                handler.bufferShare?.release = nil
                handler.giveBackBuffers(context: handler.context)
            }
        } else {
            share.release?.cancel()
            share.release = nil
            // The connection's own buffer holds the first buffer's worth.
            let needed = min(share.wanted, max(0, replyBytesInFlight / share.bufferSize - 1))
            guard needed > share.borrowed else { bufferShare = share; return }
            let granted = share.budget.borrow(upTo: needed - share.borrowed, of: share.bufferSize)
            if granted > 0 {
                share.borrowed += granted
                try? context.channel.syncOptions?.setOption(.maxMessagesPerRead, value: UInt(1 + share.borrowed))
            }
        }
        bufferShare = share
    }

    /// Returns what was borrowed; the channel's pool drops all but one buffer.
    private func giveBackBuffers(context: ChannelHandlerContext?) {
        guard var share = bufferShare, share.borrowed > 0 else { return }
        share.release?.cancel()
        share.release = nil
        share.budget.giveBack(share.borrowed, of: share.bufferSize)
        share.borrowed = 0
        bufferShare = share
        try? context?.channel.syncOptions?.setOption(.maxMessagesPerRead, value: 1)
    }

    // MARK: - Events

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        run(machine.bytesReceived(unwrapInboundIn(data)), context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted = event as? TLSUserEvent {
            run(machine.tlsEstablished(), context: context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        run(machine.channelClosed(), context: context)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let caught: NBDConnectionStateMachine.CaughtError
        if let error = error as? NBDError {
            caught = .nbd(error)
        } else if error is NIOSSLError || error is BoringSSLError {
            // NIOSSL's own descriptions name its internal types; users get plain words.
            caught = .tls(NBDClient.plainDescription(of: error))
        } else {
            caught = .other("\(error)")
        }
        run(machine.errorCaught(caught), context: context)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        promise?.succeed(())
        switch unwrapOutboundIn(data) {
        case .request(let request):
            let action = machine.requestSubmitted(
                request.command, flags: request.flags, offset: request.offset, length: request.length, payload: request.payload
            )
            run(action, submitted: request, context: context)
        case .disconnect(let done):
            disconnectWaiters.append(done)
            run(machine.disconnectRequested(), context: context)
        }
    }

    func flush(context: ChannelHandlerContext) {
        context.flush()
    }

    // MARK: - Actions

    /// Performs `action`, then every action the machine has next, until it waits.
    /// `submitted` is the request whose submission answered `action`, if it was one.
    private func run(_ action: NBDConnectionStateMachine.Action, submitted: NBDCommandRequest? = nil, context: ChannelHandlerContext) {
        var action = action
        var submitted = submitted
        while true {
            if case .wait = action {
                requestsInFlightChanged(context: context)
                return
            }
            perform(action, submitted: submitted, context: context)
            submitted = nil
            action = machine.nextAction()
        }
    }

    private func perform(_ action: NBDConnectionStateMachine.Action, submitted: NBDCommandRequest?, context: ChannelHandlerContext) {
        switch action {
        case .wait:
            break
        case .write(let bytes):
            context.writeAndFlush(wrapOutboundOut(bytes), promise: nil)
        case .writeAndStartTLS(let bytes):
            if bytes.readableBytes > 0 { context.writeAndFlush(wrapOutboundOut(bytes), promise: nil) }
            startTLS(context: context)
        case .negotiated(let info):
            handshakePromise.succeed(.negotiated(info))
        case .listed(let exports, let abort):
            handshakePromise.succeed(.listed(exports))
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(abort)).whenComplete { _ in channel.close(promise: nil) }
        case .sendRequest(let cookie, let header, let payload, let timeout):
            guard let submitted else { preconditionFailure("the machine sent a request nobody submitted") }
            var waiter = Waiter(promise: submitted.promise, sink: submitted.sink)
            if let timeout { waiter.timer = armTimer(for: cookie, after: timeout, context: context) }
            if submitted.command == .read { waiter.replyBytes = Int(submitted.length) }
            replyBytesInFlight += waiter.replyBytes
            waiters[cookie] = waiter
            context.write(wrapOutboundOut(header), promise: nil)
            for piece in payload {
                context.write(wrapOutboundOut(piece), promise: nil)
            }
        case .rejectRequest(let error):
            submitted?.promise.fail(error)
        case .deliverData(let cookie, let offset, let bytes):
            waiters[cookie]?.sink?.write(bytes, at: offset)
        case .deliverZeroes(let cookie, let offset, let length):
            waiters[cookie]?.sink?.zero(at: offset, length: Int(length))
        case .succeedRequest(let cookie, let result):
            guard let waiter = removeWaiter(cookie) else { return }
            waiter.promise.succeed(result)
        case .failRequest(let cookie, let error):
            guard let waiter = removeWaiter(cookie) else { return }
            waiter.promise.fail(error)
        case .sendDisconnect(let request):
            let channel = context.channel
            let done = takeDisconnectWaiters()
            context.writeAndFlush(wrapOutboundOut(request)).whenComplete { _ in
                channel.close().whenComplete { _ in done.forEach { $0.succeed(()) } }
            }
        case .closeConnection(let close):
            if let farewell = close.farewell { context.writeAndFlush(wrapOutboundOut(farewell), promise: nil) }
            if close.failHandshake { handshakePromise.fail(close.error) }
            for cookie in close.failedRequests {
                guard let waiter = removeWaiter(cookie) else { continue }
                waiter.promise.fail(close.error)
            }
            let done = close.completeDisconnect ? takeDisconnectWaiters() : []
            if close.closeChannel {
                context.close().whenComplete { _ in done.forEach { $0.succeed(()) } }
            } else {
                done.forEach { $0.succeed(()) }
            }
        }
    }

    /// The waiter of a request that has ended, its timer stopped and its bytes no longer counted.
    private func removeWaiter(_ cookie: UInt64) -> Waiter? {
        guard let waiter = waiters.removeValue(forKey: cookie) else { return nil }
        waiter.timer?.cancel()
        replyBytesInFlight -= waiter.replyBytes
        return waiter
    }

    private func startTLS(context: ChannelHandlerContext) {
        guard let factory = tlsHandlerFactory else {
            run(machine.errorCaught(.nbd(NBDError(.tlsFailure, "TLS requested without a TLS configuration"))), context: context)
            return
        }
        do {
            try context.pipeline.syncOperations.addHandler(factory(), position: .first)
        } catch {
            run(machine.errorCaught(.nbd(NBDError(.tlsFailure, "cannot start TLS: \(error)"))), context: context)
        }
    }

    private func armTimer(for cookie: UInt64, after timeout: TimeAmount, context: ChannelHandlerContext) -> Scheduled<Void> {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        return context.eventLoop.scheduleTask(in: timeout) {
            let handler = handler.value
            guard let context = handler.context else { return }
            handler.run(handler.machine.timerFired(cookie: cookie), context: context)
        }
    }

    private func takeDisconnectWaiters() -> [EventLoopPromise<Void>] {
        defer { disconnectWaiters.removeAll() }
        return disconnectWaiters
    }
}
