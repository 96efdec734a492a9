import NBDProtocol
import Testing

@Suite("NBDExtent")
struct ExtentTests {
    @Test func descriptorsAreLaidEndToEndAndCutAtTheEnd() {
        let descriptors = [
            NBDBlockDescriptor(length: 4096, flags: 0),
            NBDBlockDescriptor(length: 0, flags: 3),  // empty: skipped
            NBDBlockDescriptor(length: 8192, flags: 1),  // cut at 10000
            NBDBlockDescriptor(length: 100, flags: 2),  // past the end: dropped
        ]
        #expect(NBDExtent.extents(from: descriptors, at: 1000, upTo: 10000) == [
            NBDExtent(offset: 1000, length: 4096, flags: 0),
            NBDExtent(offset: 5096, length: 4904, flags: 1),
        ])
        #expect(NBDExtent.extents(from: [], at: 0, upTo: 100) == [])
        #expect(NBDExtent.extents(from: [NBDBlockDescriptor(length: 0, flags: 0)], at: 0, upTo: 100) == [])
    }

    @Test func neighboursWithTheSameFlagsAreMerged() {
        let extents = [
            NBDExtent(offset: 0, length: 4096, flags: 0),
            NBDExtent(offset: 4096, length: 4096, flags: 0),
            NBDExtent(offset: 8192, length: 100, flags: 3),
            NBDExtent(offset: 8292, length: 10, flags: 3),
            NBDExtent(offset: 9000, length: 10, flags: 3),  // same flags, but not touching
            NBDExtent(offset: 9010, length: 10, flags: 1),
        ]
        #expect(NBDExtent.merged(extents) == [
            NBDExtent(offset: 0, length: 8192, flags: 0),
            NBDExtent(offset: 8192, length: 110, flags: 3),
            NBDExtent(offset: 9000, length: 10, flags: 3),
            NBDExtent(offset: 9010, length: 10, flags: 1),
        ])
        #expect(NBDExtent.merged([]) == [])
    }

    @Test func clippedToARange() {
        let extents = [
            NBDExtent(offset: 0, length: 8192, flags: 0),
            NBDExtent(offset: 8192, length: 110, flags: 3),
            NBDExtent(offset: 9000, length: 10, flags: 1),
        ]
        #expect(NBDExtent.clipped(extents, to: 100..<8200) == [
            NBDExtent(offset: 100, length: 8092, flags: 0),
            NBDExtent(offset: 8192, length: 8, flags: 3),
        ])
        #expect(NBDExtent.clipped(extents, to: 8302..<9000) == [])
        #expect(NBDExtent.clipped(extents, to: 0..<20000) == extents)
    }

    @Test func flags() {
        #expect(NBDExtent(offset: 0, length: 1, flags: 3).isHole)
        #expect(NBDExtent(offset: 0, length: 1, flags: 3).isZero)
        #expect(!NBDExtent(offset: 0, length: 1, flags: 2).isHole)
        #expect(!NBDExtent(offset: 0, length: 1, flags: 1).isZero)
    }
}
