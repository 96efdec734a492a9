import NBDProtocol
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
}
