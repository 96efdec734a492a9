import NIOCore

/// A successful reply to one transmission request.
public enum NBDCommandResult: Hashable, Sendable {
    /// The command succeeded (a READ's bytes went to its sink as they arrived).
    case done
    /// Block status descriptors by metadata context id.
    case blockStatus([UInt32: [NBDBlockDescriptor]])
}

/// The whole life of one NBD connection, with no I/O: the handshake, then pipelined requests
/// and their replies, then the disconnect.
///
/// The caller (a channel handler) reports events: `requestSubmitted`, `bytesReceived`,
/// `tlsEstablished`, `timerFired`, `disconnectRequested`, `channelClosed`, `errorCaught`. Each
/// returns the first thing to do; after performing it, the caller calls `nextAction()` until it
/// answers `.wait` (one event, such as a buffer holding many replies, may need many actions).
///
/// Requests are known by their cookie: the caller keeps what belongs to its side (promises,
/// destinations, timers) in a table by cookie and does what the actions say. Every decision is
/// made here: which request a reply belongs to, whether structured READ chunks cover the request,
/// when a request is complete, which error it fails with, timeouts, the drain before
/// NBD_CMD_DISC, and what fails when the connection ends.
public struct NBDConnectionStateMachine: Sendable {
    /// What the caller must do next.
    public enum Action: Sendable {
        /// Nothing, until the next event.
        case wait
        /// Write and flush these handshake bytes.
        case write(ByteBuffer)
        /// Write and flush these bytes (if any), start the TLS client handshake, then report `tlsEstablished()`.
        case writeAndStartTLS(ByteBuffer)
        /// The handshake is done: transmission starts on this export.
        case negotiated(NBDExportInfo)
        /// The listing is done: hand over the exports, write `abort` (NBD_OPT_ABORT), then close.
        case listed([NBDExportListing], abort: ByteBuffer)
        /// Write the request's header and then its payload, without flushing (the submitter
        /// flushes a batch); with a `timeout`, arm a timer for `cookie` that reports `timerFired(cookie:)`.
        case sendRequest(cookie: UInt64, header: ByteBuffer, payload: [ByteBuffer], timeout: TimeAmount?)
        /// The request just submitted is not sent: fail it (it has no cookie).
        case rejectRequest(NBDError)
        /// Put these READ bytes into request `cookie`'s destination at export offset `offset`.
        case deliverData(cookie: UInt64, offset: UInt64, bytes: ByteBuffer)
        /// Zero `length` bytes of request `cookie`'s destination at export offset `offset` (a hole).
        case deliverZeroes(cookie: UInt64, offset: UInt64, length: UInt32)
        /// Request `cookie` is complete: cancel its timer and succeed it.
        case succeedRequest(cookie: UInt64, NBDCommandResult)
        /// Request `cookie` is complete with a server error: cancel its timer and fail it. The
        /// connection stays usable.
        case failRequest(cookie: UInt64, NBDError)
        /// Every request is answered after a disconnect: write and flush `request`
        /// (NBD_CMD_DISC), then close the channel, then complete the disconnect waiters.
        case sendDisconnect(request: ByteBuffer)
        /// The connection is over: see `CloseContext` for what to fail and whether to close.
        case closeConnection(CloseContext)
    }

    /// What ending the connection involves.
    public struct CloseContext: Sendable {
        /// The error the handshake and the requests listed fail with.
        public var error: NBDError
        /// Whether the handshake was still running and must fail with `error`.
        public var failHandshake: Bool
        /// Requests in flight, in cookie order: cancel their timers and fail them with `error`.
        public var failedRequests: [UInt64]
        /// Bytes to write before closing (NBD_OPT_ABORT after a refused option), if any.
        public var farewell: ByteBuffer?
        /// Whether to close the channel (false when it is closed already).
        public var closeChannel: Bool
        /// Whether a disconnect was asked: complete its waiters (once the channel is closed).
        public var completeDisconnect: Bool
    }

    /// What the caller caught in its pipeline, sorted as the machine needs to tell them apart.
    public enum CaughtError: Sendable {
        /// An `NBDError`, passed on as it is (the handshake timeout, for one).
        case nbd(NBDError)
        /// A TLS error, described.
        case tls(String)
        /// Any other error (the socket's), described.
        case other(String)
    }

    private enum State: Sendable {
        /// Negotiating: the server's bytes go to the handshake machine.
        case handshaking
        /// Transmission: requests go out, replies come back in any order.
        case transmitting
        /// A disconnect was asked: no new requests; NBD_CMD_DISC goes out after the last reply.
        case draining
        /// Listing done, NBD_CMD_DISC sent, or failed: new requests fail with this error, bytes are ignored.
        case closed(NBDError)
    }

