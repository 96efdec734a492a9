import NIOCore
import NBDProtocol

extension NBDClient {
    /// Reads `length` bytes from `offset` in order, with up to `window` reads of `chunkSize`
    /// bytes in flight, handing each piece to `consume` as soon as everything before it has
    /// been handed over. Memory stays bounded by `window * chunkSize`; the pieces are the
    /// received slices themselves (no copy into one buffer per chunk). Chunks end on absolute
    /// multiples of `chunkSize`, so they stay aligned whatever the starting offset.
    ///
    /// A chunk whose reply is an EIO error is read again, up to `retry.attempts` times, on
    /// this connection. A lost or timed-out connection ends the stream: the caller goes on
    /// from the last byte consumed on a new connection (`nbd read` does, with `NBDReadRetry`).
    public func readStream(
        at offset: UInt64, length: UInt64, chunkSize: Int = 1 << 20, window: Int = 4, retry: NBDReadRetry = .none,
        consume: (ByteBuffer) async throws -> Void
    ) async throws {
        guard length > 0 else { return }
        let end = offset + length
        let chunk = UInt64(max(1, chunkSize))
        try await withThrowingTaskGroup(of: (Int, [ByteBuffer]).self) { group in
            var nextOffset = offset
            var nextIndex = 0
            var wanted = 0
            var ready: [Int: [ByteBuffer]] = [:]
            func launch() {
                let start = nextOffset
                let count = Int(min(chunk - start % chunk, end - start))
                let index = nextIndex
                group.addTask {
                    let slices = try await retry.run(progress: { 0 }, retryable: { $0.errno == .EIO }) {
                        try await self.readSlices(at: start, length: count)
                    }
                    return (index, slices)
                }
                nextOffset += UInt64(count)
                nextIndex += 1
            }
            while nextOffset < end && nextIndex < max(1, window) { launch() }
            while let (index, buffers) = try await group.next() {
                ready[index] = buffers
                while let buffers = ready.removeValue(forKey: wanted) {
                    for buffer in buffers { try await consume(buffer) }
                    wanted += 1
                    if nextOffset < end { launch() }
                }
            }
        }
    }
}
