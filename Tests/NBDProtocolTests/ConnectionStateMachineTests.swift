import NBDProtocol
import NIOCore
import Testing

/// Byte transcripts of whole connections: every test runs its events all at once and one byte
/// at a time (`transcript`) and checks the exact actions.
@Suite("NBDConnectionStateMachine")
struct ConnectionStateMachineTests {
    typealias Machine = NBDConnectionStateMachine
    typealias Closing = Effect.Closing

    static let disk = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"))
    static let diskSimple = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), structuredReplies: false)

    /// What a server sends to negotiate "disk" (1 MiB, HAS_FLAGS | SEND_FLUSH) with structured
    /// replies and base:allocation as context 7.
    static let structuredHandshake: [UInt8] = Server.greeting(flags: 0x0003) + Server.ack(8)
        + Server.metaContext(id: 7, name: "base:allocation") + Server.ack(10)
        + Server.infoExport(size: 1 << 20, flags: 0x0005) + Server.ack(7)
    /// The same without structured replies.
    static let simpleHandshake: [UInt8] = Server.greeting(flags: 0x0003) + Server.infoExport(size: 1 << 20, flags: 0x0005) + Server.ack(7)

    static let structuredInfo = NBDExportInfo(
        name: "disk", size: 1 << 20, flags: [.hasFlags, .sendFlush], structuredReplies: true, metaContexts: ["base:allocation": 7]
    )

    /// A machine that has negotiated "disk", with structured replies or without.
    static func negotiated(structured: Bool = true, timeout: TimeAmount? = nil, sourceLocation: SourceLocation = #_sourceLocation) -> Machine {
        let machine = Machine(handshake: structured ? disk : diskSimple, requestTimeout: timeout)
        let run = ConnectionDriver.run(machine, [.server(structured ? structuredHandshake : simpleHandshake)], byteByByte: false)
        guard case .negotiated? = run.effects.last else {
            Issue.record("did not negotiate: \(run.effects)", sourceLocation: sourceLocation)
            return run.machine
        }
        return run.machine
    }

    static let structured = negotiated()
    static let simple = negotiated(structured: false)

    /// The effect of submitting a READ that goes out as cookie `cookie`.
    static func sentRead(_ cookie: UInt64, offset: UInt64 = 0, length: UInt32 = 4096, timeout: TimeAmount? = nil) -> Effect {
        .send(cookie: cookie, header: requestHeader(command: 0, cookie: cookie, offset: offset, length: length), payload: [], timeout: timeout)
    }

    static let disconnected = ErrorSummary(.disconnected, "disconnected")
    static let serverClosed = ErrorSummary(.connectionLost, "server closed the connection")

    // MARK: - Handshake

    @Test func handshakeWritesEachOptionThenNegotiates() {
        let run = transcript(Machine(handshake: Self.disk), [.server(Self.structuredHandshake)])
        #expect(run.effects == [
            .write(Client.flagsNoZeroes + Client.structuredReply),
            .write(Client.setMetaContextDisk),
            .write(Client.goDisk),
            .negotiated(Self.structuredInfo),
        ])
    }

    @Test func bytesAfterTheHandshakeAreReplies() {
        // A reply in the same buffer as GO's ACK, to a request never sent.
        let run = transcript(Machine(handshake: Self.disk), [.server(Self.structuredHandshake + Reply.simple(cookie: 1))])
        #expect(run.effects.suffix(2) == [
            .negotiated(Self.structuredInfo),
            .violation("simple reply for unknown cookie 1", failing: []),
        ])
    }

    @Test func refusedExportFailsTheHandshakeWithAFarewell() {
        let events: [ConnectionEvent] = [
            .server(Server.greeting(flags: 0x0003)), .server(Server.ack(8)), .server(Server.ack(10)),
            .server(Server.error(7, .unknown, message: "no such export")),
            .server(Reply.simple(cookie: 1)),  // ignored: the connection is over
        ]
        let run = transcript(Machine(handshake: Self.disk), events)
        #expect(run.effects.last == .close(Closing(
            error: ErrorSummary(.unknownExport, "NBD_OPT_GO refused: no such export"), failHandshake: true, farewell: Client.abort
        )))
        #expect(run.effects.count == 4)
    }

    @Test func channelClosedDuringTheHandshake() {
        let run = transcript(Machine(handshake: Self.disk), [.server(Array(Server.greeting(flags: 3).prefix(10))), .channelClosed])
        #expect(run.effects == [.close(Closing(
            error: ErrorSummary(.connectionLost, "server closed the connection before its greeting"), failHandshake: true, closeChannel: false
        ))])
    }

    @Test func requestBeforeTheHandshakeEndsIsRejected() {
        let run = transcript(Machine(handshake: Self.disk), [.read(0, 512)])
        #expect(run.effects == [.reject(ErrorSummary(.disconnected, "the handshake has not finished"))])
        #expect(run.machine.requestsInFlight.isEmpty)
    }

    @Test func startTLSThenNegotiateOverIt() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), useTLS: true, structuredReplies: false)
        let events: [ConnectionEvent] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.ack(5)),
            .tlsEstablished,
            .server(Server.infoExport(size: 4096, flags: 1) + Server.ack(7)),
        ]
        let run = transcript(Machine(handshake: configuration), events)
        #expect(run.effects == [
            .write(Client.flagsNoZeroes + Client.startTLS),
            .writeAndStartTLS([]),
            .write(Client.goDisk),
            .negotiated(NBDExportInfo(name: "disk", size: 4096, flags: [.hasFlags])),
        ])
    }

    @Test func tlsErrorDuringTheHandshakeIsATLSFailure() {
        let configuration = NBDHandshakeStateMachine.Configuration(goal: .negotiate(exportName: "disk"), useTLS: true)
        let events: [ConnectionEvent] = [.server(Server.greeting(flags: 0x0003)), .server(Server.ack(5)), .error(.tls("bad certificate"))]
        let run = transcript(Machine(handshake: configuration), events)
        #expect(run.effects.last == .close(Closing(error: ErrorSummary(.tlsFailure, "TLS handshake failed: bad certificate"), failHandshake: true)))
    }

    @Test func handshakeTimeoutFailsTheHandshake() {
        let timeout = NBDError(.timeout, "handshake did not finish within 10 s")
        let run = transcript(Machine(handshake: Self.disk), [.error(.nbd(timeout))])
        #expect(run.effects == [.close(Closing(error: ErrorSummary(timeout), failHandshake: true))])
    }

    @Test func listingEndsTheConnection() {
        let events: [ConnectionEvent] = [
            .server(Server.greeting(flags: 0x0003)),
            .server(Server.server(name: "a") + Server.server(name: "b", description: "second") + Server.ack(3)),
            .server(Reply.simple(cookie: 1)),  // ignored
            .read(0, 512),
        ]
        let run = transcript(Machine(handshake: .init(goal: .list)), events)
        #expect(run.effects == [
            .write(Client.flagsNoZeroes + Client.list),
            .listed([NBDExportListing(name: "a", description: ""), NBDExportListing(name: "b", description: "second")], abort: Client.abort),
            .reject(ErrorSummary(.disconnected, "listing finished")),
        ])
    }

    @Test func disconnectDuringTheHandshakeClosesAndFailsIt() {
        let run = transcript(Machine(handshake: Self.disk), [.disconnect])
        #expect(run.effects == [.close(Closing(error: Self.disconnected, failHandshake: true, completeDisconnect: true))])
    }

    // MARK: - Simple replies

    @Test func simpleReadReply() {
        let data = pattern(512)
        let run = transcript(Self.simple, [.read(1024, 512), .server(Reply.simple(cookie: 1, data: data))])
        #expect(coalesced(run.effects) == [
            Self.sentRead(1, offset: 1024, length: 512),
            .data(cookie: 1, offset: 1024, data),
            .succeed(cookie: 1, .done),
        ])
        #expect(run.machine.requestsInFlight.isEmpty)
    }

    @Test func writeCarriesItsPayloadAndFlags() {
        let events: [ConnectionEvent] = [
            .submit(.write, flags: .fua, offset: 4096, length: 6, payload: [[1, 2], [3, 4, 5, 6]]),
            .submit(.flush, offset: 0, length: 0),
            .server(Reply.simple(cookie: 2) + Reply.simple(cookie: 1)),
        ]
        let run = transcript(Self.simple, events)
        #expect(run.effects == [
            .send(cookie: 1, header: requestHeader(command: 1, flags: 1, cookie: 1, offset: 4096, length: 6), payload: [[1, 2], [3, 4, 5, 6]], timeout: nil),
            .send(cookie: 2, header: requestHeader(command: 3, cookie: 2, offset: 0, length: 0), payload: [], timeout: nil),
            .succeed(cookie: 2, .done),
            .succeed(cookie: 1, .done),
        ])
    }

    @Test func pipelinedRepliesInAnyOrder() {
        let events: [ConnectionEvent] = [
            .read(0, 4), .read(4, 4), .read(8, 4),
            .server(Reply.simple(cookie: 3, data: [9, 9, 9, 9]) + Reply.simple(cookie: 1, data: [1, 1, 1, 1])),
            .server(Reply.simple(cookie: 2, data: [5, 5, 5, 5])),
        ]
        let run = transcript(Self.simple, events)
        #expect(coalesced(run.effects) == [
            Self.sentRead(1, offset: 0, length: 4), Self.sentRead(2, offset: 4, length: 4), Self.sentRead(3, offset: 8, length: 4),
            .data(cookie: 3, offset: 8, [9, 9, 9, 9]), .succeed(cookie: 3, .done),
            .data(cookie: 1, offset: 0, [1, 1, 1, 1]), .succeed(cookie: 1, .done),
            .data(cookie: 2, offset: 4, [5, 5, 5, 5]), .succeed(cookie: 2, .done),
        ])
    }

    @Test func simpleErrorReplyFailsOnlyThatRequest() {
        let events: [ConnectionEvent] = [
            .read(0, 512), .read(512, 512),
            .server(Reply.simple(cookie: 1, error: 5) + Reply.simple(cookie: 2, data: pattern(512))),
            .read(0, 512),
        ]
        let run = transcript(Self.simple, events)
        #expect(coalesced(run.effects) == [
            Self.sentRead(1, length: 512), Self.sentRead(2, offset: 512, length: 512),
            .fail(cookie: 1, ErrorSummary(.serverError, "NBD_CMD_READ failed: input/output error", errno: .EIO)),
            .data(cookie: 2, offset: 512, pattern(512)), .succeed(cookie: 2, .done),
            Self.sentRead(3, length: 512),
        ])
    }

    // MARK: - Structured replies

    @Test func structuredReadChunksOutOfOrder() {
        let data = pattern(4096)
        let events: [ConnectionEvent] = [
            .read(0, 4096),
            .server(Reply.offsetData(cookie: 1, offset: 2048, data: Array(data[2048...]))),
            .server(Reply.offsetData(cookie: 1, offset: 0, data: Array(data[..<2048]), done: true)),
        ]
        let run = transcript(Self.structured, events)
        #expect(coalesced(run.effects) == [
            Self.sentRead(1),
            .data(cookie: 1, offset: 2048, Array(data[2048...])),
            .data(cookie: 1, offset: 0, Array(data[..<2048])),
            .succeed(cookie: 1, .done),
        ])
    }

    /// Replies of every kind cut into two reads at every point, then into three: the same
    /// effects as one read (data pieces joined), whichever header, payload or field the cuts fall in.
    @Test func repliesCutAtEveryPoint() {
        let data = pattern(200)
        let events: [ConnectionEvent] = [.read(0, 200), .read(4096, 300), .submit(.blockStatus, offset: 0, length: 4096), .read(8192, 100)]
        let replies = Reply.offsetData(cookie: 1, offset: 100, data: Array(data[100...]))
            + Reply.offsetData(cookie: 1, offset: 0, data: Array(data[..<100]), done: true)
            + Reply.hole(cookie: 2, offset: 4096, length: 300, done: true)
            + Reply.blockStatus(cookie: 3, context: 7, [(4096, 0), (8192, 3)])
            + Reply.error(cookie: 4, error: 5, message: "an error message long enough to be cut in several places")
        let whole = ConnectionDriver.run(Self.structured, events + [.server(replies)], byteByByte: false)
        let expected = coalesced(whole.effects)
        #expect(expected.count == 11, "\(expected)")
        for cut in 1..<replies.count {
            let twice = ConnectionDriver.run(Self.structured, events + [.server(Array(replies[..<cut])), .server(Array(replies[cut...]))], byteByByte: false, mergingServerBytes: false)
            #expect(coalesced(twice.effects) == expected, "cut at \(cut)")
            let second = min(replies.count - 1, cut + 7)
            guard second > cut else { continue }
            let thrice = ConnectionDriver.run(
                Self.structured,
                events + [.server(Array(replies[..<cut])), .server(Array(replies[cut..<second])), .server(Array(replies[second...]))],
                byteByByte: false, mergingServerBytes: false
            )
            #expect(coalesced(thrice.effects) == expected, "cut at \(cut) and \(second)")
        }
    }

    /// A reply header cut by the end of a read is joined with only the first bytes of the next
    /// read: the rest of that read's data is handed on as a slice of the read itself, not a copy.
    @Test func dataAfterACutHeaderIsNotCopied() {
        var machine = Self.simple
        var action = machine.requestSubmitted(.read, flags: [], offset: 0, length: 65536, payload: [])
        while Effect(action) != nil { action = machine.nextAction() }
        let data = pattern(65536)
        let reply = Reply.simple(cookie: 1, data: data)
        #expect(Effect(machine.bytesReceived(ByteBuffer(bytes: reply[..<10]))) == nil)
        let second = ByteBuffer(bytes: reply[10...])
        var pieces: [ByteBuffer] = []
        action = machine.bytesReceived(second)
        while Effect(action) != nil {
            if case .deliverData(_, _, let bytes) = action { pieces.append(bytes) }
            action = machine.nextAction()
        }
        #expect(pieces.flatMap(\.bytes) == data)
        // The header's last 6 bytes and the first data bytes were joined (64 bytes of the read).
        #expect(pieces.map(\.readableBytes) == [64 - 6, 65536 - 58])
        let secondStart = second.withUnsafeReadableBytes { Int(bitPattern: $0.baseAddress) }
        let lastStart = pieces.last?.withUnsafeReadableBytes { Int(bitPattern: $0.baseAddress) }
        #expect(lastStart == secondStart + 64, "the data after the joined bytes lies in the read's own storage")
    }

    @Test func holesAreZeroed() {
        let events: [ConnectionEvent] = [
            .read(0, 4096),
            .server(Reply.hole(cookie: 1, offset: 0, length: 1024)),
            .server(Reply.offsetData(cookie: 1, offset: 3072, data: pattern(1024))),
            .server(Reply.hole(cookie: 1, offset: 1024, length: 2048)),
            .server(Reply.none(cookie: 1)),
        ]
        let run = transcript(Self.structured, events)
        #expect(coalesced(run.effects) == [
            Self.sentRead(1),
            .zeroes(cookie: 1, offset: 0, length: 1024),
            .data(cookie: 1, offset: 3072, pattern(1024)),
            .zeroes(cookie: 1, offset: 1024, length: 2048),
            .succeed(cookie: 1, .done),
        ])
    }

    @Test func blockStatusChunksAreGathered() {
        let events: [ConnectionEvent] = [
            .submit(.blockStatus, offset: 0, length: 1 << 20),
            .server(Reply.blockStatus(cookie: 1, context: 7, [(4096, 0), (8192, 3)], done: false)),
            .server(Reply.blockStatus(cookie: 1, context: 9, [(1 << 20, 0)], done: false)),
            .server(Reply.blockStatus(cookie: 1, context: 7, [(1 << 19, 1)], done: true)),
        ]
        let run = transcript(Self.structured, events)
        #expect(run.effects == [
            .send(cookie: 1, header: requestHeader(command: 7, cookie: 1, offset: 0, length: 1 << 20), payload: [], timeout: nil),
            .succeed(cookie: 1, .blockStatus([
                7: [NBDBlockDescriptor(length: 4096, flags: 0), NBDBlockDescriptor(length: 8192, flags: 3), NBDBlockDescriptor(length: 1 << 19, flags: 1)],
                9: [NBDBlockDescriptor(length: 1 << 20, flags: 0)],
            ])),
        ])
    }

    @Test func errorChunkFailsTheRequestAndTheFirstErrorWins() {
        let events: [ConnectionEvent] = [
            .read(0, 4096),
            .server(Reply.offsetData(cookie: 1, offset: 0, data: pattern(1024))),
            .server(Reply.error(cookie: 1, error: 5, message: "media error", done: false)),
            .server(Reply.errorOffset(cookie: 1, error: 28, message: "later", offset: 2048, done: false)),
            .server(Reply.none(cookie: 1)),
            .read(0, 4096),  // the connection is still usable
        ]
        let run = transcript(Self.structured, events)
        #expect(coalesced(run.effects) == [
            Self.sentRead(1),
            .data(cookie: 1, offset: 0, pattern(1024)),
            .fail(cookie: 1, ErrorSummary(.serverError, "media error", errno: .EIO)),
            Self.sentRead(2),
        ])
    }

    @Test func errorMessagesWithOffsetsAndWithout() {
        let events: [ConnectionEvent] = [
            .read(0, 4096), .read(4096, 4096), .submit(.flush, offset: 0, length: 0),
            .server(Reply.errorOffset(cookie: 1, error: 5, message: "bad sector", offset: 100)),
            .server(Reply.errorOffset(cookie: 2, error: 5, offset: 5000)),
            .server(Reply.error(cookie: 3, error: 28)),
        ]
        let run = transcript(Self.structured, events)
        #expect(Array(run.effects.suffix(3)) == [
            .fail(cookie: 1, ErrorSummary(.serverError, "bad sector (at offset 100)", errno: .EIO)),
            .fail(cookie: 2, ErrorSummary(.serverError, "at offset 5000", errno: .EIO)),
            .fail(cookie: 3, ErrorSummary(.serverError, "NBD_CMD_FLUSH failed: \(NBDErrno.ENOSPC.explanation)", errno: .ENOSPC)),
        ])
    }
}

