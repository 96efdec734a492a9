import NBDTestSupport
import NBDProtocol
import NIOCore
import Testing

extension ByteBuffer {
    /// The readable bytes, for comparing with hand-written arrays.
    var bytes: [UInt8] { Array(readableBytesView) }
}

/// Big-endian encoders for building what a server sends (the client's bytes are checked against
/// hand-written literals instead).
typealias BE = BigEndianBytes

/// Hand-written constants of the wire protocol.
enum Magic {
    /// "NBDMAGIC"
    static let nbd: [UInt8] = [0x4E, 0x42, 0x44, 0x4D, 0x41, 0x47, 0x49, 0x43]
    /// "IHAVEOPT"
    static let ihaveopt: [UInt8] = [0x49, 0x48, 0x41, 0x56, 0x45, 0x4F, 0x50, 0x54]
    /// Oldstyle greeting's second magic.
    static let oldstyle: [UInt8] = [0x00, 0x00, 0x42, 0x02, 0x81, 0x86, 0x12, 0x53]
    /// Option reply magic.
    static let optionReply: [UInt8] = [0x00, 0x03, 0xE8, 0x89, 0x04, 0x55, 0x65, 0xA9]
    /// Simple reply magic.
    static let simpleReply: [UInt8] = [0x67, 0x44, 0x66, 0x98]
    /// Structured reply chunk magic.
    static let structuredReply: [UInt8] = [0x66, 0x8E, 0x33, 0xEF]
}

/// What a server sends during the handshake.
enum Server {
    static func greeting(flags: UInt16) -> [UInt8] {
        Magic.nbd + Magic.ihaveopt + BE.u16(flags)
    }

    static func optionReply(option: UInt32, type: UInt32, payload: [UInt8] = []) -> [UInt8] {
        Magic.optionReply + BE.u32(option) + BE.u32(type) + BE.u32(UInt32(payload.count)) + payload
    }

    static func ack(_ option: UInt32) -> [UInt8] { optionReply(option: option, type: 1) }

    static func error(_ option: UInt32, _ error: NBDOptionError, message: String = "") -> [UInt8] {
        optionReply(option: option, type: error.rawValue, payload: BE.text(message))
    }

    static func info(_ infoType: UInt16, _ payload: [UInt8]) -> [UInt8] {
        optionReply(option: 7, type: 3, payload: BE.u16(infoType) + payload)
    }

    static func infoExport(size: UInt64, flags: UInt16) -> [UInt8] {
        info(0, BE.u64(size) + BE.u16(flags))
    }

    static func infoBlockSize(_ minimum: UInt32, _ preferred: UInt32, _ maximum: UInt32) -> [UInt8] {
        info(3, BE.u32(minimum) + BE.u32(preferred) + BE.u32(maximum))
    }

    static func metaContext(id: UInt32, name: String, option: UInt32 = 10) -> [UInt8] {
        optionReply(option: option, type: 4, payload: BE.u32(id) + BE.text(name))
    }

    static func server(name: String, description: String? = nil) -> [UInt8] {
        var payload = BE.u32(UInt32(name.utf8.count)) + BE.text(name)
        if let description { payload += BE.text(description) }
        return optionReply(option: 3, type: 2, payload: payload)
    }
}

/// What the client must send, written out byte for byte.
enum Client {
    /// NBD_OPT_ABORT with no payload.
    static let abort: [UInt8] = Magic.ihaveopt + [0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00]
    /// NBD_OPT_STRUCTURED_REPLY with no payload.
    static let structuredReply: [UInt8] = Magic.ihaveopt + [0x00, 0x00, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00]
    /// NBD_OPT_LIST with no payload.
    static let list: [UInt8] = Magic.ihaveopt + [0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00]
    /// NBD_OPT_STARTTLS with no payload.
    static let startTLS: [UInt8] = Magic.ihaveopt + [0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00]

    /// NBD_OPT_SET_META_CONTEXT for export "disk", one query "base:allocation".
    static let setMetaContextDisk: [UInt8] = Magic.ihaveopt + [
        0x00, 0x00, 0x00, 0x0A,  // option 10
        0x00, 0x00, 0x00, 0x1F,  // length 31
        0x00, 0x00, 0x00, 0x04,  // export name length 4
        0x64, 0x69, 0x73, 0x6B,  // "disk"
        0x00, 0x00, 0x00, 0x01,  // one query
        0x00, 0x00, 0x00, 0x0F,  // query length 15
        0x62, 0x61, 0x73, 0x65, 0x3A, 0x61, 0x6C, 0x6C, 0x6F, 0x63, 0x61, 0x74, 0x69, 0x6F, 0x6E,  // "base:allocation"
    ]

