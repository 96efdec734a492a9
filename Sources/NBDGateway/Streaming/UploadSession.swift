import NBDClient
import NIOCore
import Synchronization

/// A PUT body streaming into NBD writes as it arrives, in bounded memory.
///
/// The server's thread offers the body in whatever pieces it receives; they are gathered
/// into chunks cut at absolute multiples of `chunkSize` (so no two writes share a block and
/// read-modify-write at the edges stays safe), and each chunk becomes a write as soon as it is
/// full. While `highWater` bytes are waiting or in flight, the server's connection is suspended.
public final class UploadSession: Sendable {
    private struct State {
        var staging: ByteBuffer?
        /// Bytes the staging chunk takes (up to the next multiple of `chunkSize`).
        var stagingRoom = 0
        var stagingOffset: UInt64
        /// Chunk buffers whose writes are done, kept for the next chunks (at most `highWater` worth).
        var spare: [ByteBuffer] = []
        var received: UInt64 = 0
        var pendingBytes = 0
        var inFlight = 0
        var error: UploadFailure?
        var readerSuspended = false
        var wake: (@Sendable () -> Void)?
        var drained: CheckedContinuation<Void, Never>?
        /// The body's digest so far, when the request sent `Content-Digest`.
        var digest: RunningDigest?
    }

    public let offset: UInt64
    /// Exact body length the request declared, if any.
    public let declaredLength: UInt64?
    /// Bytes the export has room for from `offset`.
    public let limit: UInt64
    /// Most bytes a body may have (the gateway's `--max-body-size`), if limited.
    public let maximumLength: UInt64?
    private let exportSize: UInt64
    private let chunkSize: Int
    private let highWater: Int
    private let write: @Sendable (UInt64, ByteBuffer) async throws -> Void
    private let complete: @Sendable () async throws -> Void
    private let spawn: @Sendable (@escaping @Sendable () async -> Void) -> Void
    private let state: Mutex<State>
    /// The request's `Content-Digest`, checked once the body is in.
    public let expectedDigest: ContentDigest?

    public init(
        offset: UInt64, declaredLength: UInt64?, exportSize: UInt64, maximumLength: UInt64? = nil,
        chunkSize: Int = 1 << 20, highWater: Int = 8 << 20, expectedDigest: ContentDigest? = nil,
        spawn: @escaping @Sendable (@escaping @Sendable () async -> Void) -> Void,
        write: @escaping @Sendable (UInt64, ByteBuffer) async throws -> Void,
        complete: @escaping @Sendable () async throws -> Void
    ) {
        self.offset = offset
        self.declaredLength = declaredLength
        self.limit = exportSize - min(offset, exportSize)
        self.maximumLength = maximumLength
        self.exportSize = exportSize
        self.chunkSize = chunkSize
        self.highWater = highWater
        self.spawn = spawn
        self.write = write
        self.complete = complete
        self.expectedDigest = expectedDigest
        var initial = State(stagingOffset: offset)
        initial.digest = expectedDigest.map { RunningDigest($0.algorithm) }
        self.state = Mutex(initial)
    }

    /// Sets how the server's connection is resumed after `offer` suspended it.
    public func setWake(_ wake: @escaping @Sendable () -> Void) {
        state.withLock { $0.wake = wake }
    }

