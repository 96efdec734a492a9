@testable import NBDGateway
import Testing

/// Exact lines of the failure log, in virtual time.
@Suite("FailureLogStateMachine")
struct FailureLogStateMachineTests {
    typealias Machine = FailureLogStateMachine
    static let t0 = ContinuousClock.now
    static let down = Machine.Cause(status: 502, export: "disk")
    static let slow = Machine.Cause(status: 504, export: "disk")

    @Test("the first failure of a cause is logged; the rest of its window only counted, then reported once")
    func oneCause() {
        var machine = Machine(window: .seconds(5))
        #expect(machine.failed(Self.down, now: Self.t0) == [.first(Self.down)])
        for millisecond in 1...1000 {
            #expect(machine.failed(Self.down, now: Self.t0 + .milliseconds(millisecond)).isEmpty)
        }
        #expect(machine.tick(now: Self.t0 + .milliseconds(4999)).isEmpty)
        #expect(machine.tick(now: Self.t0 + .seconds(5)) == [.repeated(Self.down, count: 1000, over: .seconds(5))])
        #expect(machine.tick(now: Self.t0 + .seconds(6)).isEmpty)  // closed: nothing more to say
        // The next failure opens a new window and is logged in full.
        #expect(machine.failed(Self.down, now: Self.t0 + .seconds(7)) == [.first(Self.down)])
    }

    @Test("a window over before any tick: its count comes with the next failure, which is logged too")
    func countBeforeTick() {
        var machine = Machine(window: .seconds(5))
        _ = machine.failed(Self.down, now: Self.t0)
        _ = machine.failed(Self.down, now: Self.t0 + .seconds(1))
        #expect(machine.failed(Self.down, now: Self.t0 + .seconds(6)) == [.repeated(Self.down, count: 1, over: .seconds(6)), .first(Self.down)])
    }

    @Test("causes are apart: each status and export has its own window; a lone failure reports no count")
    func separateCauses() {
        var machine = Machine(window: .seconds(5))
        #expect(machine.failed(Self.down, now: Self.t0) == [.first(Self.down)])
        #expect(machine.failed(Self.slow, now: Self.t0) == [.first(Self.slow)])
        let other = Machine.Cause(status: 502, export: "other")
        #expect(machine.failed(other, now: Self.t0) == [.first(other)])
        _ = machine.failed(Self.slow, now: Self.t0 + .seconds(1))
        #expect(machine.tick(now: Self.t0 + .seconds(5)) == [.repeated(Self.slow, count: 1, over: .seconds(5))])
    }

    @Test("drain reports every open count at once")
    func drain() {
        var machine = Machine(window: .seconds(5))
        _ = machine.failed(Self.down, now: Self.t0)
        _ = machine.failed(Self.down, now: Self.t0 + .seconds(1))
        #expect(machine.drain(now: Self.t0 + .seconds(2)) == [.repeated(Self.down, count: 1, over: .seconds(2))])
        #expect(machine.drain(now: Self.t0 + .seconds(3)).isEmpty)
    }
}
