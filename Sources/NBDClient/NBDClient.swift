import Logging
import NBDProtocol
import NIOCore

/// A connection to one NBD export, in the transmission phase.
///
/// Safe to use from many tasks at once: requests are pipelined on the one connection (up to
/// the configured bounds on requests and bytes in flight) and replies may complete in any
/// order. Large requests are split at the export's maximum and sent together; unaligned ranges
/// are widened to the minimum block (read-modify-write for writes); anything the export cannot
/// take is refused with an `NBDError` before a byte is sent. Every error thrown is an `NBDError`.
public final class NBDClient: Sendable {
    /// What was negotiated: size, flags, block sizes, description, contexts.
    public let info: NBDExportInfo
    let channel: any Channel
    let limiter: NBDInFlightLimiter
    let submitter: NBDRequestSubmitter
    let planner: NBDRequestPlanner
    let logger: Logger

    init(info: NBDExportInfo, channel: any Channel, configuration: NBDClientConfiguration, logger: Logger) {
        self.info = info
        self.channel = channel
        self.limiter = NBDInFlightLimiter(
            maximumRequests: configuration.maximumRequestsInFlight,
            maximumBytes: configuration.maximumBytesInFlight
        )
        self.submitter = NBDRequestSubmitter(channel: channel)
        self.planner = NBDRequestPlanner(exportSize: info.size, blockSize: info.blockSize)
        self.logger = logger
    }

    /// Export size in bytes.
    public var size: UInt64 { info.size }

    /// Whether the connection is still open.
    public var isActive: Bool { channel.isActive }

    /// Largest length sent in one TRIM, WRITE_ZEROES, CACHE or BLOCK_STATUS request.
    static let nonPayloadLimit: UInt32 = 1 << 30

    // MARK: - Reads

    /// Reads `length` bytes at `offset`.
    public func read(at offset: UInt64, length: Int) async throws -> ByteBuffer {
        guard length > 0 else {
            try checkOffset(offset, length: length)
            return ByteBuffer()
        }
        try planner.checkBounds(offset: offset, length: UInt64(length))
        let range = planner.aligned(offset: offset, length: UInt64(length))
        let sink = NBDReadSink(baseOffset: range.lowerBound, length: range.count)
        try await read(range, into: sink)
        let buffer = sink.takeBuffer()
        return buffer.getSlice(at: buffer.readerIndex + Int(offset - range.lowerBound), length: length) ?? ByteBuffer()
    }

    /// Reads `length` bytes at `offset` as the slices they arrived in (in order, no copy into
    /// one buffer): for passing bytes on, as a streaming server does.
    public func readSlices(at offset: UInt64, length: Int) async throws -> [ByteBuffer] {
        guard length > 0 else {
            try checkOffset(offset, length: length)
            return []
        }
        try planner.checkBounds(offset: offset, length: UInt64(length))
        let range = planner.aligned(offset: offset, length: UInt64(length))
        let sink = NBDReadSink(baseOffset: range.lowerBound, slicesOfLength: range.count)
        try await read(range, into: sink)
        return sink.takeSlices(cutTo: offset..<(offset + UInt64(length)))
    }

