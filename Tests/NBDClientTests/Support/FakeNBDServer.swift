import NBDTestSupport
import Foundation
import NBDProtocol
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// A scripted NBD server on a Unix socket, for replies no real server sends.
///
/// It performs a correct fixed-newstyle handshake (greeting with FIXED_NEWSTYLE | NO_ZEROES,
/// STRUCTURED_REPLY, SET_META_CONTEXT `base:allocation`, GO with INFO_EXPORT and optionally
/// INFO_BLOCK_SIZE), parsing and checking every option the client sends. In transmission it
/// parses each request and hands the list of requests received so far to the script, which
/// says what to send back. Anything malformed the client sends is recorded in `problems`.
///
/// Magic numbers are written out here rather than taken from NBDProtocol, so that a wrong
/// constant in the library cannot hide behind the same constant in the server.
final class FakeNBDServer: Sendable {
    struct Export: Sendable {
        var name = ""
        var size: UInt64 = 1 << 20
        /// HAS_FLAGS | SEND_FLUSH
        var flags: UInt16 = 0x0005
        /// Whether to accept NBD_OPT_STRUCTURED_REPLY.
        var structuredReplies = true
        /// Sent as NBD_INFO_BLOCK_SIZE when set.
        var blockSize: (minimum: UInt32, preferred: UInt32, maximum: UInt32)?
    }

    /// One transmission request as received.
    struct Request: Sendable, Hashable {
        var flags: UInt16
        var command: UInt16
        var cookie: UInt64
        var offset: UInt64
        var length: UInt32
        var payload: [UInt8]
    }

    enum Action: Sendable {
        /// Write these bytes.
        case send([UInt8])
        /// Close the connection.
        case close
    }

    /// Called after each request with every request received on the connection so far
    /// (the newest last); returns what to do.
    typealias Script = @Sendable (_ requests: [Request]) -> [Action]

    let export: Export
    let socketPath: String
    private let directory: String
    private let serverChannel: any Channel
    private let recorder: FakeNBDRecorder

    /// `nbd+unix:///NAME?socket=PATH`
    var uri: String { "nbd+unix:///\(export.name)?socket=\(socketPath)" }
    /// Option codes the client sent, in order.
    var options: [UInt32] { recorder.state.withLock { $0.options } }
    /// Transmission requests received (over every connection).
    var requests: [Request] { recorder.state.withLock { $0.requests } }
    /// Things the client did wrong, as the server saw them.
    var problems: [String] { recorder.state.withLock { $0.problems } }

    private init(export: Export, socketPath: String, directory: String, serverChannel: any Channel, recorder: FakeNBDRecorder) {
        self.export = export
        self.socketPath = socketPath
        self.directory = directory
        self.serverChannel = serverChannel
        self.recorder = recorder
    }

    static func start(export: Export = Export(), script: @escaping Script) async throws -> FakeNBDServer {
        // Short, fixed base: Unix socket paths are limited to about 100 bytes.
        let directory = "/tmp/fake-nbd-\(UUID().uuidString.prefix(12))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let socketPath = directory + "/nbd.sock"
        let recorder = FakeNBDRecorder()
        do {
            let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelInitializer { child in
                    recorder.accepted(child)
                    return child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.addHandler(
                            FakeNBDServerHandler(export: export, script: script, recorder: recorder)
                        )
                    }
                }
                .bind(unixDomainSocketPath: socketPath)
                .get()
            return FakeNBDServer(export: export, socketPath: socketPath, directory: directory, serverChannel: channel, recorder: recorder)
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    /// Closes the listening socket and every accepted connection, and removes the socket.
    func stop() async {
        let connections = recorder.state.withLock { state in
            defer { state.connections = [] }
            return state.connections
        }
        for channel in connections + [serverChannel] {
            let closed = channel.eventLoop.makePromise(of: Void.self)
            channel.close(promise: closed)
            try? await closed.futureResult.get()  // Already closed is fine.
        }
        try? FileManager.default.removeItem(atPath: directory)
    }
}

/// Starts a fake server, runs `body`, and always stops the server; then expects that the
/// client sent nothing malformed.
func withFakeServer(
    export: FakeNBDServer.Export = FakeNBDServer.Export(),
    script: @escaping FakeNBDServer.Script,
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (FakeNBDServer) async throws -> Void
) async throws {
    let server = try await FakeNBDServer.start(export: export, script: script)
    do {
        try await body(server)
    } catch {
        await server.stop()
        throw error
    }
    await server.stop()
    #expect(server.problems == [], "the client sent something malformed", sourceLocation: sourceLocation)
}

/// What every connection of one server shares.
final class FakeNBDRecorder: Sendable {
    struct State {
        var options: [UInt32] = []
        var requests: [FakeNBDServer.Request] = []
        var problems: [String] = []
        var connections: [any Channel] = []
    }

