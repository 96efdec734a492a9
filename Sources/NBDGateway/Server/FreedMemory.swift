#if canImport(CMalloc)
import CMalloc
#endif

/// Hands memory the process freed back to the system when the gateway goes quiet. glibc keeps
/// freed memory in per-thread arenas, and receive buffers of 256 KiB sit above its mmap
/// threshold only until the first one is freed (the threshold then rises to their size): after
/// 16 MiB reads from 200 exports, 128 MiB stayed resident while idle, 85 MiB after a trim.
struct FreedMemory {
    private var borrowedBefore = 0
    private var freedSinceTrim = false

    /// Called four times a second with what busy connections borrow now and how many
    /// connections just closed: whether to trim now. Only once quiet (nothing borrowed: a busy
    /// gateway would fault the pages back in) and only when memory was let go since the last
    /// trim, which walks every arena.
    mutating func worthTrimming(borrowedNow: Int, connectionsClosed: Int) -> Bool {
        defer { borrowedBefore = borrowedNow }
        if connectionsClosed > 0 || borrowedNow < borrowedBefore { freedSinceTrim = true }
        guard freedSinceTrim, borrowedNow == 0 else { return false }
        freedSinceTrim = false
        return true
    }

    /// Returns free pages in every arena to the system.
    static func trim() {
        #if canImport(CMalloc)
        _ = malloc_trim(0)
        #endif
    }
}
