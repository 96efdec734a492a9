#if canImport(CMalloc)
import CMalloc
#endif

/// A copy allocates and frees receive buffers all the time (received bodies are kept until
/// their piece is written), never more than its requests in flight hold. glibc would hand the
/// freed memory back to the system and fault fresh zeroed pages in for the next buffers: an
/// 8 GiB sparse disk (836 MiB of data) copied from a gateway took 16,000-66,000 page faults
/// and 0.83-0.88 s of system time; keeping the freed memory for reuse, 3,000-3,600 and
/// 0.67-0.78 s. From nbdkit over one connection: 21,000-27,000 faults and 0.61-0.72 s, against
/// 13,000-14,500 and 0.55-0.72 s.
enum ReusedMemory {
    /// Keeps freed memory in the process (up to 256 MiB) and serves buffers up to 32 MiB from
    /// the heap rather than from fresh mappings.
    static func keepFreedBuffers() {
        #if canImport(CMalloc)
        _ = mallopt(M_MMAP_THRESHOLD, 32 << 20)
        _ = mallopt(M_TRIM_THRESHOLD, 256 << 20)
        #endif
    }
}