    let state = Mutex(State())

    func accepted(_ channel: any Channel) { state.withLock { $0.connections.append(channel) } }
    func option(_ option: UInt32) { state.withLock { $0.options.append(option) } }
    func request(_ request: FakeNBDServer.Request) { state.withLock { $0.requests.append(request) } }
    func problem(_ problem: String) { state.withLock { $0.problems.append(problem) } }
}

/// One server connection: handshake, then scripted transmission.
final class FakeNBDServerHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum Phase {
        case clientFlags
        case options
        case transmission
        case closed
    }

    private static let greetingMagic: UInt64 = 0x4E42_444D_4147_4943  // "NBDMAGIC"
    private static let optionMagic: UInt64 = 0x4948_4156_454F_5054  // "IHAVEOPT"
    private static let optionReplyMagic: UInt64 = 0x0003_E889_0455_65A9
    private static let requestMagic: UInt32 = 0x2560_9513

    private static let repAck: UInt32 = 1
    private static let repInfo: UInt32 = 3
    private static let repMetaContext: UInt32 = 4
    private static let errUnsupported: UInt32 = 0x8000_0001
    private static let errInvalid: UInt32 = 0x8000_0003
    private static let errUnknown: UInt32 = 0x8000_0006

    private let export: FakeNBDServer.Export
    private let script: FakeNBDServer.Script
    private let recorder: FakeNBDRecorder
    private var phase = Phase.clientFlags
    private var buffer = ByteBuffer()
    private var structuredReplies = false
    /// The export named in NBD_OPT_SET_META_CONTEXT: GO must name the same one.
    private var metaContextExport: String?
    private var requests: [FakeNBDServer.Request] = []

    init(export: FakeNBDServer.Export, script: @escaping FakeNBDServer.Script, recorder: FakeNBDRecorder) {
        self.export = export
        self.script = script
        self.recorder = recorder
    }

    func channelActive(context: ChannelHandlerContext) {
        var greeting = context.channel.allocator.buffer(capacity: 18)
        greeting.writeMultipleIntegers(Self.greetingMagic, Self.optionMagic, UInt16(0x0003))  // FIXED_NEWSTYLE | NO_ZEROES
        context.writeAndFlush(wrapOutboundOut(greeting), promise: nil)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        phase = .closed
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        phase = .closed
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        process(context: context)
        buffer.discardReadBytes()
    }