    /// Reads into caller-owned memory, the regions filled one after the other from `offset`.
    /// The memory must stay valid until this returns (it does not return early on cancellation).
    public func read(at offset: UInt64, into regions: [UnsafeMutableRawBufferPointer]) async throws {
        let length = regions.reduce(0) { $0 + $1.count }
        guard length > 0 else { return try checkOffset(offset, length: 0) }
        try planner.checkBounds(offset: offset, length: UInt64(length))
        if planner.isAligned(offset: offset, length: UInt64(length)) {
            try await read(offset..<(offset + UInt64(length)), into: NBDReadSink(baseOffset: offset, regions: regions))
            return
        }
        // Unaligned: read the widened range, then copy the wanted part out.
        let buffer = try await read(at: offset, length: length)
        var position = 0
        for region in regions {
            buffer.withUnsafeReadableBytes { source in
                region.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[position..<(position + region.count)]))
            }
            position += region.count
        }
    }

    private func read(_ range: Range<UInt64>, into sink: NBDReadSink) async throws {
        var futures: [EventLoopFuture<NBDCommandResult>] = []
        for piece in planner.split(range) {
            futures.append(await submit(.read, offset: piece.lowerBound, length: UInt32(piece.count), sink: sink))
        }
        try await waitAll(futures)
    }

    // MARK: - Writes

    /// Writes `buffers`, one after the other, at `offset`. With `fua`, the data is durable when this returns.
    public func write(at offset: UInt64, _ buffers: [ByteBuffer], fua: Bool = false) async throws {
        try checkWritable()
        if fua { try require(info.canFUA, "FUA") }
        let chain = NBDBufferChain(buffers)
        guard chain.count > 0 else { return try checkOffset(offset, length: 0) }
        try planner.checkBounds(offset: offset, length: UInt64(chain.count))
        let range = planner.aligned(offset: offset, length: UInt64(chain.count))
        var payload = chain
        if range != offset..<(offset + UInt64(chain.count)) {
            payload = try await widen(chain, at: offset, to: range)
        }
        let flags: NBDCommandFlags = fua ? [.fua] : []
        var futures: [EventLoopFuture<NBDCommandResult>] = []
        for piece in planner.split(range) {
            let start = Int(piece.lowerBound - range.lowerBound)
            futures.append(await submit(
                .write, flags: flags, offset: piece.lowerBound, length: UInt32(piece.count),
                payload: payload.slice(from: start, length: piece.count)
            ))
        }
        try await waitAll(futures)
    }

    /// Writes one buffer at `offset`.
    public func write(at offset: UInt64, _ buffer: ByteBuffer, fua: Bool = false) async throws {
        try await write(at: offset, [buffer], fua: fua)
    }

    /// Writes bytes at `offset`.
    public func write(at offset: UInt64, bytes: some Sequence<UInt8>, fua: Bool = false) async throws {
        try await write(at: offset, [ByteBuffer(bytes: bytes)], fua: fua)
    }

    /// Read-modify-write: surrounds the data with the current contents of its partial blocks.
    /// Not atomic against another writer of the same blocks.
    private func widen(_ chain: NBDBufferChain, at offset: UInt64, to range: Range<UInt64>) async throws -> NBDBufferChain {
        let minimum = UInt64(info.blockSize.minimum)
        let end = offset + UInt64(chain.count)
        var head = ByteBuffer()
        var tail = ByteBuffer()
        if offset > range.lowerBound {
            let block = try await read(at: range.lowerBound, length: Int(min(minimum, range.upperBound - range.lowerBound)))
            head = block.getSlice(at: block.readerIndex, length: Int(offset - range.lowerBound)) ?? ByteBuffer()
        }
        if end < range.upperBound {
            let blockStart = range.upperBound - min(minimum, range.upperBound - range.lowerBound)
            let block = try await read(at: blockStart, length: Int(range.upperBound - blockStart))
            tail = block.getSlice(at: block.readerIndex + Int(end - blockStart), length: Int(range.upperBound - end)) ?? ByteBuffer()
        }
        return NBDBufferChain([head] + chain.slice(from: 0, length: chain.count) + [tail])
    }

    // MARK: - Other commands

    /// Makes every acknowledged write durable (NBD_CMD_FLUSH).
    public func flush() async throws {
        try require(info.canFlush, "flush")
        try await waitAll([await submit(.flush, offset: 0, length: 0)])
    }

    /// Tells the server the range is no longer needed (NBD_CMD_TRIM). Only whole minimum
    /// blocks inside the range are trimmed; trimming is advisory.
    public func trim(at offset: UInt64, length: UInt64, fua: Bool = false) async throws {
        try checkWritable()
        try require(info.canTrim, "trim")
        if fua { try require(info.canFUA, "FUA") }
        try planner.checkBounds(offset: offset, length: length)
        guard let inner = planner.innerAligned(offset: offset, length: length) else { return }
        try await sendRanged(.trim, flags: fua ? [.fua] : [], inner)
    }

    /// Writes zeroes over the range (NBD_CMD_WRITE_ZEROES). `fastZero` fails with ENOTSUP rather
    /// than fall back to a slow write; `noHole` asks the server to allocate the range.
    public func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool = false, fastZero: Bool = false, noHole: Bool = false) async throws {
        try checkWritable()
        try require(info.canZero, "write zeroes")
        if fua { try require(info.canFUA, "FUA") }
        if fastZero { try require(info.canFastZero, "fast zero") }
        try planner.checkBounds(offset: offset, length: length)
        var flags: NBDCommandFlags = []
        if fua { flags.insert(.fua) }
        if fastZero { flags.insert(.fastZero) }
        if noHole { flags.insert(.noHole) }
        let end = offset + length
        let inner = planner.innerAligned(offset: offset, length: length)
        // Unaligned edges are written as zero bytes (read-modify-write).
        let headEnd = inner?.lowerBound ?? end
        if headEnd > offset {
            try await write(at: offset, ByteBuffer(repeating: 0, count: Int(headEnd - offset)), fua: fua)
        }
        if let inner {
            try await sendRanged(.writeZeroes, flags: flags, inner)
            if end > inner.upperBound {
                try await write(at: inner.upperBound, ByteBuffer(repeating: 0, count: Int(end - inner.upperBound)), fua: fua)
            }
        }
    }

    /// Asks the server to prefetch the range into its cache (NBD_CMD_CACHE).
    public func cache(at offset: UInt64, length: UInt64) async throws {
        try require(info.canCache, "cache")
        try planner.checkBounds(offset: offset, length: length)
        try await sendRanged(.cache, flags: [], planner.aligned(offset: offset, length: length))
    }

    /// The `base:allocation` map of the range (NBD_CMD_BLOCK_STATUS), merged and clipped to it.
    public func blockStatus(at offset: UInt64, length: UInt64) async throws -> [NBDExtent] {
        try await blockStatus(at: offset, length: length, context: NBDMetaContext.baseAllocation)
    }

    /// The map of the range in a negotiated metadata context (`qemu:dirty-bitmap:NAME`,
    /// `qemu:allocation-depth`, ...), merged and clipped to it; the flags are the context's own.
    public func blockStatus(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent] {
        guard let contextID = info.metaContexts[context] else {
            throw NBDError(.unimplemented, "the server did not agree to \(context) block status", exportName: info.name)
        }
        try planner.checkBounds(offset: offset, length: length)
        let range = planner.aligned(offset: offset, length: length)
        var extents: [NBDExtent] = []
        var position = range.lowerBound
        while position < min(range.upperBound, offset + length) {
            let want = UInt32(min(UInt64(Self.nonPayloadLimit), range.upperBound - position))
            let future = await submit(.blockStatus, offset: position, length: want)
            guard case .blockStatus(let contexts) = try await waitOne(future), let descriptors = contexts[contextID] else {
                throw NBDError.violation("block status reply without \(context) extents")
            }
            let received = NBDExtent.extents(from: descriptors, at: position, upTo: range.upperBound)
            guard let last = received.last else { throw NBDError.violation("block status reply made no progress") }
            extents += received
            position = last.offset + last.length
        }
        return NBDExtent.clipped(NBDExtent.merged(extents), to: offset..<(offset + length))
    }

    // MARK: - Disconnect

    /// Waits for in-flight requests, sends NBD_CMD_DISC and closes the socket. Never throws.
    public func disconnect() async {
        let done = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(NBDChannelCommand.disconnect(done)).whenFailure { _ in
            done.succeed(())
        }
        try? await done.futureResult.get()
        try? await channel.close()
    }

    // MARK: - Plumbing

    private func submit(
        _ command: NBDCommand, flags: NBDCommandFlags = [], offset: UInt64, length: UInt32,
        payload: [ByteBuffer] = [], sink: NBDReadSink? = nil
    ) async -> EventLoopFuture<NBDCommandResult> {
        let bytes = command == .read || command == .write ? Int(length) : 0
        await limiter.acquire(bytes: bytes)
        let promise = channel.eventLoop.makePromise(of: NBDCommandResult.self)
        let request = NBDCommandRequest(
            command: command, flags: flags, offset: offset, length: length, payload: payload, sink: sink, promise: promise
        )
        submitter.submit(request)
        let limiter = self.limiter
        promise.futureResult.whenComplete { _ in limiter.release(bytes: bytes) }
        return promise.futureResult
    }

    private func sendRanged(_ command: NBDCommand, flags: NBDCommandFlags, _ range: Range<UInt64>) async throws {
        var futures: [EventLoopFuture<NBDCommandResult>] = []
        for piece in planner.split(range, limit: Self.nonPayloadLimit) {
            futures.append(await submit(command, flags: flags, offset: piece.lowerBound, length: UInt32(piece.count)))
        }
        try await waitAll(futures)
    }

    /// Waits for every future (so buffers stay in use until the server is done), then throws the first error.
    private func waitAll(_ futures: [EventLoopFuture<NBDCommandResult>]) async throws {
        var firstError: (any Error)?
        for future in futures {
            do { _ = try await future.get() } catch { firstError = firstError ?? error }
        }
        if let firstError { throw annotate(firstError) }
    }

    private func waitOne(_ future: EventLoopFuture<NBDCommandResult>) async throws -> NBDCommandResult {
        do { return try await future.get() } catch { throw annotate(error) }
    }

    private func annotate(_ error: any Error) -> NBDError {
        var nbdError = error as? NBDError ?? NBDError(.connectionLost, "\(error)")
        if nbdError.exportName == nil { nbdError.exportName = info.name }
        return nbdError
    }

    private func checkWritable() throws(NBDError) {
        guard !info.isReadOnly else {
            throw NBDError(.readOnly, "the export is read-only", errno: .EPERM, exportName: info.name)
        }
    }

    private func require(_ advertised: Bool, _ what: String) throws(NBDError) {
        guard advertised else {
            throw NBDError(.unimplemented, "the export does not support \(what)", errno: .ENOTSUP, exportName: info.name)
        }
    }

    private func checkOffset(_ offset: UInt64, length: Int) throws(NBDError) {
        guard length >= 0 else { throw NBDError(.invalidArgument, "negative length", exportName: info.name) }
        guard offset <= info.size else {
            throw NBDError(.outOfBounds, "offset \(offset) is past the end of the export (size \(info.size))", exportName: info.name)
        }
    }
}
