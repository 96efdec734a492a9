import NBDProtocol
import NIOCore
import Testing

/// An `NBDError` in a comparable form.
struct ErrorSummary: Equatable, CustomStringConvertible {
    var code: NBDError.Code
    var message: String
    var errno: NBDErrno? = nil

    init(_ code: NBDError.Code, _ message: String, errno: NBDErrno? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    init(_ error: NBDError) {
        self.init(error.code, error.message, errno: error.errno)
    }

    var description: String { "\(code)(\(message)\(errno.map { ", \($0.name)" } ?? ""))" }
}

/// An `NBDConnectionStateMachine.Action` in a comparable form (bytes as arrays).
enum Effect: Equatable {
    case write([UInt8])
    case writeAndStartTLS([UInt8])
    case negotiated(NBDExportInfo)
    case listed([NBDExportListing], abort: [UInt8])
    case send(cookie: UInt64, header: [UInt8], payload: [[UInt8]], timeout: TimeAmount?)
    case reject(ErrorSummary)
    case data(cookie: UInt64, offset: UInt64, [UInt8])
    case zeroes(cookie: UInt64, offset: UInt64, length: UInt32)
    case succeed(cookie: UInt64, NBDCommandResult)
    case fail(cookie: UInt64, ErrorSummary)
    case disconnect([UInt8])
    case close(Closing)

    /// `CloseContext` in a comparable form.
    struct Closing: Equatable {
        var error: ErrorSummary
        var failHandshake = false
        var failedRequests: [UInt64] = []
        var farewell: [UInt8]? = nil
        var closeChannel = true
        var completeDisconnect = false
    }

    init?(_ action: NBDConnectionStateMachine.Action) {
        switch action {
        case .wait: return nil
        case .write(let bytes): self = .write(bytes.bytes)
        case .writeAndStartTLS(let bytes): self = .writeAndStartTLS(bytes.bytes)
        case .negotiated(let info): self = .negotiated(info)
        case .listed(let exports, let abort): self = .listed(exports, abort: abort.bytes)
        case .sendRequest(let cookie, let header, let payload, let timeout):
            self = .send(cookie: cookie, header: header.bytes, payload: payload.map(\.bytes), timeout: timeout)
        case .rejectRequest(let error): self = .reject(ErrorSummary(error))
        case .deliverData(let cookie, let offset, let bytes): self = .data(cookie: cookie, offset: offset, bytes.bytes)
        case .deliverZeroes(let cookie, let offset, let length): self = .zeroes(cookie: cookie, offset: offset, length: length)
        case .succeedRequest(let cookie, let result): self = .succeed(cookie: cookie, result)
        case .failRequest(let cookie, let error): self = .fail(cookie: cookie, ErrorSummary(error))
        case .sendDisconnect(let request): self = .disconnect(request.bytes)
        case .closeConnection(let context):
            self = .close(Closing(
                error: ErrorSummary(context.error),
                failHandshake: context.failHandshake,
                failedRequests: context.failedRequests,
                farewell: context.farewell?.bytes,
                closeChannel: context.closeChannel,
                completeDisconnect: context.completeDisconnect
            ))
        }
    }

    /// Shorthand for the close a protocol violation causes.
    static func violation(_ message: String, failing requests: [UInt64]) -> Effect {
        .close(Closing(error: ErrorSummary(.protocolViolation, message), failedRequests: requests))
    }
}

/// One thing that happens to the connection machine.
enum ConnectionEvent {
    /// Bytes from the server.
    case server([UInt8])
    /// A request submitted by the user.
    case submit(NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt32, payload: [[UInt8]] = [])
    case tlsEstablished
    case timerFired(cookie: UInt64)
    case disconnect
    case channelClosed
    case error(NBDConnectionStateMachine.CaughtError)