    /// Takes body bytes (server thread). Calls `suspend` under the lock when too much is in
    /// flight; the session wakes the connection when writes catch up.
    public func offer(_ bytes: UnsafeRawBufferPointer, suspend: () -> Void) {
        let ready = state.withLock { state -> [(UInt64, ByteBuffer)] in
            guard state.error == nil else { return [] }  // Failed: the rest of the body is discarded.
            let newTotal = state.received + UInt64(bytes.count)
            if let declaredLength, newTotal > declaredLength {
                state.error = .longerThanDeclared(declared: declaredLength)
                return []
            }
            if let maximumLength, newTotal > maximumLength {
                state.error = .overMaximum(maximumLength)
                return []
            }
            if newTotal > limit {
                state.error = .passesEnd(exportSize: exportSize)
                return []
            }
            state.received = newTotal
            state.digest?.update(bytes)
            var chunks: [(UInt64, ByteBuffer)] = []
            var consumed = 0
            while consumed < bytes.count {
                if state.staging == nil {
                    let boundary = (state.stagingOffset / UInt64(chunkSize) + 1) * UInt64(chunkSize)
                    state.stagingRoom = Int(boundary - state.stagingOffset)
                    if var reused = state.spare.popLast() {
                        reused.clear()  // Keeps the memory when the finished write let go of it.
                        state.staging = reused
                    } else {
                        let expected = declaredLength.map { Int(clamping: $0 - state.received + UInt64(bytes.count - consumed)) } ?? Int.max
                        state.staging = ByteBufferAllocator().buffer(capacity: min(state.stagingRoom, expected))
                    }
                }
                guard var staging = state.staging else { break }
                state.staging = nil
                let count = min(state.stagingRoom - staging.readableBytes, bytes.count - consumed)
                staging.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[consumed..<(consumed + count)]))
                consumed += count
                if staging.readableBytes == state.stagingRoom {
                    chunks.append((state.stagingOffset, staging))
                    state.stagingOffset += UInt64(staging.readableBytes)
                } else {
                    state.staging = staging
                }
            }
            for chunk in chunks { state.pendingBytes += chunk.1.readableBytes }
            state.inFlight += chunks.count
            if state.pendingBytes >= highWater {
                state.readerSuspended = true
                suspend()
            }
            return chunks
        }
        for (chunkOffset, chunk) in ready { start(chunkOffset, chunk) }
    }

    private func start(_ chunkOffset: UInt64, _ chunk: ByteBuffer) {
        spawn { [self] in
            var failure: UploadFailure?
            do {
                try await write(chunkOffset, chunk)
            } catch {
                failure = UploadFailure(error)
            }
            let (wake, drained) = state.withLock { state -> ((@Sendable () -> Void)?, CheckedContinuation<Void, Never>?) in
                state.pendingBytes -= chunk.readableBytes
                state.inFlight -= 1
                if state.spare.count * chunkSize < highWater {
                    state.spare.append(chunk)  // Written: a later chunk reuses its memory.
                }
                if let failure, state.error == nil { state.error = failure }
                var wake: (@Sendable () -> Void)?
                if state.readerSuspended && (state.pendingBytes < highWater / 2 || state.error != nil) {
                    state.readerSuspended = false
                    wake = state.wake
                }
                var drained: CheckedContinuation<Void, Never>?
                if state.inFlight == 0 {
                    drained = state.drained
                    state.drained = nil
                }
                return (wake, drained)
            }
            wake?()
            drained?.resume()
        }
    }

    /// The body ended: writes the last partial chunk, waits for every write, checks the
    /// length, makes the data durable/visible as asked, and answers.
    public func finish() async -> Result<UInt64, UploadFailure> {
        let last = state.withLock { state -> (UInt64, ByteBuffer)? in
            guard state.error == nil, let staging = state.staging, staging.readableBytes > 0 else { return nil }
            state.staging = nil
            state.pendingBytes += staging.readableBytes
            state.inFlight += 1
            return (state.stagingOffset, staging)
        }
        if let last { start(last.0, last.1) }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = state.withLock { state -> Bool in
                if state.inFlight == 0 { return true }
                state.drained = continuation
                return false
            }
            if now { continuation.resume() }
        }
        let (received, error, digest) = state.withLock { ($0.received, $0.error, $0.digest) }
        if let error { return .failure(error) }
        if let declaredLength, received < declaredLength {
            return .failure(.shorterThanDeclared(received: received, declared: declaredLength))
        }
        do {
            try await complete()
        } catch {
            return .failure(UploadFailure(error))
        }
        // Checked last: the bytes are written either way, and the answer says so.
        if let expectedDigest, let actual = digest?.finalize(), actual != expectedDigest {
            return .failure(.digestMismatch(expected: expectedDigest, actual: actual))
        }
        return .success(received)
    }
}

/// Why an upload failed: what the body did against its headers or the export, or the NBD
/// error a write met. The route turns it into the HTTP answer.
public enum UploadFailure: Error, Sendable, Equatable {
    /// The body went on past the length its headers declared.
    case longerThanDeclared(declared: UInt64)
    /// The body ended before the length its headers declared.
    case shorterThanDeclared(received: UInt64, declared: UInt64)
    /// The body went on past the end of the export.
    case passesEnd(exportSize: UInt64)
    /// The body went on past the gateway's largest body.
    case overMaximum(UInt64)
    /// A write or the final flush failed.
    case nbd(NBDError)
    /// Every byte was written, but their digest is not the request's `Content-Digest`.
    case digestMismatch(expected: ContentDigest, actual: ContentDigest)

    init(_ error: any Error) {
        self = .nbd(error as? NBDError ?? NBDError(.disconnected, NBDClient.plainDescription(of: error)))
    }

    /// NBD errors are equal when their code and the server's error are (messages may differ).
    public static func == (lhs: UploadFailure, rhs: UploadFailure) -> Bool {
        switch (lhs, rhs) {
        case (.longerThanDeclared(let a), .longerThanDeclared(let b)): a == b
        case (.shorterThanDeclared(let a, let b), .shorterThanDeclared(let c, let d)): a == c && b == d
        case (.passesEnd(let a), .passesEnd(let b)): a == b
        case (.overMaximum(let a), .overMaximum(let b)): a == b
        case (.digestMismatch(let a, let b), .digestMismatch(let c, let d)): a == c && b == d
        case (.nbd(let a), .nbd(let b)): a.code == b.code && a.errno == b.errno && a.optionError == b.optionError
        default: false
        }
    }
}