// MARK: - Hostile servers (each closes the connection and fails every request)

extension ConnectionStateMachineTests {
    /// Two reads in flight (cookies 1 and 2), then `reply`: expects `message` as a protocol
    /// violation failing both, and that nothing after it is looked at.
    static func expectViolation(
        _ reply: [UInt8], _ message: String, structured: Bool = true, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let events: [ConnectionEvent] = [
            .read(0, 4096), .read(4096, 4096),
            .server(reply),
            .server(Reply.simple(cookie: 2)),  // ignored: the connection is closed
            .read(0, 512),
        ]
        let run = transcript(structured ? Self.structured : Self.simple, events, sourceLocation: sourceLocation)
        let effects = run.effects.filter {
            switch $0 {
            case .data, .zeroes: false  // what came before the violation
            default: true
            }
        }
        #expect(effects == [
            Self.sentRead(1), Self.sentRead(2, offset: 4096),
            .violation(message, failing: [1, 2]),
            .reject(ErrorSummary(.protocolViolation, message)),
        ], sourceLocation: sourceLocation)
        #expect(run.machine.requestsInFlight.isEmpty, sourceLocation: sourceLocation)
    }

    @Test func badReplyMagic() {
        var reply = Reply.simple(cookie: 1, data: pattern(4096))
        reply[3] = 0x99
        Self.expectViolation(reply, "bad reply magic 0x67446699")
    }

    @Test func garbageBytes() {
        Self.expectViolation(Array("HTTP/1.1 400 Bad Request\r\n\r\n".utf8), "bad reply magic 0x48545450")
    }

    @Test func unknownCookie() {
        Self.expectViolation(Reply.simple(cookie: 1001, data: pattern(4096)), "simple reply for unknown cookie 1001", structured: false)
    }

    @Test func unknownCookieInAStructuredChunk() {
        Self.expectViolation(Reply.none(cookie: 0xFFFF_0000_0000_0001), "structured reply for unknown cookie 18446462598732840961")
    }

    @Test func oversizedMetadataChunk() {
        // Only the header: waiting for a 4 GiB payload would hang.
        Self.expectViolation(
            Reply.chunkHeader(flags: 1, type: 0x8001, cookie: 1, length: 0xFFFF_FFFF), "chunk of 4294967295 bytes exceeds the 16777216-byte limit"
        )
    }

    @Test func oversizedDataChunk() {
        Self.expectViolation(
            Reply.chunkHeader(flags: 1, type: 1, cookie: 1, length: 0xFFFF_FFF0) + BE.u64(0), "chunk range 0+4294967272 outside request 0+4096"
        )
    }

    @Test func dataChunkOutsideTheRequest() {
        Self.expectViolation(
            Reply.offsetData(cookie: 1, offset: 4096, data: pattern(4096), done: true), "chunk range 4096+4096 outside request 0+4096"
        )
    }

    @Test func structuredChunkWithoutStructuredReplies() {
        Self.expectViolation(
            Reply.offsetData(cookie: 1, offset: 0, data: pattern(4096), done: true),
            "structured reply chunk without structured replies negotiated", structured: false
        )
    }

    @Test func unknownNonErrorChunkType() {
        Self.expectViolation(Reply.chunk(flags: 1, type: 42, cookie: 1, payload: [1, 2, 3, 4]), "unknown structured reply chunk type 42")
    }

    @Test func structuredReadWithAGap() {
        Self.expectViolation(
            Reply.offsetData(cookie: 1, offset: 0, data: pattern(2048)) + Reply.none(cookie: 1), "read reply covered 2048 of 4096 bytes"
        )
    }

    @Test func structuredReadEndingEarlyWithDone() {
        Self.expectViolation(
            Reply.hole(cookie: 1, offset: 0, length: 1024) + Reply.offsetData(cookie: 1, offset: 2048, data: pattern(2048), done: true),
            "read reply covered 3072 of 4096 bytes"
        )
    }

    @Test func overlappingChunks() {
        Self.expectViolation(
            Reply.offsetData(cookie: 1, offset: 0, data: pattern(3000)) + Reply.offsetData(cookie: 1, offset: 2000, data: pattern(2096), done: true),
            "overlapping read chunks at offset 2000"
        )
    }

    /// 1024..<2048, 0..<1024, then 1024..<3072: counting bytes alone would add up to 4096.
    @Test func overlappingChunksCannotHideAGap() {
        Self.expectViolation(
            Reply.offsetData(cookie: 1, offset: 1024, data: pattern(1024)) + Reply.offsetData(cookie: 1, offset: 0, data: pattern(1024))
                + Reply.offsetData(cookie: 1, offset: 1024, data: pattern(2048), done: true),
            "overlapping read chunks at offset 1024"
        )
    }

    @Test func overlappingHoleAndData() {
        Self.expectViolation(
            Reply.hole(cookie: 1, offset: 0, length: 4096) + Reply.offsetData(cookie: 1, offset: 4095, data: [0], done: true),
            "overlapping read chunks at offset 4095"
        )
    }

    @Test func truncatedReplyHeaderThenClose() {
        let events: [ConnectionEvent] = [.read(0, 4096), .server(Array(Reply.simple(cookie: 1).prefix(10))), .channelClosed, .read(0, 512)]
        let run = transcript(Self.structured, events)
        #expect(run.effects == [
            Self.sentRead(1),
            .close(Closing(error: Self.serverClosed, failedRequests: [1], closeChannel: false)),
            .reject(Self.serverClosed),
        ])
    }

    @Test func truncatedDataThenClose() {
        let events: [ConnectionEvent] = [.read(0, 4096), .server(Reply.simple(cookie: 1, data: pattern(1000))), .channelClosed]
        let run = transcript(Self.simple, events)
        #expect(coalesced(run.effects) == [
            Self.sentRead(1),
            .data(cookie: 1, offset: 0, pattern(1000)),
            .close(Closing(error: Self.serverClosed, failedRequests: [1], closeChannel: false)),
        ])
    }

    @Test func socketErrorFailsEverything() {
        let run = transcript(Self.structured, [.read(0, 4096), .read(0, 4096), .error(.other("connection reset by peer")), .error(.tls("late"))])
        #expect(run.effects == [
            Self.sentRead(1), Self.sentRead(2),
            .close(Closing(error: ErrorSummary(.connectionLost, "connection reset by peer"), failedRequests: [1, 2])),
            // Already closed: closes again (harmless) but fails nothing more.
            .close(Closing(error: ErrorSummary(.connectionLost, "late"))),
        ])
    }
}

