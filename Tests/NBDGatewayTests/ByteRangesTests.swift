@testable import NBDGateway
import Testing

@Suite("ByteRanges: Range and Content-Range parsing (pure)")
struct ByteRangesTests {
    typealias Selection = ByteRanges.Selection

    /// Header, export size, expected selection.
    struct Case: Sendable, CustomTestStringConvertible {
        var header: String?
        var size: UInt64
        var expected: Selection
        init(_ header: String?, size: UInt64 = 100, _ expected: Selection) {
            self.header = header
            self.size = size
            self.expected = expected
        }
        var testDescription: String { "\(header.map { "\"\($0)\"" } ?? "nil") on \(size) bytes" }
    }

    @Test("select: single ranges of every form, clipped past the end", arguments: [
        Case(nil, .whole),
        Case("bytes=0-9", .single(0...9)),
        Case("bytes=0-0", .single(0...0)),
        Case("bytes=10-", .single(10...99)),
        Case("bytes=-10", .single(90...99)),
        Case("bytes=-1000", .single(0...99)),  // A suffix longer than the export: all of it.
        Case("bytes=90-200", .single(90...99)),  // Clipped.
        Case("bytes=99-100", .single(99...99)),  // nbdkit's curl plugin: one byte past the end.
        Case("Bytes=1-2", .single(1...2)),  // The unit is case-insensitive.
        Case("  bytes = 3-4 ", .single(3...4)),
        Case("bytes=0-9223372036854775807", .single(0...99)),  // Int64.max as a last byte: clipped.
        Case("bytes=-9223372036854775807", .single(0...99)),
    ])
    func single(_ test: Case) {
        #expect(ByteRanges.select(test.header, size: test.size) == test.expected)
    }

    @Test("select: several ranges are sorted and coalesced", arguments: [
        Case("bytes=0-9,20-29", .multiple([0...9, 20...29])),
        Case("bytes=20-29,0-9", .multiple([0...9, 20...29])),
        Case("bytes=0-9, 20-29 ,-5", .multiple([0...9, 20...29, 95...99])),
        Case("bytes=0-9,,20-29", .multiple([0...9, 20...29])),  // Empty list elements are allowed.
        Case("bytes=0-9,5-14", .single(0...14)),  // Overlapping.
        Case("bytes=0-9,10-19", .single(0...19)),  // Adjacent.
        Case("bytes=50-59,0-99", .single(0...99)),
        Case("bytes=0-9,200-300", .single(0...9)),  // The unsatisfiable one is dropped.
        Case("bytes=-5,95-", .single(95...99)),
    ])
    func multiple(_ test: Case) {
        #expect(ByteRanges.select(test.header, size: test.size) == test.expected)
    }

    @Test("select: nothing satisfiable → unsatisfiable (bytes=-0, past the end, empty disk)", arguments: [
        Case("bytes=100-", .unsatisfiable),
        Case("bytes=100-200", .unsatisfiable),
        Case("bytes=200-300,150-", .unsatisfiable),
        Case("bytes=-0", .unsatisfiable),
        Case("bytes=9223372036854775807-", .unsatisfiable),
        Case("bytes=0-0", size: 0, .unsatisfiable),
        Case("bytes=0-", size: 0, .unsatisfiable),
        Case("bytes=-5", size: 0, .unsatisfiable),
    ])
    func unsatisfiable(_ test: Case) {
        #expect(ByteRanges.select(test.header, size: test.size) == test.expected)
    }

    @Test("select: other units, garbage and numbers that do not fit are ignored (whole export)", arguments: [
        Case("items=0-9", .whole),
        Case("bytes 0-9", .whole),
        Case("bytes=", .whole),
        Case("bytes", .whole),
        Case("", .whole),
        Case("bytes=abc", .whole),
        Case("bytes=5-2", .whole),  // Last before first: invalid.
        Case("bytes=1-2-3", .whole),
        Case("bytes=--5", .whole),
        Case("bytes=+1-2", .whole),
        Case("bytes=0x10-20", .whole),
        Case("bytes=0-9,x", .whole),  // One bad element spoils the header.
        Case("bytes=0-99999999999999999999", .whole),  // 20 digits.
        Case("bytes=-99999999999999999999", .whole),
        Case("bytes=9223372036854775808-", .whole),  // 2^63: above the 63-bit limit.
        Case("bytes=0-18446744073709551615", .whole),  // UInt64.max.
        Case("bytes=0-9", size: 0, .unsatisfiable),  // (Parses; nothing on an empty disk.)
    ])
    func ignored(_ test: Case) {
        #expect(ByteRanges.select(test.header, size: test.size) == test.expected)
    }

    @Test("select: at most 64 ranges after coalescing; overlapping duplicates do not count")
    func tooMany() {
        let sixtyFour = (0..<64).map { "\($0 * 2)-\($0 * 2)" }.joined(separator: ",")
        let sixtyFive = (0..<65).map { "\($0 * 2)-\($0 * 2)" }.joined(separator: ",")
        guard case .multiple(let ranges) = ByteRanges.select("bytes=" + sixtyFour, size: 1000) else {
            Issue.record("64 ranges should be served")
            return
        }
        #expect(ranges.count == 64)
        #expect(ByteRanges.select("bytes=" + sixtyFive, size: 1000) == .tooMany)
        // A thousand copies of one range coalesce into one.
        let duplicates = Array(repeating: "0-0", count: 1000).joined(separator: ",")
        #expect(ByteRanges.select("bytes=" + duplicates, size: 1000) == .single(0...0))
        // Adjacent single bytes coalesce too: 200 of them are one range.
        let adjacent = (0..<200).map { "\($0)-\($0)" }.joined(separator: ",")
        #expect(ByteRanges.select("bytes=" + adjacent, size: 1000) == .single(0...199))
    }

    @Test("select: huge export sizes")
    func hugeSizes() {
        let size = UInt64(Int64.max)
        #expect(ByteRanges.select("bytes=-1", size: size) == .single((size - 1)...(size - 1)))
        #expect(ByteRanges.select("bytes=9223372036854775806-", size: size) == .single((size - 1)...(size - 1)))
        #expect(ByteRanges.select("bytes=0-", size: size) == .single(0...(size - 1)))
    }

    // MARK: - Content-Range

    @Test("contentRange: bytes a-b/*, a-b/SIZE and libcurl's a-e/-1")
    func contentRangeForms() {
        #expect(ByteRanges.contentRange("bytes 0-9/*") == .init(first: 0, length: 10, total: nil))
        #expect(ByteRanges.contentRange("bytes 5-14/100") == .init(first: 5, length: 10, total: 100))
        #expect(ByteRanges.contentRange("bytes 99-99/100") == .init(first: 99, length: 1, total: 100))
        #expect(ByteRanges.contentRange("bytes 0-196608/-1") == .init(first: 0, length: nil, total: nil))
        #expect(ByteRanges.contentRange("bytes 4096-4196/-1") == .init(first: 4096, length: nil, total: nil))
        #expect(ByteRanges.contentRange("Bytes 1-1/*") == .init(first: 1, length: 1, total: nil))
        #expect(ByteRanges.contentRange(" bytes 1-2/* ") == .init(first: 1, length: 2, total: nil))
        #expect(ByteRanges.contentRange("bytes 0-9223372036854775806/*") == .init(first: 0, length: 9_223_372_036_854_775_807, total: nil))
    }

    @Test("contentRange: malformed forms are nil", arguments: [
        "bytes 9-0/*", "bytes 0-9/5", "bytes 0-9/10x", "bytes=0-9/*", "0-9/*", "bytes */100", "bytes 0-9",
        "bytes a-9/*", "bytes 0-9/x", "bytes -1-9/*", "items 0-9/*", "bytes 0-99999999999999999999/*",
        "bytes 5-4/-1", "bytes 0-9/-2", "bytes 0-9/", "bytes -/*", "", "bytes 0 - 9/*", "bytes 0-9/10/",
    ])
    func contentRangeMalformed(_ header: String) {
        #expect(ByteRanges.contentRange(header) == nil)
    }

    @Test("decimal: digits only, at most 2^63-1")
    func decimal() {
        #expect(ByteRanges.decimal("0") == 0)
        #expect(ByteRanges.decimal("00012") == 12)
        #expect(ByteRanges.decimal("9223372036854775807") == 9_223_372_036_854_775_807)
        for bad in ["", "12a", "+1", "-1", " 1", "1 ", "9223372036854775808", "18446744073709551615", "99999999999999999999", "1e3", "0x1"] {
            #expect(ByteRanges.decimal(Substring(bad)) == nil, "\"\(bad)\"")
        }
    }
}
