import NBDProtocol

/// NBD URIs (what operators type into --backend and --export): parsed or refused, never a trap;
/// what parses prints back to something that parses to the same URI.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzURI(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    guard let uri = try? NBDURI(parsing: text) else { return 0 }
    guard let again = try? NBDURI(parsing: "\(uri)"), again == uri else {
        fatalError("\(text) parsed, but its printed form \(uri) does not parse back to it")
    }
    return 0
}
