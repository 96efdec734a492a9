import NBDProtocol
import Testing

@Suite("NBDRequestPlanner")
struct RequestPlannerTests {
    /// 10000 bytes (not a multiple of the block), 512-byte minimum, 4 KiB maximum.
    static let planner = NBDRequestPlanner(exportSize: 10000, blockSize: NBDBlockSize(minimum: 512, preferred: 512, maximum: 4096))

    // MARK: - Bounds

    @Test(arguments: [
        (0, 10000),
        (9999, 1),
        (0, 1),
        (5000, 5000),
    ] as [(UInt64, UInt64)])
    func inBounds(offset: UInt64, length: UInt64) {
        #expect(throws: Never.self) { try Self.planner.checkBounds(offset: offset, length: length) }
    }

    @Test(arguments: [
        (9999, 2),
        (10000, 1),
        (0, 10001),
        (UInt64.max, 2),  // offset + length overflows
        (2, UInt64.max),  // offset + length overflows
        (UInt64.max, UInt64.max),
        (UInt64.max - 100, 101),  // wraps to exactly 0
    ] as [(UInt64, UInt64)])
    func outOfBounds(offset: UInt64, length: UInt64) {
        let error = #expect(throws: NBDError.self) { try Self.planner.checkBounds(offset: offset, length: length) }
        #expect(error?.code == .outOfBounds)
    }

    @Test func zeroLengthIsInvalid() {
        for offset: UInt64 in [0, 5000, 10000, UInt64.max] {
            let error = #expect(throws: NBDError.self) { try Self.planner.checkBounds(offset: offset, length: 0) }
            #expect(error?.code == .invalidArgument)
        }
    }

    @Test func boundsOfAHugeExport() throws {
        let planner = NBDRequestPlanner(exportSize: .max, blockSize: .unadvertised)
        try planner.checkBounds(offset: .max - 1, length: 1)
        let error = #expect(throws: NBDError.self) { try planner.checkBounds(offset: .max, length: 1) }
        #expect(error?.code == .outOfBounds)
    }

    // MARK: - Alignment

    @Test(arguments: [
        (100, 10, 0, 512),
        (512, 512, 512, 1024),  // already aligned
        (511, 2, 0, 1024),  // straddles a boundary
        (1000, 100, 512, 1536),
        (0, 10000, 0, 10000),  // the whole export
        (9800, 200, 9728, 10000),  // widened end clipped to the export size
        (9727, 1, 9216, 9728),
    ] as [(UInt64, UInt64, UInt64, UInt64)])
    func alignment(offset: UInt64, length: UInt64, start: UInt64, end: UInt64) {
        #expect(Self.planner.aligned(offset: offset, length: length) == start..<end)
        let unchanged = offset == start && offset + length == end
        #expect(Self.planner.isAligned(offset: offset, length: length) == unchanged)
    }

    @Test func alignedRanges() {
        #expect(Self.planner.isAligned(offset: 512, length: 512))
        #expect(Self.planner.isAligned(offset: 9728, length: 272))  // ends at the export's end
        #expect(!Self.planner.isAligned(offset: 100, length: 10))
        #expect(!Self.planner.isAligned(offset: 512, length: 500))
    }

    @Test func minimumOfOneNeverWidens() {
        let planner = NBDRequestPlanner(exportSize: 1000, blockSize: .unadvertised)
        #expect(planner.aligned(offset: 3, length: 7) == 3..<10)
        #expect(planner.isAligned(offset: 3, length: 7))
    }

    // MARK: - Whole blocks inside a range

    @Test(arguments: [
        (0, 512, 0, 512),
        (100, 1000, 512, 1024),  // both edges rounded inwards
        (511, 1026, 512, 1536),
        (1024, 4096, 1024, 5120),  // already aligned
        (9000, 1000, 9216, 10000),  // reaches the export's end: its partial last block counts
        (0, 10000, 0, 10000),
    ] as [(UInt64, UInt64, UInt64, UInt64)])
    func innerAligned(offset: UInt64, length: UInt64, start: UInt64, end: UInt64) {
        #expect(Self.planner.innerAligned(offset: offset, length: length) == start..<end)
    }

    @Test(arguments: [
        (100, 10),  // inside one block
        (100, 800),  // 100..<900 holds no whole block
        (1024, 0),
        (9900, 100),  // only the export's partial last block, not from its start
        (UInt64.max - 10, 100),  // overflows
    ] as [(UInt64, UInt64)])
    func noWholeBlockInside(offset: UInt64, length: UInt64) {
        #expect(Self.planner.innerAligned(offset: offset, length: length) == nil)
    }

