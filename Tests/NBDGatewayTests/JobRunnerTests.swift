@testable import NBDGateway
import NBDClient
import NIOPosix
import Synchronization
import Testing

@Suite("JobRunner: request jobs on the NBD event loop, counted until done")
struct JobRunnerTests {
    @Test("jobs run on the event loop; waitUntilIdle returns only once every job has finished")
    func runsAndDrains() async {
        let eventLoop = MultiThreadedEventLoopGroup.singleton.next()
        let runner = JobRunner(executor: NBDEventLoopExecutor(eventLoop: eventLoop))
        await runner.waitUntilIdle()  // Nothing running: returns at once.

        let onLoop = Mutex<[Bool]>([])
        let finished = Atomic<Int>(0)
        var openers: [AsyncStream<Void>.Continuation] = []
        for _ in 0..<3 {
            let (gate, opener) = AsyncStream.makeStream(of: Void.self)
            openers.append(opener)
            runner.spawn {
                onLoop.withLock { $0.append(eventLoop.inEventLoop) }
                for await _ in gate { break }  // Each job waits for its gate to open.
                finished.add(1, ordering: .relaxed)
            }
        }
        #expect(runner.running == 3)
        for opener in openers { opener.yield() }
        await runner.waitUntilIdle()
        #expect(finished.load(ordering: .relaxed) == 3)
        #expect(runner.running == 0)
        #expect(onLoop.withLock { $0 } == [true, true, true])
    }
}
