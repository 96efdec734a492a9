import NIOCore
import Synchronization

/// A response body produced by an async task and drained by the HTTP server's thread, in
/// bounded memory: the producer waits while `highWater` bytes are queued; the server's reader
/// suspends its connection while nothing is queued and is woken when bytes arrive.
public final class ResponseBodyStream: Sendable {
    /// What the server's reader gets.
    public enum ReadResult: Equatable, Sendable {
        case bytes(Int)
        /// Nothing queued yet: the reader's `suspend` was called; `wake` will follow.
        case pending
        case end
        case failed
    }

    private struct State {
        var queue: [ByteBuffer] = []
        var queued = 0
        var finished = false
        var failed = false
        var cancelled = false
        var readerSuspended = false
        var producerWaiting: CheckedContinuation<Void, any Error>?
        var wake: (@Sendable () -> Void)?
    }

    private let state = Mutex(State())
    private let highWater: Int
    private let produce: @Sendable (ResponseBodyStream) async throws -> Void

    /// `produce` writes the body with `write(_:)`; it runs once the response is on its way.
    public init(highWater: Int = 4 << 20, produce: @escaping @Sendable (ResponseBodyStream) async throws -> Void) {
        self.highWater = highWater
        self.produce = produce
    }

    /// Runs the producer (the server starts this when it sends the headers).
    public func run(wake: @escaping @Sendable () -> Void) async {
        state.withLock { $0.wake = wake }
        do {
            try await produce(self)
            finish(failed: false)
        } catch {
            finish(failed: true)
        }
    }

    /// Queues bytes; waits while the queue is over the high-water mark. Throws once the client is gone.
    public func write(_ buffer: ByteBuffer) async throws {
        guard buffer.readableBytes > 0 else { return }
        let (mustWait, wake) = try state.withLock { state throws -> (Bool, (@Sendable () -> Void)?) in
            if state.cancelled { throw CancellationError() }
            state.queue.append(buffer)
            state.queued += buffer.readableBytes
            var wake: (@Sendable () -> Void)?
            if state.readerSuspended {
                state.readerSuspended = false
                wake = state.wake
            }
            return (state.queued >= highWater, wake)
        }
        wake?()
        guard mustWait else { return }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let resumeNow = state.withLock { state -> Result<Void, any Error>? in
                if state.cancelled { return .failure(CancellationError()) }
                if state.queued < highWater { return .success(()) }
                state.producerWaiting = continuation
                return nil
            }
            if let resumeNow { continuation.resume(with: resumeNow) }
        }
    }

    private func finish(failed: Bool) {
        let wake = state.withLock { state -> (@Sendable () -> Void)? in
            state.finished = true
            state.failed = state.failed || failed
            guard state.readerSuspended else { return nil }
            state.readerSuspended = false
            return state.wake
        }
        wake?()
    }

    /// Called by the server's thread: copies queued bytes into `destination`. When nothing is
    /// queued, calls `suspend` (under the lock, so a wake cannot come before it) and answers `.pending`.
    public func read(into destination: UnsafeMutableRawBufferPointer, suspend: () -> Void) -> ReadResult {
        let (result, producer) = state.withLock { state -> (ReadResult, CheckedContinuation<Void, any Error>?) in
            if state.failed { return (.failed, nil) }
            guard !state.queue.isEmpty else {
                if state.finished { return (.end, nil) }
                state.readerSuspended = true
                suspend()
                return (.pending, nil)
            }
            var copied = 0
            while copied < destination.count, !state.queue.isEmpty {
                let count = min(destination.count - copied, state.queue[0].readableBytes)
                state.queue[0].withUnsafeReadableBytes { source in
                    UnsafeMutableRawBufferPointer(rebasing: destination[copied..<(copied + count)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<count]))
                }
                state.queue[0].moveReaderIndex(forwardBy: count)
                if state.queue[0].readableBytes == 0 { state.queue.removeFirst() }
                copied += count
            }
            state.queued -= copied
            var producer: CheckedContinuation<Void, any Error>?
            if state.queued < highWater / 2 {
                producer = state.producerWaiting
                state.producerWaiting = nil
            }
            return (.bytes(copied), producer)
        }
        producer?.resume()
        return result
    }

    /// The client went away (or the response was dropped): the producer stops at its next write.
    public func cancel() {
        let producer = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            state.cancelled = true
            state.queue.removeAll()
            state.queued = 0
            defer { state.producerWaiting = nil }
            return state.producerWaiting
        }
        producer?.resume(throwing: CancellationError())
    }
}