    private func process(context: ChannelHandlerContext) {
        while true {
            switch phase {
            case .clientFlags:
                guard let flags = buffer.readInteger(as: UInt32.self) else { return }
                if flags & 0x1 == 0 || flags & ~UInt32(0x3) != 0 {
                    fail("client flags 0x\(String(flags, radix: 16))", context: context)
                    return
                }
                phase = .options
            case .options:
                guard let (magic, option, length) = buffer.getMultipleIntegers(
                    at: buffer.readerIndex, as: (UInt64, UInt32, UInt32).self
                ) else { return }
                guard magic == Self.optionMagic else {
                    fail("option magic 0x\(String(magic, radix: 16))", context: context)
                    return
                }
                guard buffer.readableBytes >= 16 + Int(length) else { return }
                buffer.moveReaderIndex(forwardBy: 16)
                var payload = buffer.readSlice(length: Int(length)) ?? ByteBuffer()
                recorder.option(option)
                handleOption(option, payload: &payload, context: context)
            case .transmission:
                guard let (magic, flags, command, cookie, offset, length) = buffer.getMultipleIntegers(
                    at: buffer.readerIndex, as: (UInt32, UInt16, UInt16, UInt64, UInt64, UInt32).self
                ) else { return }
                guard magic == Self.requestMagic else {
                    fail("request magic 0x\(String(magic, radix: 16))", context: context)
                    return
                }
                let payloadLength = command == 1 ? Int(length) : 0  // WRITE carries its data
                guard buffer.readableBytes >= 28 + payloadLength else { return }
                buffer.moveReaderIndex(forwardBy: 28)
                let payload = buffer.readBytes(length: payloadLength) ?? []
                if command == 2 {  // DISC: nothing may follow
                    if offset != 0 || length != 0 { recorder.problem("NBD_CMD_DISC with offset \(offset), length \(length)") }
                    close(context: context)
                    return
                }
                if length == 0 && (command == 0 || command == 1) {
                    recorder.problem("zero-length request \(command)")
                }
                if requests.contains(where: { $0.cookie == cookie }) {
                    recorder.problem("cookie \(cookie) reused")
                }
                let request = FakeNBDServer.Request(
                    flags: flags, command: command, cookie: cookie, offset: offset, length: length, payload: payload
                )
                requests.append(request)
                recorder.request(request)
                for action in script(requests) {
                    switch action {
                    case .send(let bytes):
                        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: bytes)), promise: nil)
                    case .close:
                        close(context: context)
                        return
                    }
                }
            case .closed:
                return
            }
        }
    }

    // MARK: - Options

    private func handleOption(_ option: UInt32, payload: inout ByteBuffer, context: ChannelHandlerContext) {
        switch option {
        case 8:  // STRUCTURED_REPLY
            if payload.readableBytes != 0 { recorder.problem("NBD_OPT_STRUCTURED_REPLY with a payload") }
            if export.structuredReplies {
                structuredReplies = true
                reply(option, Self.repAck, context: context)
            } else {
                reply(option, Self.errUnsupported, FakeBE.text("structured replies are off"), context: context)
            }
        case 10:  // SET_META_CONTEXT
            guard let name = readString32(&payload), let count = payload.readInteger(as: UInt32.self) else {
                invalid(option, "malformed NBD_OPT_SET_META_CONTEXT", context: context)
                return
            }
            var queries: [String] = []
            for _ in 0..<count {
                guard let query = readString32(&payload) else {
                    invalid(option, "malformed NBD_OPT_SET_META_CONTEXT query", context: context)
                    return
                }
                queries.append(query)
            }
            guard payload.readableBytes == 0 else {
                invalid(option, "trailing bytes in NBD_OPT_SET_META_CONTEXT", context: context)
                return
            }
            if !structuredReplies { recorder.problem("NBD_OPT_SET_META_CONTEXT without structured replies") }
            metaContextExport = name
            for query in queries where query == "base:allocation" {
                reply(option, Self.repMetaContext, FakeBE.u32(1) + FakeBE.text(query), context: context)
            }
            reply(option, Self.repAck, context: context)
        case 7:  // GO
            guard let name = readString32(&payload), let count = payload.readInteger(as: UInt16.self) else {
                invalid(option, "malformed NBD_OPT_GO", context: context)
                return
            }
            for _ in 0..<count {
                guard payload.readInteger(as: UInt16.self) != nil else {
                    invalid(option, "malformed NBD_OPT_GO information request", context: context)
                    return
                }
            }
            guard payload.readableBytes == 0 else {
                invalid(option, "trailing bytes in NBD_OPT_GO", context: context)
                return
            }
            if let metaContextExport, metaContextExport != name {
                recorder.problem("NBD_OPT_SET_META_CONTEXT for \"\(metaContextExport)\", then NBD_OPT_GO for \"\(name)\"")
            }
            guard name == export.name else {
                reply(option, Self.errUnknown, FakeBE.text("no export \"\(name)\""), context: context)
                return
            }
            reply(option, Self.repInfo, FakeBE.u16(0) + FakeBE.u64(export.size) + FakeBE.u16(export.flags), context: context)
            if let blockSize = export.blockSize {
                reply(option, Self.repInfo, FakeBE.u16(3) + FakeBE.u32(blockSize.minimum) + FakeBE.u32(blockSize.preferred) + FakeBE.u32(blockSize.maximum), context: context)
            }
            reply(option, Self.repAck, context: context)
            phase = .transmission
        case 2:  // ABORT
            reply(option, Self.repAck, context: context)
            close(context: context)
        default:
            reply(option, Self.errUnsupported, context: context)
        }
    }

    private func readString32(_ payload: inout ByteBuffer) -> String? {
        guard let length = payload.readInteger(as: UInt32.self), length <= payload.readableBytes else { return nil }
        return payload.readString(length: Int(length))
    }

    private func reply(_ option: UInt32, _ type: UInt32, _ payload: [UInt8] = [], context: ChannelHandlerContext) {
        var out = context.channel.allocator.buffer(capacity: 20 + payload.count)
        out.writeMultipleIntegers(Self.optionReplyMagic, option, type, UInt32(payload.count))
        out.writeBytes(payload)
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    private func invalid(_ option: UInt32, _ problem: String, context: ChannelHandlerContext) {
        recorder.problem(problem)
        reply(option, Self.errInvalid, context: context)
    }

    private func fail(_ problem: String, context: ChannelHandlerContext) {
        recorder.problem(problem)
        close(context: context)
    }

    private func close(context: ChannelHandlerContext) {
        phase = .closed
        context.close(promise: nil)
    }
}

