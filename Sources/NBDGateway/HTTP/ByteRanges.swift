/// RFC 9110 byte ranges: parsing `Range` for reads and `Content-Range` for writes. Pure.
public enum ByteRanges {
    /// Most ranges one GET may ask for, after coalescing (guards against many tiny ranges).
    public static let maximumRanges = 64

    /// What a `Range` header asks of an export of `size` bytes.
    public enum Selection: Equatable, Sendable {
        /// No usable `Range` (absent, unparseable, another unit): the whole export, 200.
        case whole
        /// One range (206 with `Content-Range`).
        case single(ClosedRange<UInt64>)
        /// Several ranges, sorted and coalesced (206 multipart/byteranges).
        case multiple([ClosedRange<UInt64>])
        /// None satisfiable (416).
        case unsatisfiable
        /// More than `maximumRanges` after coalescing (416 too_many_ranges).
        case tooMany
    }

    private enum Spec { case closed(UInt64, UInt64?), suffix(UInt64) }

    /// Resolves a `Range` header against an export size.
    public static func select(_ header: String?, size: UInt64) -> Selection {
        guard let header, let specs = parse(header) else { return .whole }
        var ranges: [ClosedRange<UInt64>] = []
        for spec in specs {
            switch spec {
            case .closed(let first, let last):
                guard first < size else { continue }
                ranges.append(first...min(last ?? (size - 1), size - 1))
            case .suffix(let count):
                guard count > 0, size > 0 else { continue }
                ranges.append((size - min(count, size))...(size - 1))
            }
        }
        guard !ranges.isEmpty else { return .unsatisfiable }
        let merged = coalesce(ranges)
        if merged.count > maximumRanges { return .tooMany }
        return merged.count == 1 ? .single(merged[0]) : .multiple(merged)
    }

    /// Parses `bytes=...`; nil when it does not parse (then the header is ignored, per RFC 9110).
    /// Works on the UTF-8 bytes: a header is ASCII when it is valid at all.
    private static func parse(_ header: String) -> [Spec]? {
        let bytes = trimmingSpaces(Array(header.utf8)[...])
        guard let equals = bytes.firstIndex(of: UInt8(ascii: "=")) else { return nil }
        let unit = trimmingSpaces(bytes[..<equals])
        guard unit.count == 5, zip(unit, "bytes".utf8).allSatisfy({ $0 | 0x20 == $1 }) else { return nil }
        var specs: [Spec] = []
        for part in bytes[(equals + 1)...].split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false) {
            let item = trimmingSpaces(part)
            if item.isEmpty { continue }  // RFC 9110 allows empty list elements.
            guard let dash = item.firstIndex(of: UInt8(ascii: "-")) else { return nil }
            let first = item[..<dash]
            let last = item[(dash + 1)...]
            if first.isEmpty {
                guard let count = decimal(digits: last) else { return nil }
                specs.append(.suffix(count))
            } else {
                guard let start = decimal(digits: first) else { return nil }
                if last.isEmpty {
                    specs.append(.closed(start, nil))
                } else {
                    guard let end = decimal(digits: last), end >= start else { return nil }
                    specs.append(.closed(start, end))
                }
            }
            if specs.count > 10 * maximumRanges { return specs }  // Enough to know it is too many.
        }
        return specs.isEmpty ? nil : specs
    }

    private static func trimmingSpaces(_ bytes: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        let isSpace = { (byte: UInt8) in byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        guard let start = bytes.firstIndex(where: { !isSpace($0) }), let end = bytes.lastIndex(where: { !isSpace($0) }) else {
            return bytes[bytes.endIndex...]
        }
        return bytes[start...end]
    }

    /// Sorts and merges overlapping or adjacent ranges.
    static func coalesce(_ ranges: [ClosedRange<UInt64>]) -> [ClosedRange<UInt64>] {
        var merged: [ClosedRange<UInt64>] = []
        for range in ranges.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = merged.last, range.lowerBound <= last.upperBound &+ 1, last.upperBound != .max {
                merged[merged.count - 1] = last.lowerBound...max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        return merged
    }

    /// A PUT's `Content-Range`.
    public struct ContentRange: Equatable, Sendable {
        public var first: UInt64
        /// Bytes the body must have; nil for libcurl's `/-1` form, where the body decides.
        public var length: UInt64?
        /// The declared total size, if any.
        public var total: UInt64?
    }

    /// Parses `bytes a-b/*`, `bytes a-b/SIZE` or `bytes a-e/-1`; nil when malformed.
    public static func contentRange(_ header: String) -> ContentRange? {
        let trimmed = header.trimmingSpaces
        guard trimmed.lowercased().hasPrefix("bytes ") else { return nil }
        let rest = trimmed.dropFirst(6).trimmingSpaces
        guard let slash = rest.firstIndex(of: "/"), let dash = rest[..<slash].firstIndex(of: "-") else { return nil }
        guard let first = decimal(rest[..<dash]), let last = decimal(rest[rest.index(after: dash)..<slash]) else { return nil }
        let totalText = rest[rest.index(after: slash)...]
        if totalText == "-1" {
            // libcurl resume upload: `a-(a+length)/-1`, the end is one past the last byte.
            guard last >= first else { return nil }
            return ContentRange(first: first, length: nil, total: nil)
        }
        guard last >= first, last - first < .max else { return nil }
        if totalText == "*" { return ContentRange(first: first, length: last - first + 1, total: nil) }
        guard let total = decimal(totalText), last < total else { return nil }
        return ContentRange(first: first, length: last - first + 1, total: total)
    }

    /// A non-negative decimal that fits in 63 bits, digits only.
    public static func decimal(_ text: Substring) -> UInt64? {
        decimal(digits: text.utf8)
    }

    static func decimal<Digits: Collection<UInt8>>(digits: Digits) -> UInt64? {
        guard !digits.isEmpty, digits.count <= 19 else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt64(digit - UInt8(ascii: "0"))  // 19 digits cannot overflow 64 bits.
        }
        return value <= UInt64(Int64.max) ? value : nil
    }
}

extension StringProtocol where SubSequence == Substring {
    var trimmingSpaces: Substring {
        let scalars = self[...]
        guard let start = scalars.firstIndex(where: { $0 != " " && $0 != "\t" }) else { return scalars[scalars.endIndex...] }
        let end = scalars.lastIndex(where: { $0 != " " && $0 != "\t" }) ?? start
        return scalars[start...end]
    }
}