    private var state: State = .handshaking
    private var handshake: NBDHandshakeStateMachine
    private var decoder = NBDReplyDecoder(structuredReplies: false)
    private var requests = RequestTable()
    /// Bytes received and not yet consumed (nil when there are none, so that no receive
    /// buffer is kept alive: the channel reuses those it no longer sees referenced).
    private var incoming: ByteBuffer?
    /// Received after `incoming`: the rest of a read whose first bytes completed a reply
    /// header cut by the end of the read before (see `append`).
    private var queued: ByteBuffer?
    private var nextCookie: UInt64 = 1
    private var disconnectAsked = false
    /// How long a request may wait for its reply, if bounded.
    public let requestTimeout: TimeAmount?

    /// A connection about to read the server's greeting; `requestTimeout` bounds each request's wait for its reply.
    public init(handshake configuration: NBDHandshakeStateMachine.Configuration, requestTimeout: TimeAmount? = nil) {
        self.handshake = NBDHandshakeStateMachine(configuration: configuration)
        self.requestTimeout = requestTimeout
    }

    /// The cookies of the requests waiting for their replies, in order.
    public var requestsInFlight: [UInt64] { requests.cookies }

    // MARK: - Events

    /// The user submitted a request. Answers `.sendRequest` (with its cookie) or `.rejectRequest`.
    public mutating func requestSubmitted(
        _ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt32, payload: [ByteBuffer] = []
    ) -> Action {
        switch state {
        case .transmitting:
            break
        case .handshaking:
            return .rejectRequest(NBDError(.disconnected, "the handshake has not finished"))
        case .draining:
            return .rejectRequest(NBDError(.disconnected, "the client is disconnecting"))
        case .closed(let error):
            return .rejectRequest(error)
        }
        let cookie = nextCookie
        nextCookie &+= 1
        requests.add(cookie, NBDReplyDecoder.Expectation(command: command, offset: offset, length: length))
        var header = ByteBuffer()
        header.reserveCapacity(NBDWire.requestHeaderSize)
        header.writeNBDRequest(NBDRequestHeader(flags: flags, command: command, cookie: cookie, offset: offset, length: length))
        return .sendRequest(cookie: cookie, header: header, payload: payload, timeout: requestTimeout)
    }

    /// Bytes arrived from the server. Answers the first action they call for.
    public mutating func bytesReceived(_ bytes: ByteBuffer) -> Action {
        if case .closed = state { return .wait }  // Nothing the server says matters any more.
        append(bytes)
        return nextAction()
    }

    /// Leftovers shorter than this are joined with only as many bytes of the next read: more
    /// than any reply or chunk header with its fixed fields (32 bytes). A longer leftover is a
    /// non-data payload cut by a read (block status, an error message), joined whole.
    static let shortJoinLength = 64

    /// Adds a read's bytes after those not consumed yet. A READ's data is handed on as it
    /// arrives, so what is left over is a header cut by the end of the last read. Joining it
    /// with the whole next read would copy that read (a receive buffer's worth, into a fresh
    /// allocation); in transmission it is joined with the next read's first bytes only, and
    /// the rest of that read waits in `queued`, where it arrived.
    private mutating func append(_ bytes: ByteBuffer) {
        var bytes = bytes
        if var waiting = queued {
            // Only if bytes arrive before the last ones were decoded; order is kept.
            queued = nil
            waiting.writeBuffer(&bytes)
            bytes = waiting
        }
        guard var earlier = incoming, earlier.readableBytes > 0 else {
            incoming = bytes
            return
        }
        var joinsWhole = earlier.readableBytes >= Self.shortJoinLength
        if case .handshaking = state { joinsWhole = true }
        if joinsWhole {
            earlier.writeBuffer(&bytes)
            incoming = earlier
            return
        }
        var joined = ByteBuffer()
        joined.reserveCapacity(earlier.readableBytes + Self.shortJoinLength)
        joined.writeBuffer(&earlier)
        if var head = bytes.readSlice(length: min(bytes.readableBytes, Self.shortJoinLength)) {
            joined.writeBuffer(&head)
        }
        incoming = joined
        queued = bytes.readableBytes > 0 ? bytes : nil
    }

    /// The next action called for by the events so far, or `.wait`.
    public mutating func nextAction() -> Action {
        switch state {
        case .handshaking:
            return nextHandshakeAction()
        case .transmitting, .draining:
            return nextTransmissionAction()
        case .closed:
            return .wait
        }
    }

    /// The TLS client handshake succeeded: negotiation continues over it.
    public mutating func tlsEstablished() -> Action {
        guard case .handshaking = state else { return .wait }
        return handshakeAction(handshake.tlsEstablished())
    }

    /// The timer armed for request `cookie` fired before the timer was cancelled.
    public mutating func timerFired(cookie: UInt64) -> Action {
        switch state {
        case .transmitting, .draining:
            guard let expectation = requests.expectation(cookie), let timeout = requestTimeout else { return .wait }
            let milliseconds = timeout.nanoseconds / 1_000_000
            return close(with: NBDError(.timeout, "no reply to \(expectation.command) within \(milliseconds) ms"), closeChannel: true)
        case .handshaking, .closed:
            return .wait
        }
    }