// MARK: - Bytes a hostile server sends

/// Big-endian encoders.
typealias FakeBE = BigEndianBytes

/// Transmission replies, well-formed or not.
enum FakeReply {
    static let simpleMagic: [UInt8] = [0x67, 0x44, 0x66, 0x98]
    static let structuredMagic: [UInt8] = [0x66, 0x8E, 0x33, 0xEF]

    static func simple(cookie: UInt64, error: UInt32 = 0, data: [UInt8] = []) -> [UInt8] {
        simpleMagic + FakeBE.u32(error) + FakeBE.u64(cookie) + data
    }

    static func chunkHeader(flags: UInt16 = 0, type: UInt16, cookie: UInt64, length: UInt32) -> [UInt8] {
        structuredMagic + FakeBE.u16(flags) + FakeBE.u16(type) + FakeBE.u64(cookie) + FakeBE.u32(length)
    }

    static func chunk(flags: UInt16 = 0, type: UInt16, cookie: UInt64, payload: [UInt8]) -> [UInt8] {
        chunkHeader(flags: flags, type: type, cookie: cookie, length: UInt32(payload.count)) + payload
    }

    static func offsetData(cookie: UInt64, offset: UInt64, data: [UInt8], done: Bool = false) -> [UInt8] {
        chunk(flags: done ? 1 : 0, type: 1, cookie: cookie, payload: FakeBE.u64(offset) + data)
    }

    static func hole(cookie: UInt64, offset: UInt64, length: UInt32, done: Bool = false) -> [UInt8] {
        chunk(flags: done ? 1 : 0, type: 2, cookie: cookie, payload: FakeBE.u64(offset) + FakeBE.u32(length))
    }

    static func error(cookie: UInt64, error: UInt32, message: String = "", type: UInt16 = 0x8001, done: Bool = true) -> [UInt8] {
        chunk(flags: done ? 1 : 0, type: type, cookie: cookie, payload: FakeBE.u32(error) + FakeBE.u16(UInt16(message.utf8.count)) + FakeBE.text(message))
    }

    static func none(cookie: UInt64) -> [UInt8] {
        chunk(flags: 1, type: 0, cookie: cookie, payload: [])
    }
}

/// Deterministic test data for an export range.
func fakeData(offset: UInt64, length: Int) -> [UInt8] {
    (0..<length).map { index in
        let position = offset + UInt64(index)
        return UInt8(truncatingIfNeeded: position &* 131 &+ (position >> 9) &+ 7)
    }
}
