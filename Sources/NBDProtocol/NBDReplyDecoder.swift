import NIOCore

/// One extent of a block status reply: `length` bytes with metadata-context flags.
public struct NBDBlockDescriptor: Hashable, Sendable {
    public var length: UInt32
    public var flags: UInt32
    public init(length: UInt32, flags: UInt32) {
        self.length = length
        self.flags = flags
    }
}

/// `base:allocation` flags.
public enum NBDAllocationFlags {
    public static let hole: UInt32 = 1 << 0
    public static let zero: UInt32 = 1 << 1
}

/// Incremental decoder of transmission-phase replies (simple and structured), with no I/O.
///
/// It never waits for a READ's whole payload: data is handed out as soon as it arrives, as
/// slices of the input, so reads of any size go straight to their destination. It needs to
/// know, for each cookie, which request it answers; the caller keeps that table.
public struct NBDReplyDecoder: Sendable {
    /// What the decoder must know of a request to decode its reply.
    public struct Expectation: Hashable, Sendable {
        public var command: NBDCommand
        public var offset: UInt64
        public var length: UInt32
        public init(command: NBDCommand, offset: UInt64, length: UInt32) {
            self.command = command
            self.offset = offset
            self.length = length
        }
    }

    /// A decoded piece of a reply. Every reply ends with exactly one `.done`.
    public enum Event: Hashable, Sendable {
        /// Bytes of a READ's data at absolute export `offset` (one reply may give many).
        case data(cookie: UInt64, offset: UInt64, bytes: ByteBuffer)
        /// A READ range that reads as zeroes.
        case hole(cookie: UInt64, offset: UInt64, length: UInt32)
        /// Extents for one metadata context of a BLOCK_STATUS request.
        case blockStatus(cookie: UInt64, contextID: UInt32, descriptors: [NBDBlockDescriptor])
        /// The server reported an error for this request (it may still send more chunks).
        case error(cookie: UInt64, errno: NBDErrno, message: String, offset: UInt64?)
        /// The reply is complete.
        case done(cookie: UInt64)
    }

    private enum State: Sendable {
        /// Expecting a reply or chunk header.
        case header
        /// Streaming a simple reply's READ payload.
        case simpleData(cookie: UInt64, offset: UInt64, remaining: UInt32)
        /// Streaming an OFFSET_DATA chunk's payload; `last` is the chunk's DONE flag.
        case chunkData(cookie: UInt64, offset: UInt64, remaining: UInt32, last: Bool)
        /// A reply ended with the previous event: report `.done` next.
        case pendingDone(cookie: UInt64)
    }

    private var state: State = .header
    /// Whether the handshake negotiated structured replies (they are a violation otherwise).
    public var structuredReplies: Bool

    public init(structuredReplies: Bool) {
        self.structuredReplies = structuredReplies
    }

    /// Whether the decoder is between replies (nothing half-read).
    public var isIdle: Bool {
        if case .header = state { return true }
        return false
    }

    /// Decodes the next event from `buffer`, or returns nil when more bytes are needed.
    /// A thrown error is a protocol violation: the connection cannot be used any more.
    public mutating func next(
        _ buffer: inout ByteBuffer,
        expectation: (UInt64) -> Expectation?
    ) throws(NBDError) -> Event? {
        switch state {
        case .pendingDone(let cookie):
            state = .header
            return .done(cookie: cookie)
        case .simpleData(let cookie, let offset, let remaining):
            guard let slice = takeData(&buffer, remaining: remaining) else { return nil }
            let left = remaining - UInt32(slice.readableBytes)
            state = left == 0 ? .pendingDone(cookie: cookie) : .simpleData(cookie: cookie, offset: offset + UInt64(slice.readableBytes), remaining: left)
            return .data(cookie: cookie, offset: offset, bytes: slice)
        case .chunkData(let cookie, let offset, let remaining, let last):
            guard let slice = takeData(&buffer, remaining: remaining) else { return nil }
            let left = remaining - UInt32(slice.readableBytes)
            if left > 0 {
                state = .chunkData(cookie: cookie, offset: offset + UInt64(slice.readableBytes), remaining: left, last: last)
            } else {
                state = last ? .pendingDone(cookie: cookie) : .header
            }
            return .data(cookie: cookie, offset: offset, bytes: slice)
        case .header:
            guard let magic = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
            switch magic {
            case NBDWire.simpleReplyMagic:
                return try simpleReply(&buffer, expectation: expectation)
            case NBDWire.structuredReplyMagic:
                guard structuredReplies else {
                    throw .violation("structured reply chunk without structured replies negotiated")
                }
                return try structuredChunk(&buffer, expectation: expectation)
            default:
                throw .violation("bad reply magic 0x\(String(magic, radix: 16))")
            }
        }
    }

    private func takeData(_ buffer: inout ByteBuffer, remaining: UInt32) -> ByteBuffer? {
        let count = min(Int(remaining), buffer.readableBytes)
        guard count > 0 else { return nil }
        return buffer.readSlice(length: count)
    }

    private mutating func simpleReply(
        _ buffer: inout ByteBuffer,
        expectation: (UInt64) -> Expectation?
    ) throws(NBDError) -> Event? {
        guard let (_, errorValue, cookie) = buffer.readMultipleIntegers(as: (UInt32, UInt32, UInt64).self) else { return nil }
        guard let expected = expectation(cookie) else {
            throw .violation("simple reply for unknown cookie \(cookie)")
        }
        if errorValue != 0 {
            state = .pendingDone(cookie: cookie)
            return .error(cookie: cookie, errno: NBDErrno(rawValue: errorValue), message: "", offset: nil)
        }
        if expected.command == .read && expected.length > 0 {
            state = .simpleData(cookie: cookie, offset: expected.offset, remaining: expected.length)
            return try next(&buffer, expectation: expectation)
        }
        return .done(cookie: cookie)
    }

