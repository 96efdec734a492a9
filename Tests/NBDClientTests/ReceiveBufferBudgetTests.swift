import Foundation
import NBDClient
import NBDTestSupport
import NIOCore
import Testing

/// The shared receive-buffer budget lends whole buffers, never more than it has, and takes them back.
@Suite("NBDReceiveBufferBudget (pure)")
struct ReceiveBufferBudgetTests {
    @Test("lends whole buffers up to the budget, then nothing; what is given back is lent again")
    func lendsWithinTheBudget() {
        let budget = NBDReceiveBufferBudget(bytes: 1_000_000)
        #expect(budget.borrow(upTo: 3, of: 262_144) == 3)
        #expect(budget.inUse == 786_432)
        #expect(budget.borrow(upTo: 3, of: 262_144) == 0, "213,568 bytes left: not one whole buffer")
        #expect(budget.borrow(upTo: 5, of: 65_536) == 3)
        budget.giveBack(2, of: 262_144)
        #expect(budget.inUse == 786_432 - 524_288 + 196_608)
        #expect(budget.borrow(upTo: 15, of: 262_144) == 2)
        #expect(budget.borrow(upTo: 0, of: 262_144) == 0)
        #expect(NBDReceiveBufferBudget(bytes: 0).borrow(upTo: 1, of: 4096) == 0)
    }

    @Test("many borrowers at once never take more than the budget")
    func concurrentBorrowers() async {
        let budget = NBDReceiveBufferBudget(bytes: 64 << 20)
        let granted = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<64 { group.addTask { budget.borrow(upTo: 15, of: 256 << 10) } }
            return await group.reduce(0, +)
        }
        #expect(granted == 256)
        #expect(budget.inUse == 64 << 20)
    }
}

/// A connection borrows for the data its requests in flight ask for, no more than its pool
/// allows, and gives everything back soon after its last reply. nbdkit's pause filter holds
/// every reply until the test lets them go, so what is in flight is known without timing.
@Suite("NBDReceiveBufferBudget on a connection")
struct ReceiveBufferBorrowingTests {
    @Test("small reads borrow nothing; each 256 KiB asked for beyond the first borrows a buffer, up to the pool; all comes back after the replies")
    func borrowsForTheDataAskedFor() async throws {
        let budget = NBDReceiveBufferBudget(bytes: 64 << 20)
        var configuration = NBDClientConfiguration()
        configuration.receiveBufferPoolSize = 4
        configuration.receiveBufferBudget = budget
        let buffer = configuration.receiveBufferSize
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let control = directory.appendingPathComponent("pause.sock")
        try await withServer({ try await Servers.nbdkit(["--filter=pause", "pattern", "size=16M", "pause-control=\(control.path)"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: configuration)
            try await nbdkitPauseControl(control, "p")
            var reads: [Task<ByteBuffer, any Error>] = []
            do {
                // 16 reads of 4 KiB and two of 256 KiB: 576 KiB asked for, two buffers' worth, of
                // which the connection's own holds one.
                reads = (0..<16).map { index in Task { try await client.read(at: UInt64(index) << 12, length: 4096) } }
                reads += (0..<2).map { index in Task { try await client.read(at: UInt64(1 + index) << 20, length: buffer) } }
                try await waitUntil("one buffer borrowed (\(budget.inUse) bytes)") { budget.inUse == buffer }
                // Five more: seven buffers' worth, but the pool of four lends three at most.
                reads += (0..<5).map { index in Task { try await client.read(at: UInt64(3 + index) << 20, length: buffer) } }
                try await waitUntil("three buffers borrowed (\(budget.inUse) bytes)") { budget.inUse == 3 * buffer }
            } catch {
                try? await nbdkitPauseControl(control, "r")
                throw error
            }
            try await nbdkitPauseControl(control, "r")
            for read in reads { _ = try await read.value }
            #expect(Array(buffer: try await reads[16].value) == patternBytes(offset: 1 << 20, length: buffer))
            try await waitUntil("everything given back (\(budget.inUse) bytes)") { budget.inUse == 0 }
            await client.disconnect()
        }
    }
}
