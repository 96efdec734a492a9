@testable import GatewayParsing

/// `Range` and `Content-Range` headers as clients send them: the first 8 bytes are the export
/// size, the rest the header. Parsed or ignored, never a trap; every range selected lies inside
/// the export, sorted and apart; a Content-Range that parses describes bytes that exist.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzRanges(_ start: UnsafePointer<UInt8>?, _ count: Int) -> CInt {
    guard let start, count >= 8 else { return 0 }
    let input = UnsafeBufferPointer(start: start, count: count)
    // Sizes up to 2^63 - 1, as NBD exports are.
    let size = input[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) } >> 1
    let header = String(decoding: input[8...], as: UTF8.self)

    switch ByteRanges.select(header, size: size) {
    case .whole, .unsatisfiable, .tooMany:
        break
    case .single(let range):
        guard range.upperBound < size else { fatalError("\(header): \(range) is outside \(size) bytes") }
    case .multiple(let ranges):
        guard (2...ByteRanges.maximumRanges).contains(ranges.count) else { fatalError("\(header): \(ranges.count) ranges") }
        for (earlier, later) in zip(ranges, ranges.dropFirst()) where earlier.upperBound >= later.lowerBound {
            fatalError("\(header): \(earlier) and \(later) are not sorted and apart")
        }
        guard let last = ranges.last, last.upperBound < size else { fatalError("\(header): a range is outside \(size) bytes") }
    }

    if let range = ByteRanges.contentRange(header) {
        if let length = range.length {
            guard length > 0, range.first <= UInt64.max - (length - 1) else { fatalError("\(header): \(range)") }
            if let total = range.total, range.first + (length - 1) >= total { fatalError("\(header): past its total \(total)") }
        }
    }

    // Decimals: what parses prints back the same, but for leading zeros.
    let text = Substring(header)
    if let value = ByteRanges.decimal(text) {
        let digits = text.drop { $0 == "0" }
        guard value < 1 << 63, String(value) == (digits.isEmpty ? "0" : String(digits)) else {
            fatalError("\(header) parsed as \(value)")
        }
    }
    return 0
}
