@testable import NBDGateway
import Testing

/// Which block size a streamed response gets: large ones for the first few streams at once.
@Suite("ResponseBlocks")
struct ResponseBlocksTests {
    @Test("the first largeCount streams get large blocks, the next ones standard ones")
    func largeThenStandard() {
        let blocks = ResponseBlocks(standard: 256 << 10, large: 1 << 20, largeCount: 2)
        #expect(blocks.take() == 1 << 20)
        #expect(blocks.take() == 1 << 20)
        #expect(blocks.largeHeld == 2)
        #expect(blocks.take() == 256 << 10)
        #expect(blocks.take() == 256 << 10)
        #expect(blocks.largeHeld == 2)
    }

    @Test("a large block given back goes to the next stream; a standard one frees nothing")
    func givenBack() {
        let blocks = ResponseBlocks(standard: 256 << 10, large: 1 << 20, largeCount: 1)
        #expect(blocks.take() == 1 << 20)
        #expect(blocks.take() == 256 << 10)
        blocks.give(256 << 10)
        #expect(blocks.largeHeld == 1)
        #expect(blocks.take() == 256 << 10)
        blocks.give(1 << 20)
        #expect(blocks.largeHeld == 0)
        #expect(blocks.take() == 1 << 20)
    }

    @Test("with none to share, or sizes alike, every stream gets the standard block and nothing is counted")
    func noneLarge() {
        let none = ResponseBlocks(standard: 256 << 10, large: 1 << 20, largeCount: 0)
        #expect(none.take() == 256 << 10)
        #expect(none.largeHeld == 0)
        let alike = ResponseBlocks(standard: 256 << 10, large: 256 << 10, largeCount: 1)
        #expect(alike.take() == 256 << 10)
        alike.give(256 << 10)
        #expect(alike.largeHeld == 0)
        #expect(alike.take() == 256 << 10)
    }
}
