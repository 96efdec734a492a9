import NBDProtocol
import NIOCore

/// A hostile server's side of the handshake, cut into arrivals by the first byte: the state
/// machine must answer, fail, or finish, never trap.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHandshake(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start, count > 0 else { return 0 }
    let input = UnsafeBufferPointer(start: start, count: count)
    let control = input[0]
    let goal: NBDHandshakeStateMachine.Goal = control & 1 == 0 ? .negotiate(exportName: "disk") : .list
    var machine = NBDHandshakeStateMachine(configuration: .init(goal: goal, useTLS: control & 2 != 0, structuredReplies: control & 4 != 0))
    let piece = Int(control >> 3) + 1
    var buffer = ByteBuffer()
    var offset = 1
    while offset < count {
        let end = min(count, offset + piece)
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(input)[offset..<end]))
        offset = end
        var action = machine.receive(&buffer)
        while true {
            switch action {
            case .wait:
                break
            case .send:
                action = machine.receive(&buffer)
                continue
            case .sendAndStartTLS:
                action = machine.tlsEstablished()
                continue
            case .negotiated, .listed, .fail:
                return 0
            }
            break
        }
    }
    _ = machine.connectionClosed()
    return 0
}