    /// NBD_OPT_LIST_META_CONTEXT for export "disk", no queries (every context).
    static let listMetaContextDisk: [UInt8] = Magic.ihaveopt + [
        0x00, 0x00, 0x00, 0x09,  // option 9
        0x00, 0x00, 0x00, 0x0C,  // length 12
        0x00, 0x00, 0x00, 0x04,  // export name length 4
        0x64, 0x69, 0x73, 0x6B,  // "disk"
        0x00, 0x00, 0x00, 0x00,  // no queries
    ]

    /// NBD_OPT_SET_META_CONTEXT for export "disk", queries "base:allocation" and "qemu:dirty-bitmap:b0".
    static let setMetaContextDiskAndBitmap: [UInt8] = Magic.ihaveopt + [
        0x00, 0x00, 0x00, 0x0A,  // option 10
        0x00, 0x00, 0x00, 0x37,  // length 55
        0x00, 0x00, 0x00, 0x04,  // export name length 4
        0x64, 0x69, 0x73, 0x6B,  // "disk"
        0x00, 0x00, 0x00, 0x02,  // two queries
        0x00, 0x00, 0x00, 0x0F,  // query length 15
        0x62, 0x61, 0x73, 0x65, 0x3A, 0x61, 0x6C, 0x6C, 0x6F, 0x63, 0x61, 0x74, 0x69, 0x6F, 0x6E,  // "base:allocation"
        0x00, 0x00, 0x00, 0x14,  // query length 20
        0x71, 0x65, 0x6D, 0x75, 0x3A, 0x64, 0x69, 0x72, 0x74, 0x79, 0x2D,  // "qemu:dirty-"
        0x62, 0x69, 0x74, 0x6D, 0x61, 0x70, 0x3A, 0x62, 0x30,  // "bitmap:b0"
    ]

    /// NBD_OPT_GO for export "disk", asking for BLOCK_SIZE (3), NAME (1), DESCRIPTION (2).
    static let goDisk: [UInt8] = Magic.ihaveopt + [
        0x00, 0x00, 0x00, 0x07,  // option 7
        0x00, 0x00, 0x00, 0x10,  // length 16
        0x00, 0x00, 0x00, 0x04,  // export name length 4
        0x64, 0x69, 0x73, 0x6B,  // "disk"
        0x00, 0x03,  // three information requests
        0x00, 0x03, 0x00, 0x01, 0x00, 0x02,  // BLOCK_SIZE, NAME, DESCRIPTION
    ]

    /// NBD_OPT_EXPORT_NAME "disk".
    static let exportNameDisk: [UInt8] = Magic.ihaveopt + [
        0x00, 0x00, 0x00, 0x01,  // option 1
        0x00, 0x00, 0x00, 0x04,  // length 4
        0x64, 0x69, 0x73, 0x6B,  // "disk"
    ]

    /// Client flags answering a greeting with FIXED_NEWSTYLE | NO_ZEROES.
    static let flagsNoZeroes: [UInt8] = [0x00, 0x00, 0x00, 0x03]
    /// Client flags answering a greeting with FIXED_NEWSTYLE only.
    static let flagsFixedOnly: [UInt8] = [0x00, 0x00, 0x00, 0x01]
}

// MARK: - Handshake driver

/// An `NBDHandshakeStateMachine.Action` in a comparable form.
enum Step: Equatable, CustomStringConvertible {
    case send([UInt8])
    case sendAndStartTLS([UInt8])
    case negotiated(NBDExportInfo)
    case listed([NBDExportListing], abort: [UInt8])
    case fail(NBDError.Code, optionError: NBDOptionError?, exportName: String?, farewell: [UInt8]?)
    /// The error `connectionClosed()` returned.
    case closed(NBDError.Code, exportName: String?)