    /// The user asked to disconnect: in-flight requests are answered first, then NBD_CMD_DISC
    /// is sent and the channel closed. The caller completes its waiters when told.
    public mutating func disconnectRequested() -> Action {
        disconnectAsked = true
        switch state {
        case .transmitting:
            state = .draining
            return requests.isEmpty ? sendDisconnect() : .wait
        case .draining:
            return .wait  // Already on its way; the waiters complete together.
        case .handshaking, .closed:
            return close(with: NBDError(.disconnected, "disconnected"), closeChannel: true)
        }
    }

    /// The channel closed (whoever closed it).
    public mutating func channelClosed() -> Action {
        switch state {
        case .handshaking:
            return close(with: handshake.connectionClosed(), closeChannel: false)
        case .transmitting:
            return close(with: NBDError(.connectionLost, "server closed the connection"), closeChannel: false)
        case .draining:
            return close(with: NBDError(.disconnected, "disconnected"), closeChannel: false)
        case .closed:
            return .wait  // Everything was failed or completed when it closed.
        }
    }

    /// The pipeline caught an error: the connection is unusable.
    public mutating func errorCaught(_ caught: CaughtError) -> Action {
        let error: NBDError
        switch (caught, state) {
        case (.nbd(let nbdError), _):
            error = nbdError
        case (.tls(let description), .handshaking):
            error = NBDError(.tlsFailure, "TLS handshake failed: \(description)")
        case (.tls(let description), _), (.other(let description), _):
            error = NBDError(.connectionLost, description)
        }
        return close(with: error, closeChannel: true)
    }

    // MARK: - Handshake

    private mutating func nextHandshakeAction() -> Action {
        guard var buffer = incoming else { return .wait }
        let action = handshake.receive(&buffer)
        incoming = buffer.readableBytes > 0 ? buffer : nil
        return handshakeAction(action)
    }

    private mutating func handshakeAction(_ action: NBDHandshakeStateMachine.Action) -> Action {
        switch action {
        case .wait:
            return .wait
        case .send(let bytes):
            return .write(bytes)
        case .sendAndStartTLS(let bytes):
            return .writeAndStartTLS(bytes)
        case .negotiated(let info):
            decoder = NBDReplyDecoder(structuredReplies: info.structuredReplies)
            state = .transmitting
            return .negotiated(info)
        case .listed(let exports, let abort):
            state = .closed(NBDError(.disconnected, "listing finished"))
            incoming = nil
            queued = nil
            return .listed(exports, abort: abort)
        case .fail(let error, let farewell):
            var action = close(with: error, closeChannel: true)
            if case .closeConnection(var context) = action {
                context.farewell = farewell
                action = .closeConnection(context)
            }
            return action
        }
    }

    // MARK: - Transmission

    private mutating func nextTransmissionAction() -> Action {
        while true {
            if case .draining = state, requests.isEmpty { return sendDisconnect() }
            let event: NBDReplyDecoder.Event
            do {
                guard let decoded = try decodeNextEvent() else { return .wait }
                event = decoded
            } catch {
                return close(with: error, closeChannel: true)
            }
            do {
                if let action = try requests.apply(event, structuredReplies: decoder.structuredReplies) { return action }
            } catch {
                return close(with: error, closeChannel: true)
            }
        }
    }

    /// The next reply event from the bytes received, or nil when more are needed.
    private mutating func decodeNextEvent() throws(NBDError) -> NBDReplyDecoder.Event? {
        while true {
            // Even with no bytes left the decoder may have an event: the `.done` after a payload.
            var buffer = incoming ?? ByteBuffer()
            // The buffer and decoder are worked on as copies so that the lookup below may read
            // `self` (the copies share storage: nothing is copied).
            var decoder = self.decoder
            let event = try decoder.next(&buffer) { self.requests.expectation($0) }
            self.decoder = decoder
            incoming = buffer.readableBytes > 0 ? buffer : nil
            if let event { return event }
            guard let waiting = queued else { return nil }
            queued = nil
            append(waiting)
        }
    }

    private mutating func sendDisconnect() -> Action {
        state = .closed(NBDError(.disconnected, "disconnected"))
        incoming = nil
        queued = nil
        var request = ByteBuffer()
        request.writeNBDRequest(NBDRequestHeader(command: .disconnect, cookie: nextCookie, offset: 0, length: 0))
        return .sendDisconnect(request: request)
    }

    // MARK: - Ending

    /// Ends the connection with `error`: the handshake (if running) and every request in flight
    /// fail with it, and later requests fail with the first such error.
    private mutating func close(with error: NBDError, closeChannel: Bool) -> Action {
        let failHandshake: Bool
        switch state {
        case .handshaking:
            failHandshake = true
            state = .closed(error)
        case .transmitting, .draining:
            failHandshake = false
            state = .closed(error)
        case .closed:
            failHandshake = false  // Keeps its first error.
        }
        incoming = nil
        queued = nil
        return .closeConnection(CloseContext(
            error: error,
            failHandshake: failHandshake,
            failedRequests: requests.removeAll(),
            farewell: nil,
            closeChannel: closeChannel,
            completeDisconnect: disconnectAsked
        ))
    }
}
