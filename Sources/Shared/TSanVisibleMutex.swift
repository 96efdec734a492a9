// One file, linked into each target that locks (see scripts/sanitize).
#if TSAN_VISIBLE_LOCKS
import NIOConcurrencyHelpers

/// Only in ThreadSanitizer builds (`scripts/sanitize thread` defines TSAN_VISIBLE_LOCKS).
/// Synchronization.Mutex hands a contended lock to its waiter through a priority-inheritance
/// futex, which ThreadSanitizer does not see: every access the lock protects is then reported
/// as a race (four threads appending to a `Mutex<[Int]>` are enough). This `Mutex`, on
/// pthread_mutex (which ThreadSanitizer intercepts), shadows it in the target, so what is
/// reported is real.
struct Mutex<Value>: @unchecked Sendable {
    private final class Storage {
        var value: Value
        let lock = NIOLock()
        init(_ value: Value) { self.value = value }
    }

    private let storage: Storage

    init(_ value: Value) {
        storage = Storage(value)
    }

    func withLock<Result, E: Error>(_ body: (inout Value) throws(E) -> Result) throws(E) -> Result {
        storage.lock.lock()
        defer { storage.lock.unlock() }
        return try body(&storage.value)
    }
}
#endif
