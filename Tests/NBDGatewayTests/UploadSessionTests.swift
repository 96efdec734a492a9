@testable import NBDGateway
import NIOCore
import Synchronization
import Testing

@Suite("UploadSession: PUT bodies cut into aligned writes (no sockets)")
struct UploadSessionTests {
    /// The writes a session issued, in the order they finished.
    final class Recorder: Sendable {
        let writes = Mutex<[(offset: UInt64, bytes: [UInt8])]>([])
        var sorted: [(offset: UInt64, bytes: [UInt8])] { writes.withLock { $0.sorted { $0.offset < $1.offset } } }
    }

    static func session(
        offset: UInt64, declared: UInt64?, size: UInt64 = 1 << 20, chunk: Int = 4096, recorder: Recorder
    ) -> UploadSession {
        UploadSession(
            offset: offset, declaredLength: declared, exportName: "disk", exportSize: size,
            chunkSize: chunk, highWater: 4 * chunk,
            spawn: { job in Task { await job() } },
            write: { at, buffer in recorder.writes.withLock { $0.append((at, Array(buffer: buffer))) } },
            complete: {}
        )
    }

    static func offer(_ session: UploadSession, _ body: [UInt8], pieces: Int) {
        var start = 0
        while start < body.count {
            let end = min(body.count, start + pieces)
            body[start..<end].withUnsafeBytes { session.offer($0, suspend: {}) }
            start = end
        }
    }

    @Test("writes end on absolute multiples of the chunk size and carry the body exactly", arguments: [1, 1000, 4096, 5000])
    func alignedChunks(pieceSize: Int) async throws {
        let recorder = Recorder()
        let body = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let session = Self.session(offset: 1000, declared: UInt64(body.count), recorder: recorder)
        Self.offer(session, body, pieces: pieceSize)
        let result = await session.finish()
        #expect(try result.get() == UInt64(body.count))
        let writes = recorder.sorted
        #expect(writes.map(\.offset) == [1000, 4096, 8192, 12288, 16384, 20480])
        #expect(writes.map(\.bytes.count) == [3096, 4096, 4096, 4096, 4096, 520])
        #expect(writes.flatMap(\.bytes) == body)
    }

    @Test("a body of unknown length is written whole, the last chunk short")
    func unknownLength() async throws {
        let recorder = Recorder()
        let body = [UInt8](repeating: 0xA5, count: 10_000)
        let session = Self.session(offset: 0, declared: nil, recorder: recorder)
        Self.offer(session, body, pieces: 3000)
        #expect(try await session.finish().get() == 10_000)
        #expect(recorder.sorted.map(\.bytes.count) == [4096, 4096, 1808])
    }

    /// Offers `count` bytes at `offset` (declaring `declared`) and returns the error the
    /// upload ends with, and the bytes it wrote.
    static func refusal(offset: UInt64, declared: UInt64?, size: UInt64 = 1 << 20, count: Int) async -> (GatewayError?, Int) {
        let recorder = Recorder()
        let session = Self.session(offset: offset, declared: declared, size: size, recorder: recorder)
        Self.offer(session, [UInt8](repeating: 1, count: count), pieces: count)
        let result = await session.finish()
        let written = recorder.sorted.flatMap(\.bytes).count
        guard case .failure(let error) = result else { return (nil, written) }
        return (error, written)
    }

    @Test("more than the declared length: 413, and nothing past the declared bytes is written")
    func longerThanDeclared() async {
        let (error, written) = await Self.refusal(offset: 0, declared: 100, count: 150)
        #expect(error?.status == 413)
        #expect(error?.code == "payload_too_large")
        #expect(written == 0)
    }

    @Test("short of the declared length: 400 once the body ends")
    func shorterThanDeclared() async {
        let (error, _) = await Self.refusal(offset: 0, declared: 100, count: 60)
        #expect(error?.status == 400)
        #expect(error?.code == "invalid_range")
        #expect(error?.message == "the body has 60 of the 100 bytes declared")
    }

    @Test("past the end of the export: 416, nothing written")
    func pastTheEnd() async {
        let (error, written) = await Self.refusal(offset: 1000, declared: nil, size: 1024, count: 100)
        #expect(error?.status == 416)
        #expect(error?.code == "range_not_satisfiable")
        #expect(written == 0)
    }
}
