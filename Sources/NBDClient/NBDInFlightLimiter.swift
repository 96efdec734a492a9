import DequeModule
import Synchronization

/// Bounds the requests and bytes one connection has in flight. Waiters are served in order.
///
/// A single request larger than the byte bound is admitted when nothing else is in flight,
/// so no request can wait forever.
final class NBDInFlightLimiter: Sendable {
    private struct State {
        var requests = 0
        var bytes = 0
        var waiters: Deque<(bytes: Int, continuation: CheckedContinuation<Void, Never>)> = []
    }

    let maximumRequests: Int
    let maximumBytes: Int
    private let state = Mutex(State())

    init(maximumRequests: Int, maximumBytes: Int) {
        self.maximumRequests = max(1, maximumRequests)
        self.maximumBytes = max(1, maximumBytes)
    }

    private func fits(_ bytes: Int, _ state: State) -> Bool {
        state.requests == 0 || (state.requests < maximumRequests && state.bytes + bytes <= maximumBytes)
    }

    /// Waits until a request of `bytes` payload may be sent.
    func acquire(bytes: Int) async {
        let admitted = state.withLock { state -> Bool in
            guard state.waiters.isEmpty, fits(bytes, state) else { return false }
            state.requests += 1
            state.bytes += bytes
            return true
        }
        if admitted { return }
        await withCheckedContinuation { continuation in
            let resumeNow = state.withLock { state -> Bool in
                if state.waiters.isEmpty, fits(bytes, state) {
                    state.requests += 1
                    state.bytes += bytes
                    return true
                }
                state.waiters.append((bytes, continuation))
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    /// Returns what `acquire(bytes:)` took, admitting waiters that now fit.
    func release(bytes: Int) {
        let ready = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.requests -= 1
            state.bytes -= bytes
            var ready: [CheckedContinuation<Void, Never>] = []
            while let first = state.waiters.first, fits(first.bytes, state) {
                state.waiters.removeFirst()
                state.requests += 1
                state.bytes += first.bytes
                ready.append(first.continuation)
            }
            return ready
        }
        for continuation in ready { continuation.resume() }
    }
}