    private mutating func structuredChunk(
        _ buffer: inout ByteBuffer,
        expectation: (UInt64) -> Expectation?
    ) throws(NBDError) -> Event? {
        guard let (_, flags, type, cookie, length) = buffer.getMultipleIntegers(
            at: buffer.readerIndex, as: (UInt32, UInt16, UInt16, UInt64, UInt32).self
        ) else { return nil }
        guard let expected = expectation(cookie) else {
            throw .violation("structured reply for unknown cookie \(cookie)")
        }
        let last = flags & 1 != 0
        let header = NBDWire.structuredReplyHeaderSize

        if type == NBDChunkType.offsetData {
            guard expected.command == .read else { throw .violation("data chunk in reply to \(expected.command)") }
            guard length > 8 else { throw .violation("OFFSET_DATA chunk of \(length) bytes") }
            guard buffer.readableBytes >= header + 8 else { return nil }
            buffer.moveReaderIndex(forwardBy: header)
            guard let offset = buffer.readInteger(as: UInt64.self) else { return nil }
            let dataLength = length - 8
            try checkWithin(expected, offset: offset, length: dataLength)
            state = .chunkData(cookie: cookie, offset: offset, remaining: dataLength, last: last)
            return try next(&buffer, expectation: expectation)
        }

        // Every other chunk type is small and decoded whole.
        guard length <= NBDWire.maximumMetadataPayload else {
            throw .violation("chunk of \(length) bytes exceeds the \(NBDWire.maximumMetadataPayload)-byte limit")
        }
        guard buffer.readableBytes >= header + Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: header)
        guard var payload = buffer.readSlice(length: Int(length)) else { return nil }
        let event: Event?

        switch type {
        case NBDChunkType.none:
            guard last, length == 0 else { throw .violation("NONE chunk must be empty and final") }
            event = nil
        case NBDChunkType.offsetHole:
            guard expected.command == .read else { throw .violation("hole chunk in reply to \(expected.command)") }
            guard length == 12, let (offset, size) = payload.readMultipleIntegers(as: (UInt64, UInt32).self) else {
                throw .violation("OFFSET_HOLE chunk of \(length) bytes")
            }
            guard size > 0 else { throw .violation("empty OFFSET_HOLE chunk") }
            try checkWithin(expected, offset: offset, length: size)
            event = .hole(cookie: cookie, offset: offset, length: size)
        case NBDChunkType.blockStatus:
            guard expected.command == .blockStatus else { throw .violation("block status chunk in reply to \(expected.command)") }
            guard length >= 12, (length - 4) % 8 == 0, let contextID = payload.readInteger(as: UInt32.self) else {
                throw .violation("BLOCK_STATUS chunk of \(length) bytes")
            }
            var descriptors: [NBDBlockDescriptor] = []
            descriptors.reserveCapacity(Int(length - 4) / 8)
            while let (extentLength, extentFlags) = payload.readMultipleIntegers(as: (UInt32, UInt32).self) {
                descriptors.append(NBDBlockDescriptor(length: extentLength, flags: extentFlags))
            }
            event = .blockStatus(cookie: cookie, contextID: contextID, descriptors: descriptors)
        default:
            guard type & NBDChunkType.errorBit != 0 else {
                throw .violation("unknown structured reply chunk type \(type)")
            }
            event = try errorChunk(type: type, cookie: cookie, payload: &payload, expected: expected)
        }

        if last {
            if let event {
                state = .pendingDone(cookie: cookie)
                return event
            }
            return .done(cookie: cookie)
        }
        if let event { return event }
        // A non-final NONE chunk was rejected above, so this is unreachable; decode on.
        return try next(&buffer, expectation: expectation)
    }

    private func errorChunk(type: UInt16, cookie: UInt64, payload: inout ByteBuffer, expected: Expectation) throws(NBDError) -> Event {
        guard let (errorValue, messageLength) = payload.readMultipleIntegers(as: (UInt32, UInt16).self),
              Int(messageLength) <= payload.readableBytes
        else { throw .violation("malformed error chunk") }
        guard errorValue != 0 else { throw .violation("error chunk with error value 0") }
        let message = payload.readString(length: Int(messageLength)) ?? ""
        var offset: UInt64?
        if type == NBDChunkType.errorOffset {
            guard payload.readableBytes == 8, let errorOffset = payload.readInteger(as: UInt64.self) else {
                throw .violation("ERROR_OFFSET chunk without its offset")
            }
            try checkWithin(expected, offset: errorOffset, length: 1)
            offset = errorOffset
        }
        return .error(cookie: cookie, errno: NBDErrno(rawValue: errorValue), message: message, offset: offset)
    }

    private func checkWithin(_ expected: Expectation, offset: UInt64, length: UInt32) throws(NBDError) {
        let (end, overflow) = offset.addingReportingOverflow(UInt64(length))
        guard !overflow, offset >= expected.offset, end <= expected.offset + UInt64(expected.length) else {
            throw .violation("chunk range \(offset)+\(length) outside request \(expected.offset)+\(expected.length)")
        }
    }
}
