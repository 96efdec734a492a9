@testable import GatewayParsing

/// Request targets as they arrive (origin or absolute form, any bytes): routed or 404, never a
/// trap. An export name that decodes is routed back to itself once encoded again, and the
/// origin form of an origin form is itself.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRequestTarget(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start else { return 0 }
    let target = String(decoding: UnsafeBufferPointer(start: start, count: count), as: UTF8.self)
    let origin = GatewayRequest.originForm(target)
    guard GatewayRequest.originForm(origin) == origin else { fatalError("\(target): origin form \(origin) is not stable") }
    let path = String(origin.prefix { $0 != "?" })
    _ = NBDQuery.decode(String(origin.drop { $0 != "?" }))
    _ = NBDQuery.isValidRequestID(target)

    guard let route = Route.parse(path) else { return 0 }
    guard let name = try? route.decodedExportName() else { return 0 }
    let encoded = encodeSegment(name)
    let again: Route?
    switch route {
    case .export: again = Route.parse("/exports/\(encoded)")
    case .data: again = Route.parse("/exports/\(encoded)/data")
    case .extents: again = Route.parse("/exports/\(encoded)/extents")
    case .flush: again = Route.parse("/exports/\(encoded)/flush")
    case .trim: again = Route.parse("/exports/\(encoded)/trim")
    case .zero: again = Route.parse("/exports/\(encoded)/zero")
    case .checksum: again = Route.parse("/exports/\(encoded)/checksum")
    case .checksumAlgorithms: again = Route.parse("/exports/\(encoded)/checksum/algorithms")
    default: fatalError("\(path): \(route) has an export name")
    }
    guard let again, (try? again.decodedExportName()) == name else {
        fatalError("\(path): the name \(name), encoded as \(encoded), does not route back to itself")
    }
    return 0
}

/// One path segment, every byte but RFC 3986's unreserved ones percent-encoded.
func encodeSegment(_ text: String) -> String {
    var encoded = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            encoded.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            let hex = Array("0123456789ABCDEF".utf8)
            encoded += "%" + String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 15)]], as: UTF8.self)
        }
    }
    return encoded
}
