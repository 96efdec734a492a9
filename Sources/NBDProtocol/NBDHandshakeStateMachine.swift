import NIOCore

/// The client side of the NBD handshake (fixed newstyle), with no I/O.
///
/// Feed it the bytes the server sends with `receive(_:)` (call it until it answers `.wait`),
/// tell it when TLS is up with `tlsEstablished()` and when the socket closes with
/// `connectionClosed()`. Each call returns the one thing the caller must do next.
///
/// Negotiation order (as the specification recommends): STARTTLS (if asked) → STRUCTURED_REPLY
/// → SET_META_CONTEXT (if structured replies were accepted) → GO asking for block sizes, falling
/// back to EXPORT_NAME when GO is unsupported. Listing: LIST → ABORT.
public struct NBDHandshakeStateMachine: Sendable {
    /// What the handshake is for.
    public enum Goal: Hashable, Sendable {
        /// Enter transmission on this export.
        case negotiate(exportName: String)
        /// List the server's exports, then end the session.
        case list
    }

    public struct Configuration: Hashable, Sendable {
        public var goal: Goal
        /// Ask for TLS with STARTTLS before anything else.
        public var useTLS: Bool
        /// Ask for structured replies.
        public var structuredReplies: Bool
        /// Metadata contexts to request (needs structured replies).
        public var metaContexts: [String]
        /// When not empty: first ask which contexts the export offers (NBD_OPT_LIST_META_CONTEXT),
        /// then request also every one offered whose name starts with one of these.
        public var listedContextPrefixes: [String]

        public init(
            goal: Goal, useTLS: Bool = false, structuredReplies: Bool = true, metaContexts: [String] = [NBDMetaContext.baseAllocation],
            listedContextPrefixes: [String] = []
        ) {
            self.goal = goal
            self.useTLS = useTLS
            self.structuredReplies = structuredReplies
            self.metaContexts = metaContexts
            self.listedContextPrefixes = listedContextPrefixes
        }
    }

    /// What the caller must do next.
    public enum Action: Sendable {
        /// Need more bytes from the server.
        case wait
        /// Write these bytes, then call `receive` again.
        case send(ByteBuffer)
        /// Write these bytes (if any), then run the TLS client handshake and call `tlsEstablished()`.
        case sendAndStartTLS(ByteBuffer)
        /// Handshake complete: transmission starts. Bytes left in the buffer belong to it.
        case negotiated(NBDExportInfo)
        /// Listing complete: write these bytes (NBD_OPT_ABORT), then close; a hang-up is fine.
        case listed([NBDExportListing], abort: ByteBuffer)
        /// Handshake failed: close the connection (after writing `farewell`, if any).
        case fail(NBDError, farewell: ByteBuffer?)
    }

    private enum State: Sendable {
        /// Waiting for the 18-byte newstyle greeting.
        case awaitingGreeting
        /// Waiting for the reply to an option, with what has been gathered from earlier replies.
        case awaitingOptionReply(NBDOption, Progress)
        /// Running the TLS handshake the server accepted.
        case tlsHandshaking(Progress)
        /// Waiting for the reply to NBD_OPT_EXPORT_NAME (GO was unsupported).
        case awaitingExportNameReply(Progress)
        /// Done: transmission started, listing delivered, or failed. Nothing more is accepted.
        case finished
    }

    public let configuration: Configuration
    private var state: State = .awaitingGreeting

    public init(configuration: Configuration) {
        self.configuration = configuration
    }

    /// Whether the machine wants more bytes (the transmission phase has not begun, nothing failed).
    public var isActive: Bool {
        if case .finished = state { return false }
        return true
    }

    private var exportName: String? {
        if case .negotiate(let name) = configuration.goal { return name }
        return nil
    }

    /// Consumes server messages from `buffer` until one needs the caller to act, and says what
    /// to do next; `.wait` means every complete message was consumed.
    public mutating func receive(_ buffer: inout ByteBuffer) -> Action {
        while true {
            let before = buffer.readerIndex
            let action = receiveOne(&buffer)
            // Intermediate replies (INFO, SERVER, META_CONTEXT) need nothing from the caller.
            if case .wait = action, buffer.readerIndex != before { continue }
            return action
        }
    }

    private mutating func receiveOne(_ buffer: inout ByteBuffer) -> Action {
        switch state {
        case .awaitingGreeting:
            return receiveGreeting(&buffer)
        case .awaitingOptionReply(let option, let progress):
            return receiveOptionReply(&buffer, option: option, progress: progress)
        case .awaitingExportNameReply(let progress):
            return receiveExportNameReply(&buffer, progress: progress)
        case .tlsHandshaking:
            // Bytes during the TLS handshake belong to TLS, not to us.
            return .wait
        case .finished:
            return .wait
        }
    }

