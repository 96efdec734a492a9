import NBDProtocol
import NIOCore
import Testing
@testable import nbd

/// `nbd copy`'s plan on exact extents: zero runs shrink and data runs grow onto the
/// destination's block grid, so no two requests share a block.
@Suite("nbd copy's plan (pure)")
struct CopyPlanTests {
    static let zero = NBDAllocationFlags.hole | NBDAllocationFlags.zero

    @Test("a 4096-byte grid: partial blocks become data, data runs that meet join, the unaligned end stays")
    func alignedToTheDestination() {
        let extents = [
            NBDExtent(offset: 0, length: 100, flags: 0),
            NBDExtent(offset: 100, length: 4900, flags: Self.zero),  // Inside blocks 0 and 1 only.
            NBDExtent(offset: 5000, length: 20000, flags: 0),
            NBDExtent(offset: 25000, length: 20000, flags: NBDAllocationFlags.zero),
            NBDExtent(offset: 45000, length: 100, flags: 0),
            NBDExtent(offset: 45100, length: 5000, flags: Self.zero),
        ]
        let pieces = CopyPlan.pieces(size: 50100, extents: extents, chunkSize: 8192, zeroesAreFree: false, alignment: 4096)
        #expect(pieces == [
            CopyPiece(offset: 0, length: 8192, isZero: false),
            CopyPiece(offset: 8192, length: 8192, isZero: false),
            CopyPiece(offset: 16384, length: 8192, isZero: false),
            CopyPiece(offset: 24576, length: 4096, isZero: false),
            CopyPiece(offset: 28672, length: 12288, isZero: true),
            CopyPiece(offset: 40960, length: 8192, isZero: false),
            CopyPiece(offset: 49152, length: 948, isZero: true),
        ])
        for piece in pieces.dropLast() { #expect(piece.offset % 4096 == 0 && piece.length % 4096 == 0, "\(piece)") }
    }

    @Test("a fresh file needs no zero pieces; without a map everything is data")
    func freshFileAndNoMap() {
        let extents = [NBDExtent(offset: 0, length: 4096, flags: 0), NBDExtent(offset: 4096, length: 1 << 20, flags: Self.zero)]
        #expect(CopyPlan.pieces(size: 4096 + (1 << 20), extents: extents, chunkSize: 1 << 20, zeroesAreFree: true) == [CopyPiece(offset: 0, length: 4096, isZero: false)])
        #expect(CopyPlan.pieces(size: 10, extents: [], chunkSize: 4, zeroesAreFree: true) == [
            CopyPiece(offset: 0, length: 4, isZero: false), CopyPiece(offset: 4, length: 4, isZero: false), CopyPiece(offset: 8, length: 2, isZero: false),
        ])
    }

    @Test("restricted to a bitmap's dirty extents: each part widened to the grid inside its piece, neighbours joined, clean pieces gone")
    func restrictedToDirtyExtents() {
        let pieces = [
            CopyPiece(offset: 0, length: 65536, isZero: false),
            CopyPiece(offset: 65536, length: 65536, isZero: true),
            CopyPiece(offset: 131072, length: 65536, isZero: false),
        ]
        let dirty = [
            NBDExtent(offset: 1000, length: 100, flags: 1),  // Widened to 0..<4096.
            NBDExtent(offset: 4100, length: 100, flags: 1),  // 4096..<8192: joins the first.
            NBDExtent(offset: 60000, length: 10000, flags: 1),  // Across the data/zero boundary.
            NBDExtent(offset: 196000, length: 100, flags: 1),  // The end of the last piece.
        ]
        #expect(CopyPlan.restrict(pieces, to: dirty, alignment: 4096, size: 196608) == [
            CopyPiece(offset: 0, length: 8192, isZero: false),
            CopyPiece(offset: 57344, length: 8192, isZero: false),
            CopyPiece(offset: 65536, length: 8192, isZero: true),
            CopyPiece(offset: 192512, length: 4096, isZero: false),
        ])
        #expect(CopyPlan.restrict(pieces, to: [], alignment: 4096, size: 196608).isEmpty)
    }

    @Test("a stream chunk cut into zero and data runs, 64 KiB at a time; the unaligned tail is its own grain")
    func zeroRunsOfAChunk() {
        var buffer = ByteBuffer(repeating: 0, count: 300_000)
        buffer.setBytes([1], at: 70_000)  // Grain 1 (65536..<131072) is data.
        buffer.setBytes([2], at: 299_999)  // The tail grain (262144..<300000) is data.
        let runs = ByteSlices.runs(of: buffer, grain: 65536)
        #expect(runs.map(\.range) == [0..<65536, 65536..<131072, 131072..<262144, 262144..<300000])
        #expect(runs.map(\.isZero) == [true, false, true, false])
        #expect(ByteSlices.runs(of: ByteBuffer(), grain: 65536).isEmpty)
    }

    @Test("slices of the buffers a piece was read into: across buffer boundaries, nothing copied")
    func slicesOfBuffers() {
        let buffers = [ByteBuffer(bytes: [0, 1, 2, 3]), ByteBuffer(bytes: [4, 5]), ByteBuffer(bytes: [6, 7, 8])]
        let slices = ByteSlices.slices(of: buffers, startingAt: 100, at: 103, length: 4)
        #expect(slices.map { Array($0.readableBytesView) } == [[3], [4, 5], [6]])
        #expect(ByteSlices.slices(of: buffers, startingAt: 100, at: 100, length: 9).map(\.readableBytes) == [4, 2, 3])
    }
}
