import NBDProtocol
import NIOCore
import Testing

@Suite("NBDReplyDecoder")
struct ReplyDecoderTests {
    static let read1: Expectations = [1: .init(command: .read, offset: 1000, length: 20)]
    static let write1: Expectations = [1: .init(command: .write, offset: 0, length: 512)]

    // MARK: - Simple replies

    @Test func simpleReplyWithoutData() throws {
        let events = try decode(Reply.simple(cookie: 1), structured: false, Self.write1)
        #expect(events == [.done(cookie: 1)])
    }

    @Test func simpleReplyCookieIsReadBigEndian() throws {
        let cookie: UInt64 = 0x0102_0304_0506_0708
        let bytes: [UInt8] = [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08]
        let events = try decode(bytes, structured: false, [cookie: .init(command: .flush, offset: 0, length: 0)])
        #expect(events == [.done(cookie: cookie)])
    }

    @Test func simpleReplyWithErrorHasNoData() throws {
        // A READ's error reply carries no data: the next bytes are the next reply.
        var expectations = Self.read1
        expectations[2] = .init(command: .flush, offset: 0, length: 0)
        let bytes = Reply.simple(cookie: 1, error: 5) + Reply.simple(cookie: 2)
        let events = try decode(bytes, structured: false, expectations)
        #expect(events == [
            .error(cookie: 1, errno: .EIO, message: "", offset: nil),
            .done(cookie: 1),
            .done(cookie: 2),
        ])
    }

    @Test func simpleReplyWithUnknownErrorValueIsKept() throws {
        let events = try decode(Reply.simple(cookie: 1, error: 9999), structured: false, Self.write1)
        #expect(events == [.error(cookie: 1, errno: NBDErrno(rawValue: 9999), message: "", offset: nil), .done(cookie: 1)])
        guard case .error(_, let errno, _, _) = events.first else { return }
        #expect(!errno.isKnown)
    }

    @Test func simpleReadDataIsStreamedByteByByte() throws {
        let payload = pattern(20)
        let bytes = Reply.simple(cookie: 1, data: payload)
        let (events, decoder) = try decodeEvents(bytes, structured: false, Self.read1, byteByByte: true)
        #expect(decoder.isIdle)
        #expect(events.count == payload.count + 1)
        var joined: [UInt8] = []
        for (index, event) in events.dropLast().enumerated() {
            guard case .data(let cookie, let offset, let piece) = event else {
                Issue.record("expected data, got \(event)")
                continue
            }
            #expect(cookie == 1)
            #expect(offset == 1000 + UInt64(index))
            #expect(piece.bytes == [payload[index]])
            joined += piece.bytes
        }
        #expect(joined == payload)
        #expect(events.last == .done(cookie: 1))

        // All at once, the payload is one slice.
        #expect(try decode(bytes, structured: false, Self.read1) == [data(1, 1000, payload), .done(cookie: 1)])
    }

    @Test func decoderIsBusyInTheMiddleOfAReply() throws {
        var decoder = NBDReplyDecoder(structuredReplies: false)
        var buffer = ByteBuffer(bytes: Reply.simple(cookie: 1) + pattern(5))
        let first = try decoder.next(&buffer) { Self.read1[$0] }
        #expect(first == data(1, 1000, pattern(5)))
        #expect(!decoder.isIdle)
        #expect(try decoder.next(&buffer) { Self.read1[$0] } == nil)
        buffer.writeBytes(pattern(20).suffix(15))
        #expect(try decoder.next(&buffer) { Self.read1[$0] } == data(1, 1005, Array(pattern(20).suffix(15))))
        #expect(!decoder.isIdle)  // `.done` is still to be reported
        #expect(try decoder.next(&buffer) { Self.read1[$0] } == .done(cookie: 1))
        #expect(decoder.isIdle)
    }

    @Test func simpleReplyOnAStructuredConnectionIsAccepted() throws {
        let events = try decode(Reply.simple(cookie: 1, data: pattern(20)), structured: true, Self.read1)
        #expect(events == [data(1, 1000, pattern(20)), .done(cookie: 1)])
    }

    // MARK: - Structured replies

    @Test func offsetDataChunksInAnyOrder() throws {
        let payload = pattern(20)
        let bytes = Reply.offsetData(cookie: 1, offset: 1010, data: Array(payload[10...]))
            + Reply.offsetData(cookie: 1, offset: 1000, data: Array(payload[..<10]))
            + Reply.none(cookie: 1)
        let events = try decode(bytes, Self.read1)
        #expect(events == [
            data(1, 1010, Array(payload[10...])),
            data(1, 1000, Array(payload[..<10])),
            .done(cookie: 1),
        ])
    }

    @Test func offsetDataStreamedByteByByte() throws {
        let payload = pattern(20, seed: 9)
        let bytes = Reply.offsetData(cookie: 1, offset: 1000, data: payload, done: true)
        let (events, _) = try decodeEvents(bytes, structured: true, Self.read1, byteByByte: true)
        #expect(events.count == 21)
        for (index, event) in events.prefix(20).enumerated() {
            #expect(event == data(1, 1000 + UInt64(index), [payload[index]]))
        }
        #expect(events.last == .done(cookie: 1))
    }

    @Test func offsetHole() throws {
        let events = try decode(Reply.hole(cookie: 1, offset: 1004, length: 16, done: true), Self.read1)
        #expect(events == [.hole(cookie: 1, offset: 1004, length: 16), .done(cookie: 1)])
    }

    @Test func dataAndHoleMixed() throws {
        let bytes = Reply.hole(cookie: 1, offset: 1000, length: 8)
            + Reply.offsetData(cookie: 1, offset: 1008, data: pattern(12), done: true)
        #expect(try decode(bytes, Self.read1) == [
            .hole(cookie: 1, offset: 1000, length: 8),
            data(1, 1008, pattern(12)),
            .done(cookie: 1),
        ])
    }

    @Test func blockStatusChunk() throws {
        let expectations: Expectations = [3: .init(command: .blockStatus, offset: 0, length: 1 << 20)]
        let bytes = Reply.blockStatus(cookie: 3, context: 7, [(65536, 0), (983_040, 3)], done: false)
            + Reply.blockStatus(cookie: 3, context: 9, [(1 << 20, 0)], done: true)
        let events = try decode(bytes, expectations)
        #expect(events == [
            .blockStatus(cookie: 3, contextID: 7, descriptors: [
                NBDBlockDescriptor(length: 65536, flags: 0),
                NBDBlockDescriptor(length: 983_040, flags: NBDAllocationFlags.hole | NBDAllocationFlags.zero),
            ]),
            .blockStatus(cookie: 3, contextID: 9, descriptors: [NBDBlockDescriptor(length: 1 << 20, flags: 0)]),
            .done(cookie: 3),
        ])
    }

    @Test func errorChunk() throws {
        let events = try decode(Reply.error(cookie: 1, error: 5, message: "disk on fire"), Self.read1)
        #expect(events == [.error(cookie: 1, errno: .EIO, message: "disk on fire", offset: nil), .done(cookie: 1)])
    }

    @Test func errorOffsetChunk() throws {
        let events = try decode(Reply.errorOffset(cookie: 1, error: 5, message: "bad sector", offset: 1019), Self.read1)
        #expect(events == [.error(cookie: 1, errno: .EIO, message: "bad sector", offset: 1019), .done(cookie: 1)])
    }

    @Test func noneChunkEndsAReply() throws {
        #expect(try decode(Reply.none(cookie: 1), Self.write1) == [.done(cookie: 1)])
    }

    @Test func doneFlagHandling() throws {
        // Without DONE, more chunks follow; an error chunk without DONE is not the end.
        let bytes = Reply.error(cookie: 1, error: 22, message: "first", done: false)
            + Reply.offsetData(cookie: 1, offset: 1000, data: pattern(4))
            + Reply.error(cookie: 1, error: 5, message: "second", done: false)
            + Reply.none(cookie: 1)
        let events = try decode(bytes, Self.read1)
        #expect(events == [
            .error(cookie: 1, errno: .EINVAL, message: "first", offset: nil),
            data(1, 1000, pattern(4)),
            .error(cookie: 1, errno: .EIO, message: "second", offset: nil),
            .done(cookie: 1),
        ])
    }

    @Test func finalChunkReportsDoneEvenWithNothingMoreToRead() throws {
        var decoder = NBDReplyDecoder(structuredReplies: true)
        var buffer = ByteBuffer(bytes: Reply.hole(cookie: 1, offset: 1000, length: 20, done: true))
        #expect(try decoder.next(&buffer) { Self.read1[$0] } == .hole(cookie: 1, offset: 1000, length: 20))
        #expect(buffer.readableBytes == 0)
        #expect(!decoder.isIdle)
        #expect(try decoder.next(&buffer) { Self.read1[$0] } == .done(cookie: 1))
        #expect(decoder.isIdle)
        #expect(try decoder.next(&buffer) { Self.read1[$0] } == nil)
    }

    @Test func interleavedRepliesToSeveralCookies() throws {
        let expectations: Expectations = [
            1: .init(command: .read, offset: 0, length: 8),
            2: .init(command: .read, offset: 100, length: 8),
            3: .init(command: .write, offset: 0, length: 8),
        ]
        let one = pattern(8, seed: 1)
        let two = pattern(8, seed: 2)
        let bytes = Reply.offsetData(cookie: 2, offset: 104, data: Array(two[4...]))
            + Reply.offsetData(cookie: 1, offset: 0, data: Array(one[..<4]))
            + Reply.simple(cookie: 3)
            + Reply.offsetData(cookie: 1, offset: 4, data: Array(one[4...]), done: true)
            + Reply.offsetData(cookie: 2, offset: 100, data: Array(two[..<4]))
            + Reply.none(cookie: 2)
        let events = try decode(bytes, expectations)
        #expect(events == [
            data(2, 104, Array(two[4...])),
            data(1, 0, Array(one[..<4])),
            .done(cookie: 3),
            data(1, 4, Array(one[4...])),
            .done(cookie: 1),
            data(2, 100, Array(two[..<4])),
            .done(cookie: 2),
        ])
    }

    @Test func unknownErrorChunkTypeIsAnErrorAndTheConnectionSurvives() throws {
        var expectations = Self.read1
        expectations[2] = .init(command: .flush, offset: 0, length: 0)
        let bytes = Reply.error(cookie: 1, error: 1, message: "odd", type: 0x8123)
            + Reply.simple(cookie: 2)
        let events = try decode(bytes, expectations)
        #expect(events == [
            .error(cookie: 1, errno: .EPERM, message: "odd", offset: nil),
            .done(cookie: 1),
            .done(cookie: 2),
        ])
    }

    // MARK: - Hostile servers

    @Test func badMagic() {
        expectViolation([0x12, 0x34, 0x56, 0x78] + [UInt8](repeating: 0, count: 12), Self.read1)
        expectViolation(Array("HTTP/1.1 200 OK\r\n".utf8), structured: false, Self.read1)
    }

    @Test func badMagicIsSeenFromFourBytes() throws {
        var decoder = NBDReplyDecoder(structuredReplies: true)
        var buffer = ByteBuffer(bytes: [0x67, 0x44, 0x66])
        let nothing = try decoder.next(&buffer) { Self.read1[$0] }
        #expect(nothing == nil)
        buffer.writeInteger(UInt8(0x99))
        let error = #expect(throws: NBDError.self) { try decoder.next(&buffer) { Self.read1[$0] } }
        #expect(error?.code == .protocolViolation)
    }

    @Test func unknownCookie() {
        expectViolation(Reply.simple(cookie: 99), structured: false, Self.read1)
        expectViolation(Reply.none(cookie: 99), Self.read1)
        expectViolation(Reply.offsetData(cookie: 99, offset: 1000, data: pattern(4)), Self.read1)
    }

    @Test func structuredChunkWithoutStructuredReplies() {
        expectViolation(Reply.none(cookie: 1), structured: false, Self.write1)
    }

    @Test func unknownNonErrorChunkType() {
        expectViolation(Reply.chunk(flags: 1, type: 3, cookie: 1, payload: []), Self.read1)
        expectViolation(Reply.chunk(flags: 1, type: 0x7FFF, cookie: 1, payload: [1, 2, 3]), Self.read1)
    }

    @Test func dataOutsideTheRequestedRange() {
        // The request covers 1000..<1020.
        expectViolation(Reply.offsetData(cookie: 1, offset: 999, data: pattern(4)), Self.read1)
        expectViolation(Reply.offsetData(cookie: 1, offset: 1016, data: pattern(5)), Self.read1)
        expectViolation(Reply.offsetData(cookie: 1, offset: UInt64.max - 1, data: pattern(4)), Self.read1)
        expectViolation(Reply.hole(cookie: 1, offset: 1010, length: 11), Self.read1)
        expectViolation(Reply.hole(cookie: 1, offset: 0, length: 4), Self.read1)
        expectViolation(Reply.errorOffset(cookie: 1, error: 5, offset: 1020), Self.read1)
    }

    @Test func oversizedDataChunkFailsOnItsHeader() {
        // An OFFSET_DATA chunk claiming 4 GiB for a 20-byte read: header and offset suffice.
        let bytes = Reply.chunkHeader(type: 1, cookie: 1, length: 0xFFFF_FFFF) + BE.u64(1000)
        expectViolation(bytes, Self.read1)
    }

    @Test func oversizedMetadataChunkFailsWithoutWaitingForItsBytes() {
        let blockStatus: Expectations = [1: .init(command: .blockStatus, offset: 0, length: 4096)]
        expectViolation(Reply.chunkHeader(flags: 1, type: 5, cookie: 1, length: (16 << 20) + 1), blockStatus)
        expectViolation(Reply.chunkHeader(flags: 1, type: 0x8001, cookie: 1, length: 0xFFFF_FFFF), Self.read1)
        expectViolation(Reply.chunkHeader(flags: 1, type: 0x8777, cookie: 1, length: 0x8000_0000), Self.read1)
    }

    @Test func metadataChunkAtTheLimitWaitsForItsBytes() throws {
        let blockStatus: Expectations = [1: .init(command: .blockStatus, offset: 0, length: 4096)]
        let (events, decoder) = try decodeEvents(
            Reply.chunkHeader(flags: 1, type: 5, cookie: 1, length: 16 << 20), structured: true, blockStatus, byteByByte: false
        )
        #expect(events.isEmpty)
        #expect(decoder.isIdle)
    }

    @Test func errorChunkWithErrorZero() {
        expectViolation(Reply.error(cookie: 1, error: 0, message: "no error?"), Self.read1)
        expectViolation(Reply.errorOffset(cookie: 1, error: 0, offset: 1000), Self.read1)
    }

    @Test func malformedErrorChunks() {
        // Message longer than the payload.
        expectViolation(Reply.chunk(flags: 1, type: 0x8001, cookie: 1, payload: BE.u32(5) + BE.u16(10) + BE.text("abc")), Self.read1)
        // Too short for the error value.
        expectViolation(Reply.chunk(flags: 1, type: 0x8001, cookie: 1, payload: [0, 0, 5]), Self.read1)
        // ERROR_OFFSET without its offset.
        expectViolation(Reply.chunk(flags: 1, type: 0x8002, cookie: 1, payload: BE.u32(5) + BE.u16(0)), Self.read1)
    }

    @Test func noneChunkWithoutDone() {
        expectViolation(Reply.none(cookie: 1, done: false), Self.write1)
        expectViolation(Reply.chunk(flags: 1, type: 0, cookie: 1, payload: [0]), Self.write1)
    }

    @Test func dataChunkForANonReadCommand() {
        expectViolation(Reply.offsetData(cookie: 1, offset: 0, data: pattern(4)), Self.write1)
        expectViolation(Reply.hole(cookie: 1, offset: 0, length: 4), Self.write1)
        expectViolation(Reply.blockStatus(cookie: 1, context: 1, [(20, 0)]), Self.read1)
    }

    @Test func malformedDataAndStatusChunks() {
        // OFFSET_DATA with no data.
        expectViolation(Reply.chunk(type: 1, cookie: 1, payload: BE.u64(1000)), Self.read1)
        // OFFSET_HOLE of the wrong length, and an empty hole.
        expectViolation(Reply.chunk(type: 2, cookie: 1, payload: BE.u64(1000) + BE.u16(4)), Self.read1)
        expectViolation(Reply.hole(cookie: 1, offset: 1000, length: 0), Self.read1)
        // BLOCK_STATUS with a partial descriptor, and with none.
        let blockStatus: Expectations = [1: .init(command: .blockStatus, offset: 0, length: 4096)]
        expectViolation(Reply.chunk(flags: 1, type: 5, cookie: 1, payload: BE.u32(1) + BE.u32(4096)), blockStatus)
        expectViolation(Reply.chunk(flags: 1, type: 5, cookie: 1, payload: BE.u32(1)), blockStatus)
    }
}