    /// The TLS handshake succeeded: continue negotiating over the secure channel.
    public mutating func tlsEstablished() -> Action {
        guard case .tlsHandshaking(let progress) = state else {
            return fail(.violation("TLS established in an unexpected handshake state"))
        }
        var out = ByteBuffer()
        return afterTLS(progress, into: &out)
    }

    /// The connection closed: says which error that means in the current state.
    public mutating func connectionClosed() -> NBDError {
        let error: NBDError
        switch state {
        case .awaitingExportNameReply:
            // EXPORT_NAME has no error path: servers hang up on unknown exports.
            error = NBDError(.unknownExport, "server closed the connection after NBD_OPT_EXPORT_NAME", exportName: exportName)
        case .awaitingGreeting:
            error = NBDError(.connectionLost, "server closed the connection before its greeting")
        case .finished:
            error = NBDError(.connectionLost, "connection closed")
        default:
            error = NBDError(.connectionLost, "server closed the connection during the handshake")
        }
        state = .finished
        return error
    }

    // MARK: - Greeting

    private mutating func receiveGreeting(_ buffer: inout ByteBuffer) -> Action {
        guard buffer.readableBytes >= 16 else { return .wait }
        guard let (magic, second) = buffer.getMultipleIntegers(at: buffer.readerIndex, as: (UInt64, UInt64).self) else { return .wait }
        guard magic == NBDWire.greetingMagic else {
            return fail(.violation("bad greeting magic 0x\(String(magic, radix: 16))"))
        }
        if second == NBDWire.oldstyleMagic {
            if configuration.goal == .list {
                return fail(NBDError(.listingUnsupported, "oldstyle server cannot list exports"))
            }
            return fail(NBDError(.unsupportedServer, "oldstyle negotiation is not supported"))
        }
        guard second == NBDWire.optionMagic else {
            return fail(.violation("bad greeting magic 0x\(String(second, radix: 16))"))
        }
        guard buffer.readableBytes >= 18 else { return .wait }
        buffer.moveReaderIndex(forwardBy: 16)
        guard let rawFlags = buffer.readInteger(as: UInt16.self) else { return .wait }
        let serverFlags = NBDHandshakeFlags(rawValue: rawFlags)
        guard serverFlags.contains(.fixedNewstyle) else {
            return fail(NBDError(.unsupportedServer, "server does not support fixed newstyle negotiation"))
        }
        var progress = Progress()
        var clientFlags: NBDClientFlags = [.fixedNewstyle]
        if serverFlags.contains(.noZeroes) {
            clientFlags.insert(.noZeroes)
            progress.noZeroes = true
        }
        var out = ByteBuffer()
        out.writeInteger(clientFlags.rawValue)
        if configuration.useTLS {
            out.writeNBDOption(.startTLS)
            state = .awaitingOptionReply(.startTLS, progress)
            return .send(out)
        }
        return afterTLS(progress, into: &out)
    }

    /// Everything after the (optional) TLS upgrade starts here.
    private mutating func afterTLS(_ progress: Progress, into out: inout ByteBuffer) -> Action {
        switch configuration.goal {
        case .list:
            return sendOption(.list, payload: ByteBuffer(), progress: progress, into: &out)
        case .negotiate:
            if configuration.structuredReplies {
                return sendOption(.structuredReply, payload: ByteBuffer(), progress: progress, into: &out)
            }
            return sendGo(progress, into: &out)
        }
    }

    private mutating func sendOption(_ option: NBDOption, payload: ByteBuffer, progress: Progress, into out: inout ByteBuffer) -> Action {
        out.writeNBDOption(option, payload: payload)
        state = .awaitingOptionReply(option, progress)
        return .send(out)
    }

    private mutating func sendGo(_ progress: Progress, into out: inout ByteBuffer) -> Action {
        let payload = NBDOptionPayload.go(
            exportName: exportName ?? "",
            infoRequests: [NBDInfoType.blockSize, NBDInfoType.name, NBDInfoType.description]
        )
        return sendOption(.go, payload: payload, progress: progress, into: &out)
    }