    init?(_ action: NBDHandshakeStateMachine.Action) {
        switch action {
        case .wait: return nil
        case .send(let bytes): self = .send(bytes.bytes)
        case .sendAndStartTLS(let bytes): self = .sendAndStartTLS(bytes.bytes)
        case .negotiated(let info): self = .negotiated(info)
        case .listed(let exports, let abort): self = .listed(exports, abort: abort.bytes)
        case .fail(let error, let farewell):
            self = .fail(error.code, optionError: error.optionError, exportName: error.exportName, farewell: farewell?.bytes)
        }
    }

    var isTerminal: Bool {
        switch self {
        case .send, .sendAndStartTLS: false
        case .negotiated, .listed, .fail, .closed: true
        }
    }

    /// Shorthand for a failure without option error, export name or farewell.
    static func violation() -> Step { .fail(.protocolViolation, optionError: nil, exportName: nil, farewell: nil) }

    var description: String {
        switch self {
        case .send(let bytes): "send(\(bytes.count) bytes: \(bytes.hex))"
        case .sendAndStartTLS(let bytes): "sendAndStartTLS(\(bytes.hex))"
        case .negotiated(let info): "negotiated(\(info))"
        case .listed(let exports, let abort): "listed(\(exports), abort: \(abort.hex))"
        case .fail(let code, let optionError, let exportName, let farewell):
            "fail(\(code), optionError: \(String(describing: optionError)), exportName: \(String(describing: exportName)), farewell: \(farewell?.hex ?? "nil"))"
        case .closed(let code, let exportName): "closed(\(code), exportName: \(String(describing: exportName)))"
        }
    }
}

extension [UInt8] {
    var hex: String { map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: " ") }
}

/// One thing that happens to the handshake machine.
enum Input {
    /// Bytes from the server.
    case server([UInt8])
    /// The TLS handshake finished.
    case tlsEstablished
    /// The socket closed.
    case closed
}

/// Feeds a transcript to a fresh state machine and records what it asks for.
struct HandshakeDriver {
    var machine: NBDHandshakeStateMachine
    var buffer = ByteBuffer()
    var steps: [Step] = []
    var finished = false

    init(_ configuration: NBDHandshakeStateMachine.Configuration) {
        machine = NBDHandshakeStateMachine(configuration: configuration)
    }

    /// Calls `receive` until the machine waits for more (or is done).
    mutating func drain() {
        while !finished {
            let action = machine.receive(&buffer)
            guard let step = Step(action) else { return }
            record(step)
        }
    }

    mutating func record(_ step: Step) {
        steps.append(step)
        if step.isTerminal { finished = true }
    }

    mutating func apply(_ input: Input, byteByByte: Bool) {
        guard !finished else { return }
        switch input {
        case .server(let bytes):
            if byteByByte {
                for byte in bytes where !finished {
                    buffer.writeInteger(byte)
                    drain()
                }
            } else {
                buffer.writeBytes(bytes)
                drain()
            }
        case .tlsEstablished:
            if let step = Step(machine.tlsEstablished()) { record(step) }
        case .closed:
            let error = machine.connectionClosed()
            record(.closed(error.code, exportName: error.exportName))
        }
    }

    /// Runs a whole transcript. All at once, consecutive server messages are fed as one buffer.
    static func run(_ configuration: NBDHandshakeStateMachine.Configuration, _ inputs: [Input], byteByByte: Bool) -> HandshakeDriver {
        var driver = HandshakeDriver(configuration)
        var merged: [Input] = []
        for input in inputs {
            if !byteByByte, case .server(let more) = input, case .server(let earlier)? = merged.last {
                merged[merged.count - 1] = .server(earlier + more)
            } else {
                merged.append(input)
            }
        }
        for input in merged { driver.apply(input, byteByByte: byteByByte) }
        return driver
    }
}

/// Runs a transcript all at once and one byte at a time, expects both to give the same steps,
/// and returns the all-at-once run (its buffer holds whatever the machine left unread).
@discardableResult
func handshake(
    _ configuration: NBDHandshakeStateMachine.Configuration,
    _ inputs: [Input],
    sourceLocation: SourceLocation = #_sourceLocation
) -> HandshakeDriver {
    let whole = HandshakeDriver.run(configuration, inputs, byteByByte: false)
    let byteWise = HandshakeDriver.run(configuration, inputs, byteByByte: true)
    #expect(whole.steps == byteWise.steps, "all at once and byte by byte differ", sourceLocation: sourceLocation)
    return whole
}