    @Test func innerAlignedAtTheTopOfTheRangeDoesNotTrap() {
        let planner = NBDRequestPlanner(exportSize: .max, blockSize: NBDBlockSize(minimum: 512, preferred: 512, maximum: 1 << 20))
        #expect(planner.innerAligned(offset: UInt64.max - 10, length: 10) == nil)
        #expect(planner.innerAligned(offset: UInt64.max - 1000, length: 1000) == (UInt64.max - 511)..<UInt64.max)
        #expect(NBDRequestPlanner(exportSize: 1000, blockSize: .unadvertised).innerAligned(offset: 3, length: 7) == 3..<10)
    }

    // MARK: - Splitting

    @Test func splitAtTheMaximum() {
        let planner = NBDRequestPlanner(exportSize: 64 << 20, blockSize: NBDBlockSize(minimum: 512, preferred: 4096, maximum: 4 << 20))
        let mib: UInt64 = 1 << 20
        let expected: [Range<UInt64>] = [0..<(4 * mib), (4 * mib)..<(8 * mib), (8 * mib)..<(10 * mib)]
        #expect(planner.split(0..<(10 * mib)) == expected)
        #expect(planner.split(512..<1024) == [512..<1024])
        #expect(planner.split(0..<(4 * mib)) == [0..<(4 * mib)])
        #expect(planner.split(0..<0) == [])
    }

    @Test func splitKeepsPiecesAligned() {
        // A maximum that is not a multiple of the minimum is rounded down to one.
        let planner = NBDRequestPlanner(exportSize: 1 << 20, blockSize: NBDBlockSize(minimum: 4096, preferred: 4096, maximum: 10000))
        let pieces = planner.split(4096..<24576)
        #expect(pieces == [4096..<12288, 12288..<20480, 20480..<24576])
        for piece in pieces {
            #expect(piece.lowerBound % 4096 == 0)
            #expect(piece.count <= 10000)
        }
    }

    @Test func splitWithAnExplicitLimit() {
        #expect(Self.planner.split(0..<3000, limit: 1000) == [0..<512, 512..<1024, 1024..<1536, 1536..<2048, 2048..<2560, 2560..<3000])
        // A limit below the minimum still makes progress one minimum block at a time.
        #expect(Self.planner.split(0..<1024, limit: 100) == [0..<512, 512..<1024])
        #expect(Self.planner.split(0..<10000, limit: 1 << 30) == [0..<10000])
    }

    @Test func splitCoversTheRangeExactly() {
        let planner = NBDRequestPlanner(exportSize: 1 << 40, blockSize: NBDBlockSize(minimum: 512, preferred: 512, maximum: 1 << 20))
        let end: UInt64 = (5 << 20) + 2048
        let range: Range<UInt64> = 1536..<end
        let pieces = planner.split(range)
        #expect(pieces.first?.lowerBound == range.lowerBound)
        #expect(pieces.last?.upperBound == range.upperBound)
        for (left, right) in zip(pieces, pieces.dropFirst()) {
            #expect(left.upperBound == right.lowerBound)
        }
        #expect(pieces.allSatisfy { $0.count <= 1 << 20 })
        #expect(pieces.count == 6)
    }

    @Test func unadvertisedBlockSizeDefaults() {
        #expect(NBDBlockSize.unadvertised == NBDBlockSize(minimum: 1, preferred: 512, maximum: 32 << 20))
        #expect(NBDBlockSize.unadvertised.isValid)
        #expect(NBDBlockSize.unadvertised.description == "minimum 1, preferred 512, maximum 33554432")
    }

    // MARK: - Arithmetic at the top of the 64-bit range

    /// Arithmetic near 2^64 must not trap (a trap would kill the process running the test).
    @Test func splitAtTheTopOfTheRangeDoesNotTrap() {
        let planner = NBDRequestPlanner(exportSize: .max, blockSize: .unadvertised)
        #expect(planner.split((UInt64.max - 100)..<UInt64.max) == [(UInt64.max - 100)..<UInt64.max])
    }

    @Test func alignedAtTheTopOfTheRangeDoesNotTrap() {
        let planner = NBDRequestPlanner(exportSize: .max, blockSize: NBDBlockSize(minimum: 512, preferred: 512, maximum: 1 << 20))
        #expect(planner.aligned(offset: UInt64.max - 10, length: 10) == (UInt64.max - 511)..<UInt64.max)
    }
}
