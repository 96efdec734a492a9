@testable import GatewayParsing

/// The HTTP request state machine under any order of events (libmicrohttpd's calls, jobs'
/// verdicts and answers, body producers, shutdown): each byte picks an event. Whatever the
/// order libmicrohttpd allows (the headers first, no call while suspended), a connection is never suspended twice nor resumed unless suspended, at most one
/// answer is queued, and nothing is done on a completed request.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTPRequest(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let input = UnsafeBufferPointer(start: start, count: count)
    var machine = HTTPRequestStateMachine<Int, Int>()
    var suspended = false
    var queued = 0
    var completed = false

    func startOf(_ byte: UInt8) -> HTTPRequestStateMachine<Int, Int>.Start {
        switch byte >> 3 & 3 {
        case 0: .refuse(Int(byte))
        case 1: .respondLater
        case 2: .upload(Int(byte))
        default: .decideUpload
        }
    }

    for (index, byte) in input.enumerated() {
        let action: HTTPRequestStateMachine<Int, Int>.Action
        switch index == 0 ? 0 : byte & 7 {
        case 0:
            // The headers come first and once (libmicrohttpd's first call).
            if index > 0 { continue }
            action = machine.headersReceived(startOf(byte))
        case 1:
            // libmicrohttpd never calls the handler of a suspended connection.
            if suspended { continue }
            action = machine.called(bodyBytes: Int(byte >> 3 & 1) * 4096, refusal: byte & 0x40 != 0 ? 503 : nil)
        case 2: action = machine.decided(startOf(byte))
        case 3: action = machine.answerReady(Int(byte))
        case 4: action = machine.suspendWanted()
        case 5: action = machine.resumeWanted()
        case 6:
            let wasSuspended = machine.completed()
            guard wasSuspended == suspended else { fatalError("completed: the machine says suspended \(wasSuspended), the adapter \(suspended)") }
            suspended = false
            completed = true
            continue
        default: action = machine.shutdown(refusal: 503)
        }
        if completed {
            switch action {
            case .proceed, .discard: break
            default: fatalError("\(action) on a completed request")
            }
        }
        if action.suspends {
            guard !suspended else { fatalError("\(action): suspended twice") }
            suspended = true
        }
        if case .resume = action {
            guard suspended else { fatalError("resumed while not suspended") }
            suspended = false
        }
        if case .queue = action {
            queued += 1
            guard queued == 1 else { fatalError("a second answer queued") }
        }
        guard machine.isSuspended == suspended else { fatalError("isSuspended \(machine.isSuspended), the adapter \(suspended)") }
    }
    return 0
}