    private mutating func sendMetaContextOrGo(_ progress: Progress) -> Action {
        var out = ByteBuffer()
        if progress.structuredReplies && !configuration.listedContextPrefixes.isEmpty {
            // No queries: the server lists every context the export offers.
            let payload = NBDOptionPayload.metaContext(exportName: exportName ?? "", queries: [])
            return sendOption(.listMetaContext, payload: payload, progress: progress, into: &out)
        }
        return sendSetMetaContextOrGo(progress)
    }

    /// SET_META_CONTEXT for the configured contexts and the listed ones wanted, or straight to GO.
    private mutating func sendSetMetaContextOrGo(_ progress: Progress) -> Action {
        var out = ByteBuffer()
        var progress = progress
        var wanted = configuration.metaContexts
        for name in progress.availableMetaContexts
        where !wanted.contains(name) && configuration.listedContextPrefixes.contains(where: { name.hasPrefix($0) }) {
            wanted.append(name)
        }
        progress.requestedMetaContexts = wanted
        if progress.structuredReplies && !wanted.isEmpty {
            let payload = NBDOptionPayload.metaContext(exportName: exportName ?? "", queries: wanted)
            return sendOption(.setMetaContext, payload: payload, progress: progress, into: &out)
        }
        return sendGo(progress, into: &out)
    }

    // MARK: - Option replies

    private mutating func receiveOptionReply(_ buffer: inout ByteBuffer, option: NBDOption, progress: Progress) -> Action {
        guard let (magic, replyOption, replyType, length) = buffer.getMultipleIntegers(
            at: buffer.readerIndex, as: (UInt64, UInt32, UInt32, UInt32).self
        ) else { return .wait }
        guard magic == NBDWire.optionReplyMagic else {
            return fail(.violation("bad option reply magic 0x\(String(magic, radix: 16))"))
        }
        guard replyOption == option.rawValue else {
            return fail(.violation("reply for option \(replyOption) while waiting for \(option)"))
        }
        guard length <= NBDWire.maximumMetadataPayload else {
            return fail(.violation("option reply of \(length) bytes exceeds the \(NBDWire.maximumMetadataPayload)-byte limit"))
        }
        guard buffer.readableBytes >= NBDWire.optionReplyHeaderSize + Int(length) else { return .wait }
        buffer.moveReaderIndex(forwardBy: NBDWire.optionReplyHeaderSize)
        guard var payload = buffer.readSlice(length: Int(length)) else { return .wait }

        if NBDOptionError.isError(replyType) {
            let message = payload.readString(length: payload.readableBytes) ?? ""
            return optionFailed(option, NBDOptionError(rawValue: replyType), message: message, progress: progress)
        }
        switch option {
        case .startTLS:
            guard replyType == NBDOptionReplyType.ack else { return unexpectedReply(replyType, option) }
            state = .tlsHandshaking(progress)
            return .sendAndStartTLS(ByteBuffer())
        case .structuredReply:
            guard replyType == NBDOptionReplyType.ack else { return unexpectedReply(replyType, option) }
            var progress = progress
            progress.structuredReplies = true
            return sendMetaContextOrGo(progress)
        case .setMetaContext:
            return metaContextReply(replyType, &payload, progress: progress)
        case .listMetaContext:
            return listMetaContextReply(replyType, &payload, progress: progress)
        case .go:
            return goReply(replyType, &payload, progress: progress)
        case .list:
            return listReply(replyType, &payload, progress: progress)
        default:
            return fail(.violation("reply to an option this client never sends: \(option)"))
        }
    }

    private mutating func optionFailed(_ option: NBDOption, _ error: NBDOptionError, message: String, progress: Progress) -> Action {
        let detail = message.isEmpty ? "\(option) refused" : "\(option) refused: \(message)"
        if error == .tlsRequired {
            return fail(NBDError(.tlsRequired, detail, optionError: error, exportName: exportName), abort: true)
        }
        switch option {
        case .startTLS:
            return fail(NBDError(.tlsFailure, detail, optionError: error), abort: true)
        case .structuredReply:
            // Optional: carry on with simple replies.
            return sendMetaContextOrGo(progress)
        case .listMetaContext:
            // Optional: request the configured contexts only.
            var progress = progress
            progress.availableMetaContexts = []
            return sendSetMetaContextOrGo(progress)
        case .setMetaContext:
            // Optional: carry on without block status.
            var progress = progress
            progress.metaContexts = [:]
            var out = ByteBuffer()
            return sendGo(progress, into: &out)
        case .go:
            if error == .unsupported {
                var out = ByteBuffer()
                out.writeNBDOption(.exportName, payload: NBDOptionPayload.exportName(exportName ?? ""))
                state = .awaitingExportNameReply(progress)
                return .send(out)
            }
            if error == .unknown {
                return fail(NBDError(.unknownExport, detail, optionError: error, exportName: exportName), abort: true)
            }
            return fail(NBDError(.optionRefused, detail, optionError: error, exportName: exportName), abort: true)
        case .list:
            if error == .policy {
                return fail(NBDError(.listingRefused, detail, optionError: error), abort: true)
            }
            if error == .unsupported {
                return fail(NBDError(.listingUnsupported, detail, optionError: error), abort: true)
            }
            return fail(NBDError(.optionRefused, detail, optionError: error), abort: true)
        default:
            return fail(NBDError(.optionRefused, detail, optionError: error), abort: true)
        }
    }

