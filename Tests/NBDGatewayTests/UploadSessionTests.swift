@testable import NBDGateway
import NBDClient
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
            offset: offset, declaredLength: declared, exportSize: size,
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
    static func refusal(offset: UInt64, declared: UInt64?, size: UInt64 = 1 << 20, count: Int) async -> (UploadFailure?, Int) {
        let recorder = Recorder()
        let session = Self.session(offset: offset, declared: declared, size: size, recorder: recorder)
        Self.offer(session, [UInt8](repeating: 1, count: count), pieces: count)
        let result = await session.finish()
        let written = recorder.sorted.flatMap(\.bytes).count
        guard case .failure(let error) = result else { return (nil, written) }
        return (error, written)
    }

    @Test("more than the declared length: longerThanDeclared (413), and nothing past the declared bytes is written")
    func longerThanDeclared() async {
        let (failure, written) = await Self.refusal(offset: 0, declared: 100, count: 150)
        #expect(failure == .longerThanDeclared(declared: 100))
        #expect(written == 0)
        let answer = failure.map { GatewayError($0, export: "disk", exportSize: 1 << 20) }
        #expect(answer?.status == 413 && answer?.code == "payload_too_large")
    }

    @Test("short of the declared length: shorterThanDeclared (400) once the body ends")
    func shorterThanDeclared() async {
        let (failure, _) = await Self.refusal(offset: 0, declared: 100, count: 60)
        #expect(failure == .shorterThanDeclared(received: 60, declared: 100))
        let answer = failure.map { GatewayError($0, export: "disk", exportSize: 1 << 20) }
        #expect(answer?.status == 400 && answer?.code == "invalid_range")
        #expect(answer?.message == "the body has 60 of the 100 bytes declared")
    }

    @Test("past the end of the export: passesEnd (416), nothing written")
    func pastTheEnd() async {
        let (failure, written) = await Self.refusal(offset: 1000, declared: nil, size: 1024, count: 100)
        #expect(failure == .passesEnd(exportSize: 1024))
        #expect(written == 0)
        let answer = failure.map { GatewayError($0, export: "disk", exportSize: 1024) }
        #expect(answer?.status == 416 && answer?.headers.first { $0.name == "Content-Range" }?.value == "bytes */1024")
    }

    @Test("a failed write: its NBD error, answered through the table as a write (ENOSPC: 507)")
    func failedWrite() async {
        let session = UploadSession(
            offset: 0, declaredLength: 10, exportSize: 1 << 20, chunkSize: 4096, highWater: 8192,
            spawn: { job in Task { await job() } },
            write: { _, _ in throw NBDError(.serverError, errno: .ENOSPC) }, complete: {}
        )
        session.setWake {}
        [UInt8](repeating: 1, count: 10).withUnsafeBytes { session.offer($0, suspend: {}) }
        guard case .failure(let failure) = await session.finish() else {
            Issue.record("the upload should fail")
            return
        }
        #expect(failure == .nbd(NBDError(.serverError, errno: .ENOSPC)))
        let answer = GatewayError(failure, export: "disk", exportSize: 1 << 20)
        #expect(answer.status == 507 && answer.nbdError == "ENOSPC")
    }
}