// MARK: - Timeouts, disconnect, close

extension ConnectionStateMachineTests {
    @Test func timerFiredFailsEveryRequestWithATimeout() {
        let timeout = TimeAmount.milliseconds(300)
        let events: [ConnectionEvent] = [
            .read(0, 4096), .read(4096, 4096), .read(8192, 4096),
            .server(Reply.offsetData(cookie: 2, offset: 4096, data: pattern(4096), done: true)),
            .timerFired(cookie: 2),  // already answered: its timer is stale
            .timerFired(cookie: 1),
            .timerFired(cookie: 3),  // the connection is already closed
            .read(0, 512),
        ]
        let run = transcript(Self.negotiated(timeout: timeout), events)
        let error = ErrorSummary(.timeout, "no reply to NBD_CMD_READ within 300 ms")
        #expect(coalesced(run.effects) == [
            Self.sentRead(1, timeout: timeout), Self.sentRead(2, offset: 4096, timeout: timeout), Self.sentRead(3, offset: 8192, timeout: timeout),
            .data(cookie: 2, offset: 4096, pattern(4096)), .succeed(cookie: 2, .done),
            .close(Closing(error: error, failedRequests: [1, 3])),
            .reject(error),
        ])
    }

    @Test func disconnectWithNothingInFlightSendsDiscAtOnce() {
        let events: [ConnectionEvent] = [
            .disconnect,
            .server(Reply.simple(cookie: 1)),  // a reply after DISC is ignored
            .read(0, 512),
            .channelClosed,
        ]
        let run = transcript(Self.structured, events)
        #expect(run.effects == [
            .disconnect(requestHeader(command: 2, cookie: 1, offset: 0, length: 0)),
            .reject(Self.disconnected),
        ])
    }

    @Test func disconnectDrainsInFlightRequestsThenSendsDisc() {
        let events: [ConnectionEvent] = [
            .read(0, 4096), .read(4096, 4096),
            .disconnect,
            .read(0, 512),  // refused while draining
            .disconnect,  // a second one joins the first
            .server(Reply.offsetData(cookie: 2, offset: 4096, data: pattern(4096), done: true)),
            .server(Reply.offsetData(cookie: 1, offset: 0, data: pattern(4096), done: true)),
            .server(Reply.none(cookie: 1)),  // after DISC: ignored
            .channelClosed,
        ]
        let run = transcript(Self.structured, events)
        #expect(coalesced(run.effects) == [
            Self.sentRead(1), Self.sentRead(2, offset: 4096),
            .reject(ErrorSummary(.disconnected, "the client is disconnecting")),
            .data(cookie: 2, offset: 4096, pattern(4096)), .succeed(cookie: 2, .done),
            .data(cookie: 1, offset: 0, pattern(4096)), .succeed(cookie: 1, .done),
            .disconnect(requestHeader(command: 2, cookie: 3, offset: 0, length: 0)),
        ])
    }

    @Test func serverClosingWhileDrainingCompletesTheDisconnect() {
        let run = transcript(Self.structured, [.read(0, 4096), .disconnect, .channelClosed])
        #expect(run.effects == [
            Self.sentRead(1),
            .close(Closing(error: Self.disconnected, failedRequests: [1], closeChannel: false, completeDisconnect: true)),
        ])
    }

    @Test func timeoutWhileDrainingCompletesTheDisconnect() {
        let timeout = TimeAmount.seconds(2)
        let run = transcript(Self.negotiated(timeout: timeout), [.submit(.flush, offset: 0, length: 0), .disconnect, .timerFired(cookie: 1)])
        #expect(run.effects == [
            .send(cookie: 1, header: requestHeader(command: 3, cookie: 1, offset: 0, length: 0), payload: [], timeout: timeout),
            .close(Closing(error: ErrorSummary(.timeout, "no reply to NBD_CMD_FLUSH within 2000 ms"), failedRequests: [1], completeDisconnect: true)),
        ])
    }

    @Test func disconnectAfterAFailureClosesAndCompletes() {
        let run = transcript(Self.structured, [.read(0, 4096), .channelClosed, .disconnect])
        #expect(run.effects == [
            Self.sentRead(1),
            .close(Closing(error: Self.serverClosed, failedRequests: [1], closeChannel: false)),
            .close(Closing(error: Self.disconnected, completeDisconnect: true)),
        ])
    }

    @Test func channelClosedWithRequestsInFlight() {
        let events: [ConnectionEvent] = [
            .read(0, 4096), .submit(.write, offset: 0, length: 2, payload: [[1, 2]]), .submit(.blockStatus, offset: 0, length: 4096),
            .channelClosed,
            .channelClosed,  // nothing more to fail
        ]
        let run = transcript(Self.structured, events)
        #expect(run.effects.last == .close(Closing(error: Self.serverClosed, failedRequests: [1, 2, 3], closeChannel: false)))
        #expect(run.effects.count == 4)
        #expect(run.machine.requestsInFlight.isEmpty)
    }
}