    static func read(_ offset: UInt64, _ length: UInt32) -> ConnectionEvent { .submit(.read, offset: offset, length: length) }
}

/// Feeds events to a connection machine and records, in order, every action it asks for.
struct ConnectionDriver {
    var machine: NBDConnectionStateMachine
    var effects: [Effect] = []

    /// Performs `first` and every action after it, until the machine waits.
    mutating func collect(_ first: NBDConnectionStateMachine.Action) {
        var action = first
        while let effect = Effect(action) {
            effects.append(effect)
            action = machine.nextAction()
        }
    }

    mutating func apply(_ event: ConnectionEvent, byteByByte: Bool) {
        switch event {
        case .server(let bytes):
            if byteByByte {
                for byte in bytes { collect(machine.bytesReceived(ByteBuffer(bytes: [byte]))) }
            } else {
                collect(machine.bytesReceived(ByteBuffer(bytes: bytes)))
            }
        case .submit(let command, let flags, let offset, let length, let payload):
            collect(machine.requestSubmitted(
                command, flags: flags, offset: offset, length: length, payload: payload.map { ByteBuffer(bytes: $0) }
            ))
        case .tlsEstablished: collect(machine.tlsEstablished())
        case .timerFired(let cookie): collect(machine.timerFired(cookie: cookie))
        case .disconnect: collect(machine.disconnectRequested())
        case .channelClosed: collect(machine.channelClosed())
        case .error(let caught): collect(machine.errorCaught(caught))
        }
    }

    /// Runs `events` on `machine`; all at once, consecutive server bytes are fed as one buffer
    /// (unless `mergingServerBytes` is false: each `.server` is then one read).
    static func run(_ machine: NBDConnectionStateMachine, _ events: [ConnectionEvent], byteByByte: Bool, mergingServerBytes: Bool = true) -> ConnectionDriver {
        var driver = ConnectionDriver(machine: machine)
        var merged: [ConnectionEvent] = []
        for event in events {
            if !byteByByte, mergingServerBytes, case .server(let more) = event, case .server(let earlier)? = merged.last {
                merged[merged.count - 1] = .server(earlier + more)
            } else {
                merged.append(event)
            }
        }
        for event in merged { driver.apply(event, byteByByte: byteByByte) }
        return driver
    }
}

/// Joins consecutive data effects of one cookie that continue each other.
func coalesced(_ effects: [Effect]) -> [Effect] {
    var result: [Effect] = []
    for effect in effects {
        if case .data(let cookie, let offset, let bytes) = effect,
           case .data(let lastCookie, let lastOffset, let lastBytes)? = result.last,
           lastCookie == cookie, lastOffset + UInt64(lastBytes.count) == offset {
            result[result.count - 1] = .data(cookie: cookie, offset: lastOffset, lastBytes + bytes)
        } else {
            result.append(effect)
        }
    }
    return result
}

/// Runs `events` all at once and one byte at a time, expects the same effects (data pieces
/// joined) both ways, and returns the all-at-once run.
@discardableResult
func transcript(
    _ machine: NBDConnectionStateMachine,
    _ events: [ConnectionEvent],
    sourceLocation: SourceLocation = #_sourceLocation
) -> ConnectionDriver {
    let whole = ConnectionDriver.run(machine, events, byteByByte: false)
    let byteWise = ConnectionDriver.run(machine, events, byteByByte: true)
    #expect(coalesced(whole.effects) == coalesced(byteWise.effects), "all at once and byte by byte differ", sourceLocation: sourceLocation)
    #expect(whole.machine.requestsInFlight == byteWise.machine.requestsInFlight, sourceLocation: sourceLocation)
    return whole
}

/// A request header exactly as the client must write it.
func requestHeader(command: UInt16, flags: UInt16 = 0, cookie: UInt64, offset: UInt64, length: UInt32) -> [UInt8] {
    [0x25, 0x60, 0x95, 0x13] + BE.u16(flags) + BE.u16(command) + BE.u64(cookie) + BE.u64(offset) + BE.u32(length)
}
