import NBDProtocol
import NIOCore
import Testing

/// Transmission-phase replies as a server sends them.
enum Reply {
    static func simple(cookie: UInt64, error: UInt32 = 0, data: [UInt8] = []) -> [UInt8] {
        Magic.simpleReply + BE.u32(error) + BE.u64(cookie) + data
    }

    static func chunk(flags: UInt16 = 0, type: UInt16, cookie: UInt64, payload: [UInt8]) -> [UInt8] {
        chunkHeader(flags: flags, type: type, cookie: cookie, length: UInt32(payload.count)) + payload
    }

    static func chunkHeader(flags: UInt16 = 0, type: UInt16, cookie: UInt64, length: UInt32) -> [UInt8] {
        Magic.structuredReply + BE.u16(flags) + BE.u16(type) + BE.u64(cookie) + BE.u32(length)
    }

    static func offsetData(cookie: UInt64, offset: UInt64, data: [UInt8], done: Bool = false) -> [UInt8] {
        chunk(flags: done ? 1 : 0, type: 1, cookie: cookie, payload: BE.u64(offset) + data)
    }

    static func hole(cookie: UInt64, offset: UInt64, length: UInt32, done: Bool = false) -> [UInt8] {
        chunk(flags: done ? 1 : 0, type: 2, cookie: cookie, payload: BE.u64(offset) + BE.u32(length))
    }

    static func blockStatus(cookie: UInt64, context: UInt32, _ extents: [(UInt32, UInt32)], done: Bool = true) -> [UInt8] {
        var payload = BE.u32(context)
        for (length, flags) in extents { payload += BE.u32(length) + BE.u32(flags) }
        return chunk(flags: done ? 1 : 0, type: 5, cookie: cookie, payload: payload)
    }

    static func error(cookie: UInt64, error: UInt32, message: String = "", type: UInt16 = 0x8001, done: Bool = true) -> [UInt8] {
        chunk(flags: done ? 1 : 0, type: type, cookie: cookie, payload: BE.u32(error) + BE.u16(UInt16(message.utf8.count)) + BE.text(message))
    }

    static func errorOffset(cookie: UInt64, error: UInt32, message: String = "", offset: UInt64, done: Bool = true) -> [UInt8] {
        chunk(
            flags: done ? 1 : 0, type: 0x8002, cookie: cookie,
            payload: BE.u32(error) + BE.u16(UInt16(message.utf8.count)) + BE.text(message) + BE.u64(offset)
        )
    }

    static func none(cookie: UInt64, done: Bool = true) -> [UInt8] {
        chunk(flags: done ? 1 : 0, type: 0, cookie: cookie, payload: [])
    }
}

/// Deterministic, non-repeating-looking test data.
func pattern(_ count: Int, seed: UInt8 = 0) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 8)) }
}

typealias Expectations = [UInt64: NBDReplyDecoder.Expectation]

/// Feeds `bytes` to a decoder (all at once, or one byte at a time) and collects every event.
func decodeEvents(
    _ bytes: [UInt8],
    structured: Bool,
    _ expectations: Expectations,
    byteByByte: Bool
) throws(NBDError) -> (events: [NBDReplyDecoder.Event], decoder: NBDReplyDecoder) {
    var decoder = NBDReplyDecoder(structuredReplies: structured)
    var events: [NBDReplyDecoder.Event] = []
    var buffer = ByteBuffer()
    func drain() throws(NBDError) {
        while let event = try decoder.next(&buffer, expectation: { expectations[$0] }) {
            events.append(event)
        }
    }
    if byteByByte {
        for byte in bytes {
            buffer.writeInteger(byte)
            try drain()
        }
    } else {
        buffer.writeBytes(bytes)
        try drain()
    }
    return (events, decoder)
}

/// Joins consecutive data events of one cookie that continue each other.
func coalesced(_ events: [NBDReplyDecoder.Event]) -> [NBDReplyDecoder.Event] {
    var result: [NBDReplyDecoder.Event] = []
    for event in events {
        if case .data(let cookie, let offset, var bytes) = event,
           case .data(let lastCookie, let lastOffset, var lastBytes)? = result.last,
           lastCookie == cookie, lastOffset + UInt64(lastBytes.readableBytes) == offset {
            lastBytes.writeBuffer(&bytes)
            result[result.count - 1] = .data(cookie: cookie, offset: lastOffset, bytes: lastBytes)
        } else {
            result.append(event)
        }
    }
    return result
}

/// Decodes all at once and byte by byte, expects the same events (data pieces joined), and
/// returns the all-at-once events.
func decode(
    _ bytes: [UInt8],
    structured: Bool = true,
    _ expectations: Expectations,
    sourceLocation: SourceLocation = #_sourceLocation
) throws(NBDError) -> [NBDReplyDecoder.Event] {
    let whole = try decodeEvents(bytes, structured: structured, expectations, byteByByte: false)
    let byteWise = try decodeEvents(bytes, structured: structured, expectations, byteByByte: true)
    #expect(coalesced(whole.events) == coalesced(byteWise.events), "all at once and byte by byte differ", sourceLocation: sourceLocation)
    #expect(whole.decoder.isIdle == byteWise.decoder.isIdle, sourceLocation: sourceLocation)
    return whole.events
}

/// Expects decoding to throw a protocol violation, both all at once and byte by byte.
func expectViolation(
    _ bytes: [UInt8],
    structured: Bool = true,
    _ expectations: Expectations,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    for byteByByte in [false, true] {
        let error = #expect(throws: NBDError.self, "byteByByte: \(byteByByte)", sourceLocation: sourceLocation) {
            _ = try decodeEvents(bytes, structured: structured, expectations, byteByByte: byteByByte)
        }
        #expect(error?.code == .protocolViolation, "byteByByte: \(byteByByte)", sourceLocation: sourceLocation)
    }
}

func data(_ cookie: UInt64, _ offset: UInt64, _ bytes: [UInt8]) -> NBDReplyDecoder.Event {
    .data(cookie: cookie, offset: offset, bytes: ByteBuffer(bytes: bytes))
}
