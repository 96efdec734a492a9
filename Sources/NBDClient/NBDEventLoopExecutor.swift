import NIOCore

/// A task executor that runs jobs on a connection's event loop.
///
/// Tasks that issue many small requests can prefer it (`withTaskExecutorPreference`): their
/// requests are written and their replies resumed on the same thread, with no hop to and from
/// the cooperative pool per request. Long computations must not run there.
public final class NBDEventLoopExecutor: TaskExecutor, Sendable {
    public let eventLoop: any EventLoop

    public init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}

extension NBDClient {
    /// An executor on this connection's event loop (see `NBDEventLoopExecutor`).
    public var executor: NBDEventLoopExecutor { NBDEventLoopExecutor(eventLoop: channel.eventLoop) }
}
