import NBDClient
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
