import Synchronization

/// A count of things in progress (jobs, suspended connections, live requests) that a task can
/// wait to see reach zero: a continuation resumed at zero, not a polling loop. Waits are
/// cancellable, so a wait can race a deadline.
public final class ActivityCounter: Sendable {
    private struct State {
        var count = 0
        var nextWaiter = 0
        var waiters: [Int: CheckedContinuation<Void, Never>] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    /// Things in progress now.
    public var count: Int { state.withLock { $0.count } }

    public func increment() {
        state.withLock { $0.count += 1 }
    }

    public func decrement() {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.count -= 1
            guard state.count == 0 else { return [] }
            defer { state.waiters.removeAll() }
            return Array(state.waiters.values)
        }
        waiters.forEach { $0.resume() }
    }

    /// Returns once the count is zero (at once if it is), or when the task is cancelled.
    public func waitUntilZero() async {
        let id = state.withLock { state -> Int in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { state -> Bool in
                    if state.count == 0 || Task.isCancelled { return true }
                    state.waiters[id] = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
    }

    /// Waits until the count is zero or `timeout` has passed; true when it reached zero.
    public func waitUntilZero(timeout: Duration) async -> Bool {
        await withTaskGroup(of: Bool.self) { group in
            group.addTask {
                await self.waitUntilZero()
                return true
            }
            group.addTask {
                // A deadline, not synchronisation: only work that overruns it gets here.
                try? await Task.sleep(for: timeout)
                return false
            }
            let first = await group.next() ?? false
            group.cancelAll()
            return first || count == 0
        }
    }
}
