import NBDProtocol
import NIOCore

/// The connection state machine after a good handshake, under any mix of the user's requests,
/// a hostile server's reply bytes (cut anywhere), timers, a disconnect and the channel closing:
/// each byte of the input's first part picks an event, the rest is what the server sends. It
/// must never trap; each request ends at most once; READ data stays inside its request; after
/// the connection closes, nothing is delivered.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConnection(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start, count > 1 else { return 0 }
    let input = Array(UnsafeBufferPointer(start: start, count: count))
    let eventCount = min(Int(input[0]) % 32 + 1, count - 1)
    let events = input[1...eventCount]
    var server = ByteBuffer(bytes: input[(eventCount + 1)...])

    var machine = NBDConnectionStateMachine(handshake: .init(goal: .negotiate(exportName: "disk")))
    var tracker = Tracker()
    tracker.perform(machine.bytesReceived(handshake()), &machine)
    guard tracker.negotiated else { fatalError("a good handshake did not negotiate") }

    for event in events {
        switch event & 7 {
        case 0, 1:  // A READ of up to 64 KiB at a small offset.
            let offset = UInt64(event >> 3) * 512
            let length = UInt32(event >> 3 & 7 + 1) * 4096
            tracker.submitted(.read, offset: offset, length: length, machine.requestSubmitted(.read, offset: offset, length: length), &machine)
        case 2:
            tracker.submitted(.write, offset: 0, length: 512, machine.requestSubmitted(.write, offset: 0, length: 512, payload: [ByteBuffer(repeating: 1, count: 512)]), &machine)
        case 3:
            tracker.submitted(.blockStatus, offset: 0, length: 1 << 20, machine.requestSubmitted(.blockStatus, offset: 0, length: 1 << 20), &machine)
        case 4:  // Some of the server's bytes arrive.
            let take = min(server.readableBytes, Int(event >> 3) * 8 + 1)
            if let piece = server.readSlice(length: take) { tracker.perform(machine.bytesReceived(piece), &machine) }
        case 5:
            if let cookie = machine.requestsInFlight.first { tracker.perform(machine.timerFired(cookie: cookie), &machine) }
        case 6:
            tracker.perform(machine.disconnectRequested(), &machine)
        default:
            tracker.perform(machine.channelClosed(), &machine)
        }
    }
    if server.readableBytes > 0 { tracker.perform(machine.bytesReceived(server), &machine) }
    tracker.perform(machine.channelClosed(), &machine)
    return 0
}

/// What the machine told the caller to do, checked as a user of it would need.
struct Tracker {
    var negotiated = false
    var closed = false
    /// Requests sent and not ended: their range, for READ data.
    var open: [UInt64: (command: NBDCommand, range: Range<UInt64>)] = [:]
    var ended: Set<UInt64> = []

    mutating func submitted(_ command: NBDCommand, offset: UInt64, length: UInt32, _ action: NBDConnectionStateMachine.Action, _ machine: inout NBDConnectionStateMachine) {
        if case .sendRequest(let cookie, _, _, _) = action {
            guard open[cookie] == nil, !ended.contains(cookie) else { fatalError("cookie \(cookie) used twice") }
            open[cookie] = (command, offset..<(offset + UInt64(length)))
        }
        perform(action, &machine)
    }

    mutating func end(_ cookie: UInt64) {
        guard open.removeValue(forKey: cookie) != nil else { fatalError("request \(cookie) ended twice or was never sent") }
        ended.insert(cookie)
    }

    mutating func perform(_ first: NBDConnectionStateMachine.Action, _ machine: inout NBDConnectionStateMachine) {
        var action = first
        while true {
            switch action {
            case .wait:
                return
            case .write, .writeAndStartTLS, .listed, .rejectRequest, .sendRequest:
                break
            case .negotiated:
                negotiated = true
            case .deliverData(let cookie, let offset, let bytes):
                guard !closed else { fatalError("data delivered after the close") }
                guard let request = open[cookie], request.command == .read else { fatalError("data for \(cookie), not an open READ") }
                guard offset >= request.range.lowerBound, offset + UInt64(bytes.readableBytes) <= request.range.upperBound else {
                    fatalError("data at \(offset)+\(bytes.readableBytes) outside \(request.range)")
                }
            case .deliverZeroes(let cookie, let offset, let length):
                guard let request = open[cookie], request.command == .read,
                      offset >= request.range.lowerBound, offset + UInt64(length) <= request.range.upperBound else {
                    fatalError("zeroes for \(cookie) at \(offset)+\(length) outside its READ")
                }
            case .succeedRequest(let cookie, _), .failRequest(let cookie, _):
                end(cookie)
            case .sendDisconnect:
                break
            case .closeConnection(let context):
                for cookie in context.failedRequests { end(cookie) }
                closed = true
            }
            action = machine.nextAction()
        }
    }
}

/// The server's side of a good negotiation: structured replies, base:allocation, a 1 MiB export.
func handshake() -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeBytes(Array("NBDMAGIC".utf8) + Array("IHAVEOPT".utf8))
    buffer.writeInteger(UInt16(3))  // FIXED_NEWSTYLE | NO_ZEROES
    func reply(_ option: UInt32, _ type: UInt32, _ payload: [UInt8] = []) {
        buffer.writeInteger(UInt64(0x0003_E889_0455_65A9))
        buffer.writeInteger(option)
        buffer.writeInteger(type)
        buffer.writeInteger(UInt32(payload.count))
        buffer.writeBytes(payload)
    }
    func be32(_ value: UInt32) -> [UInt8] { withUnsafeBytes(of: value.bigEndian) { Array($0) } }
    reply(8, 1)  // structured replies: ACK
    reply(10, 4, be32(1) + Array("base:allocation".utf8))  // the context, id 1
    reply(10, 1)
    var export: [UInt8] = [0, 0]  // NBD_INFO_EXPORT
    export += withUnsafeBytes(of: UInt64(1 << 20).bigEndian) { Array($0) }
    export += [0x01, 0x2D]  // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | CAN_MULTI_CONN
    reply(7, 3, export)
    reply(7, 1)
    return buffer
}
