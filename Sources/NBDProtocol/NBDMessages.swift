import NIOCore

/// A transmission request header (the WRITE payload, if any, follows it on the wire).
public struct NBDRequestHeader: Hashable, Sendable {
    public var flags: NBDCommandFlags
    public var command: NBDCommand
    public var cookie: UInt64
    public var offset: UInt64
    public var length: UInt32

    public init(flags: NBDCommandFlags = [], command: NBDCommand, cookie: UInt64, offset: UInt64, length: UInt32) {
        self.flags = flags
        self.command = command
        self.cookie = cookie
        self.offset = offset
        self.length = length
    }
}

extension ByteBuffer {
    /// Writes a 28-byte request header.
    @discardableResult
    public mutating func writeNBDRequest(_ header: NBDRequestHeader) -> Int {
        writeMultipleIntegers(
            NBDWire.requestMagic, header.flags.rawValue, header.command.rawValue,
            header.cookie, header.offset, header.length
        )
    }

    /// Writes a handshake option: IHAVEOPT, option code, length, payload.
    @discardableResult
    public mutating func writeNBDOption(_ option: NBDOption, payload: ByteBuffer = ByteBuffer()) -> Int {
        var payload = payload
        return writeMultipleIntegers(NBDWire.optionMagic, option.rawValue, UInt32(payload.readableBytes))
            + writeBuffer(&payload)
    }

    /// Writes a u32-length-prefixed UTF-8 string.
    @discardableResult
    mutating func writeNBDString32(_ string: String) -> Int {
        let bytes = Array(string.utf8)
        return writeInteger(UInt32(bytes.count)) + writeBytes(bytes)
    }
}

/// Builders for option payloads.
public enum NBDOptionPayload {
    /// `NBD_OPT_GO` / `NBD_OPT_INFO`: export name and the information types wanted.
    public static func go(exportName: String, infoRequests: [UInt16]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeNBDString32(exportName)
        buffer.writeInteger(UInt16(infoRequests.count))
        for request in infoRequests { buffer.writeInteger(request) }
        return buffer
    }

    /// `NBD_OPT_SET_META_CONTEXT` / `NBD_OPT_LIST_META_CONTEXT`: export name and queries.
    public static func metaContext(exportName: String, queries: [String]) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeNBDString32(exportName)
        buffer.writeInteger(UInt32(queries.count))
        for query in queries { buffer.writeNBDString32(query) }
        return buffer
    }

    /// `NBD_OPT_EXPORT_NAME`: the bare name.
    public static func exportName(_ name: String) -> ByteBuffer {
        ByteBuffer(string: name)
    }
}