    private mutating func metaContextReply(_ replyType: UInt32, _ payload: inout ByteBuffer, progress: Progress) -> Action {
        var progress = progress
        switch replyType {
        case NBDOptionReplyType.metaContext:
            do { try progress.recordMetaContext(&payload, asked: progress.requestedMetaContexts) } catch { return fail(error) }
            state = .awaitingOptionReply(.setMetaContext, progress)
            return .wait
        case NBDOptionReplyType.ack:
            var out = ByteBuffer()
            return sendGo(progress, into: &out)
        default:
            return unexpectedReply(replyType, .setMetaContext)
        }
    }

    private mutating func listMetaContextReply(_ replyType: UInt32, _ payload: inout ByteBuffer, progress: Progress) -> Action {
        var progress = progress
        switch replyType {
        case NBDOptionReplyType.metaContext:
            do { try progress.recordAvailableMetaContext(&payload) } catch { return fail(error) }
            state = .awaitingOptionReply(.listMetaContext, progress)
            return .wait
        case NBDOptionReplyType.ack:
            return sendSetMetaContextOrGo(progress)
        default:
            return unexpectedReply(replyType, .listMetaContext)
        }
    }

    private mutating func goReply(_ replyType: UInt32, _ payload: inout ByteBuffer, progress: Progress) -> Action {
        var progress = progress
        switch replyType {
        case NBDOptionReplyType.info:
            do { try progress.recordInfo(&payload) } catch { return fail(error) }
            state = .awaitingOptionReply(.go, progress)
            return .wait
        case NBDOptionReplyType.ack:
            guard let size = progress.size else {
                return fail(.violation("NBD_OPT_GO acknowledged without NBD_INFO_EXPORT"))
            }
            return negotiated(size: size, progress: progress)
        default:
            return unexpectedReply(replyType, .go)
        }
    }

    private mutating func listReply(_ replyType: UInt32, _ payload: inout ByteBuffer, progress: Progress) -> Action {
        var progress = progress
        switch replyType {
        case NBDOptionReplyType.server:
            do { try progress.recordServer(&payload) } catch { return fail(error) }
            state = .awaitingOptionReply(.list, progress)
            return .wait
        case NBDOptionReplyType.ack:
            state = .finished
            var abort = ByteBuffer()
            abort.writeNBDOption(.abort)
            return .listed(progress.exports, abort: abort)
        default:
            return unexpectedReply(replyType, .list)
        }
    }

    // MARK: - EXPORT_NAME fallback

    private mutating func receiveExportNameReply(_ buffer: inout ByteBuffer, progress: Progress) -> Action {
        let length = progress.noZeroes ? 10 : 134
        guard buffer.readableBytes >= length,
              let (size, flags) = buffer.readMultipleIntegers(as: (UInt64, UInt16).self)
        else { return .wait }
        buffer.moveReaderIndex(forwardBy: length - 10)
        guard size <= NBDWire.maximumExportSize else {
            return fail(.violation("export size \(size) exceeds \(NBDWire.maximumExportSize)"))
        }
        var progress = progress
        progress.flags = NBDTransmissionFlags(rawValue: flags)
        return negotiated(size: size, progress: progress)
    }

    // MARK: - Endings

    private mutating func negotiated(size: UInt64, progress: Progress) -> Action {
        state = .finished
        let info = progress.exportInfo(name: exportName ?? "", size: size)
        return .negotiated(info)
    }

    private mutating func unexpectedReply(_ replyType: UInt32, _ option: NBDOption) -> Action {
        fail(.violation("unexpected reply type \(replyType) to \(option)"))
    }

    private mutating func fail(_ error: NBDError, abort: Bool = false) -> Action {
        state = .finished
        guard abort else { return .fail(error, farewell: nil) }
        var farewell = ByteBuffer()
        farewell.writeNBDOption(.abort)
        return .fail(error, farewell: farewell)
    }
}
