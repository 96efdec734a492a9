import Synchronization

/// Receive buffers shared by every connection that names this budget (a process-wide cap on
/// what busy connections keep). A connection always has one buffer to read into; while
/// requests are in flight it borrows one more for each buffer's worth of data they ask for
/// beyond the first, up to `receiveBufferPoolSize - 1`, and a tenth of a second after its last
/// reply it gives them back and its pool drops them. Without a budget every connection keeps
/// its whole pool for as long as it lives.
public final class NBDReceiveBufferBudget: Sendable {
    /// The budget, in bytes.
    public let bytes: Int
    private let borrowedBytes = Atomic<Int>(0)

    public init(bytes: Int) {
        self.bytes = max(0, bytes)
    }

    /// Bytes lent out now.
    public var inUse: Int { borrowedBytes.load(ordering: .relaxed) }

    /// Lends up to `count` buffers of `size` bytes, as many as the budget has left; returns how many.
    public func borrow(upTo count: Int, of size: Int) -> Int {
        guard count > 0, size > 0 else { return 0 }
        var current = borrowedBytes.load(ordering: .relaxed)
        while true {
            let granted = min(count, (bytes - current) / size)
            guard granted > 0 else { return 0 }
            let (exchanged, original) = borrowedBytes.compareExchange(
                expected: current, desired: current + granted * size, ordering: .acquiringAndReleasing
            )
            if exchanged { return granted }
            current = original
        }
    }

    /// Takes back `count` buffers of `size` bytes lent by `borrow`.
    public func giveBack(_ count: Int, of size: Int) {
        guard count > 0 else { return }
        borrowedBytes.subtract(count * size, ordering: .acquiringAndReleasing)
    }
}
