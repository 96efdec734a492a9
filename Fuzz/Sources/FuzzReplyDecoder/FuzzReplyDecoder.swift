import NBDProtocol
import NIOCore

/// Transmission replies from a hostile server: the first byte picks the negotiation
/// (structured or not) and how the rest is cut into arrivals; the decoder must throw or
/// decode, never trap, and never hand out more data than a request asked for.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReplyDecoder(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start, count > 0 else { return 0 }
    let input = UnsafeBufferPointer(start: start, count: count)
    let control = input[0]
    var decoder = NBDReplyDecoder(structuredReplies: control & 1 == 1)
    let piece = Int(control >> 1) + 1
    // Every cookie stands for a request; its low bits choose the command.
    let expectation: (UInt64) -> NBDReplyDecoder.Expectation? = { cookie in
        switch cookie % 4 {
        case 0: return .init(command: .read, offset: cookie & 0xFFFF, length: UInt32(cookie >> 8 & 0xFFFF))
        case 1: return .init(command: .write, offset: 0, length: 512)
        case 2: return .init(command: .blockStatus, offset: 0, length: 1 << 20)
        default: return nil  // A cookie nobody sent.
        }
    }
    var buffer = ByteBuffer()
    var offset = 1
    while offset < count {
        let end = min(count, offset + piece)
        buffer.writeBytes(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(input)[offset..<end]))
        offset = end
        do {
            while let event = try decoder.next(&buffer, expectation: expectation) {
                if case .data(let cookie, _, let bytes) = event, let expected = expectation(cookie), bytes.readableBytes > Int(expected.length) {
                    fatalError("handed out \(bytes.readableBytes) bytes for a request of \(expected.length)")
                }
            }
        } catch {
            return 0  // A protocol violation, reported as one.
        }
    }
    return 0
}
