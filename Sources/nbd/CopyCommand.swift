import ArgumentParser
import NBDChecksum
import NBDClient
import NBDProtocol
import NIOCore
import NIOPosix

struct CopyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy a disk between NBD exports, gateway URLs and local files, sparse: zeroes and holes never move as bytes.",
        discussion: """
            SOURCE and DESTINATION are NBD URIs, gateway data URLs \
            (http(s)://HOST[:PORT]/exports/NAME/data, with --token and --cacert), local files, \
            or - (standard input as the source, standard output as the destination). The \
            source's allocation map (base:allocation, /extents, or a file's holes) decides what \
            is read: zero extents become WRITE_ZEROES on an NBD or gateway destination (the \
            server may punch holes; never TRIM) and holes in a file. Several requests run at \
            once, over several connections where the export allows (CAN_MULTI_CONN). Writes to \
            a gateway carry a SHA-256 Content-Digest, which the gateway checks; reads from a \
            gateway carry If-Match with the tag the disk had when the copy began, so a disk \
            changed under the copy fails it.
            """
    )

    @Argument(help: "NBD URI, gateway data URL, file, or - for standard input.") var source: String
    @Argument(help: "NBD URI, gateway data URL, file (created or truncated), or - for standard output.") var destination: String
    @OptionGroup var client: ClientOptions
    @OptionGroup var gateway: GatewayOptions
    @Option(help: "NBD connections (or HTTP connections) per end; writes use several only with CAN_MULTI_CONN. Default: 4 to a gateway, and to an NBD server half the cores, 1 to 4.") var connections: Int?
    // 32 requests of 1 MiB kept up with nbdcopy from a Unix socket here; 16 of 4 MiB did not.
    @Option(name: .customLong("requests"), help: "Requests in flight at once.") var requestsInFlight = 32
    @Option(name: .customLong("chunk-size"), help: "Bytes per read and write.") var chunkSize = 1 << 20
    @Flag(help: "Compare the block checksums of both sides afterwards (exit 1 if they differ).") var verify = false
    @Option(name: .customLong("dirty-bitmap"), help: "Copy only the blocks this dirty bitmap (qemu:dirty-bitmap:NAME) marks, onto an existing copy.")
    var dirtyBitmap: String?
    @Flag(help: "Finish a copy that was cut off: blocks whose checksums already match are not sent again.") var resume = false
    @Flag(help: "Show a progress bar on a terminal.") var progress = false
    @Flag(name: .customLong("progress-json"), help: "Print progress as JSON lines on stderr: {\"copied\":N,\"total\":N}.") var progressJSON = false

    /// What the copy did, printed after an incremental or resumed copy.
    struct Totals {
        var written: UInt64 = 0
        var zeroed: UInt64 = 0
        var alreadyThere: UInt64 = 0

        mutating func add(_ outcome: PieceOutcome, _ length: UInt64) {
            switch outcome {
            case .written: written += length
            case .zeroed: zeroed += length
            case .alreadyThere: alreadyThere += length
            }
        }
    }

    enum PieceOutcome: Sendable { case written, zeroed, alreadyThere }

    var keepsDestination: Bool { resume || dirtyBitmap != nil }

    func validate() throws {
        guard connections ?? 1 >= 1, requestsInFlight >= 1, chunkSize >= 4096, chunkSize <= 32 << 20 else {
            throw ValidationError("--connections and --requests must be at least 1; --chunk-size from 4096 to 32 MiB")
        }
        if source == "-" && (verify || resume || dirtyBitmap != nil) {
            throw ValidationError("--verify, --resume and --dirty-bitmap need a source that can be read again, not -")
        }
        if destination == "-" && (verify || resume || dirtyBitmap != nil) {
            throw ValidationError("--verify, --resume and --dirty-bitmap need a destination that can be read back, not -")
        }
    }

    func run() async throws {
        ReusedMemory.keepFreedBuffers()
        try await reportingErrors {
            let bitmapContext = dirtyBitmap.map { "qemu:dirty-bitmap:\($0)" }
            let contexts = [NBDMetaContext.baseAllocation] + (bitmapContext.map { [$0] } ?? [])
            let to = try await CopyEnds.open(
                destination, writing: true, keepingContents: keepsDestination, connections: connections, client: client, gateway: gateway)
            let from: any CopyEnd
            do {
                guard source != "-" else {
                    try await copyFromStream(to)
                    await to.close()
                    return
                }
                from = try await CopyEnds.open(source, writing: false, connections: connections, contexts: contexts, client: client, gateway: gateway)
            } catch {
                await to.close()
                throw error
            }
            do {
                let totals = try await copy(from, to, bitmapContext: bitmapContext)
                if keepsDestination {
                    StandardStreams.writeError("nbd copy: wrote \(totals.written) bytes of data, zeroed \(totals.zeroed), skipped \(totals.alreadyThere) already there\n")
                }
                if verify { try await verifyChecksums(from, to) }
            } catch {
                await from.close()
                await to.close()
                throw error
            }
            await from.close()
            await to.close()
        }
    }

    private func copy(_ from: any CopyEnd, _ to: any CopyEnd, bitmapContext: String?) async throws -> Totals {
        let size = from.size
        if let capacity = to.capacity, capacity < size {
            throw NBDError(.outOfBounds, "the destination (\(capacity) bytes) is smaller than the source (\(size) bytes)")
        }
        try await to.prepare(size: size)
        let extents = try await from.extents(at: 0, length: size)
        var pieces = CopyPlan.pieces(size: size, extents: extents, chunkSize: chunkSize, zeroesAreFree: to.zeroesAreFree, alignment: to.alignment)
        if let bitmapContext {
            let dirty = try await from.extents(at: 0, length: size, context: bitmapContext).filter { $0.flags & 1 != 0 }
            pieces = CopyPlan.restrict(pieces, to: dirty, alignment: to.alignment, size: size)
        }
        let bar = ProgressBar(enabled: progress, total: size)
        let report = ProgressReport(enabled: progressJSON, total: size)
        // Bytes of the disk done so far: holes a fresh file already has, and clean blocks, count at once.
        let skipped = size - pieces.reduce(0) { $0 + $1.length }
        bar.advance(by: skipped)
        report.advance(by: skipped)
        var totals = Totals()
        let resume = self.resume
        let executors = Self.eventLoopExecutors()
        try await withThrowingTaskGroup(of: (PieceOutcome, UInt64).self) { group in
            var next = 0
            var running = 0
            while next < pieces.count || running > 0 {
                while running < requestsInFlight && next < pieces.count {
                    let piece = pieces[next]
                    let lane = next
                    group.addTask(executorPreference: executors[lane % executors.count]) {
                        let buffers = piece.isZero ? [] : try await from.read(at: piece.offset, length: Int(piece.length), lane: lane)
                        if resume, try await Self.alreadyThere(piece, buffers, in: to) {
                            return (.alreadyThere, piece.length)
                        }
                        if piece.isZero {
                            try await to.zero(at: piece.offset, length: piece.length, lane: lane)
                            return (.zeroed, piece.length)
                        }
                        try await to.write(at: piece.offset, buffers, lane: lane)
                        return (.written, piece.length)
                    }
                    next += 1
                    running += 1
                }
                guard let (outcome, done) = try await group.next() else { break }
                running -= 1
                totals.add(outcome, done)
                bar.advance(by: done)
                report.advance(by: done)
            }
        }
        try await from.confirmUnchanged()
        try await to.finish(size: size)
        bar.finish()
        report.finish()
        return totals
    }

    /// One executor per event loop of the group the NBD and HTTP connections use: a piece's
    /// task runs on an event loop, so its replies and body parts reach it with no hop to the
    /// cooperative pool (and an HTTP request made there stays on that loop).
    static func eventLoopExecutors() -> [NBDEventLoopExecutor] {
        MultiThreadedEventLoopGroup.singleton.makeIterator().map { NBDEventLoopExecutor(eventLoop: $0) }
    }

    /// Whether the destination already holds `piece` (the source's `buffers`, or zeroes):
    /// compared by block checksum, so a gateway destination sends 64 hex digits, not the bytes.
    private static func alreadyThere(_ piece: CopyPiece, _ buffers: [ByteBuffer], in to: any CopyEnd) async throws -> Bool {
        let blockSize = ChecksumAlgorithm.defaultBlockSize
        let extents = piece.isZero ? [NBDExtent(offset: piece.offset, length: piece.length, flags: NBDAllocationFlags.zero)] : []
        let expected = try await ChecksumRun.checksum(
            offset: piece.offset, length: piece.length, extents: extents, algorithm: .blake2b, blockSize: blockSize, window: 1
        ) { offset, length in
            ByteSlices.slices(of: buffers, startingAt: piece.offset, at: offset, length: length)
        }
        return try await to.checksum(at: piece.offset, length: piece.length) == expected
    }

    /// Standard input, read in order: chunks of zeroes become zero writes (or nothing, on a
    /// fresh file), the rest is written with several writes in flight.
    private func copyFromStream(_ to: any CopyEnd) async throws {
        let input = try await InputFile.open(nil)
        try await to.prepare(size: 0)
        let bar = ProgressBar(enabled: progress, total: input.size ?? 0)
        let report = ProgressReport(enabled: progressJSON, total: input.size ?? 0)
        var position: UInt64 = 0
        try await withThrowingTaskGroup(of: UInt64.self) { group in
            var running = 0
            var lane = 0
            while true {
                if running == requestsInFlight, let done = try await group.next() {
                    running -= 1
                    bar.advance(by: done)
                    report.advance(by: done)
                }
                guard let buffer = try await input.read(maximum: chunkSize) else { break }
                let offset = position
                let length = UInt64(buffer.readableBytes)
                position += length
                if let capacity = to.capacity, position > capacity {
                    throw NBDError(.outOfBounds, "standard input is longer than the destination (\(capacity) bytes)")
                }
                // Zeroes are found 64 KiB at a time, so a chunk that is mostly zeroes stays mostly sparse.
                let runs = ByteSlices.runs(of: buffer, grain: max(64 << 10, to.alignment))
                let piece = lane
                let zeroesAreFree = to.zeroesAreFree
                group.addTask {
                    for run in runs {
                        let at = offset + UInt64(run.range.lowerBound)
                        if run.isZero {
                            if !zeroesAreFree { try await to.zero(at: at, length: UInt64(run.range.count), lane: piece) }
                        } else if let slice = buffer.getSlice(at: buffer.readerIndex + run.range.lowerBound, length: run.range.count) {
                            try await to.write(at: at, [slice], lane: piece)
                        }
                    }
                    return length
                }
                lane += 1
                running += 1
            }
            while let done = try await group.next() {
                bar.advance(by: done)
                report.advance(by: done)
            }
        }
        try await to.finish(size: position)
        bar.finish()
        report.finish()
    }

    private func verifyChecksums(_ from: any CopyEnd, _ to: any CopyEnd) async throws {
        let size = from.size
        async let sourceSum = from.checksum(at: 0, length: size)
        async let destinationSum = to.checksum(at: 0, length: size)
        let (expected, actual) = try await (sourceSum, destinationSum)
        guard expected == actual else {
            throw NBDError(.invalidArgument, "verify failed: the source's checksum is \(expected), the destination's \(actual)")
        }
        StandardStreams.writeError("verified: blake2b block checksum \(actual) on both sides\n")
    }
}

/// What a copy moves: data read and written, zeroes written as zeroes (or not at all).
struct CopyPiece: Equatable {
    var offset: UInt64
    var length: UInt64
    var isZero: Bool
}

enum CopyPlan {
    /// Zero extents become zero pieces of up to 1 GiB (none when the destination already reads
    /// zeroes there: a fresh file); data extents pieces of about `chunkSize`. Every boundary
    /// lies on the destination's `alignment` grid (its minimum block size): a block half data,
    /// half zeroes is copied as data, so no two requests running at once ever share a block
    /// (the edges of an unaligned request are read-modify-write, which is not atomic).
    static func pieces(size: UInt64, extents: [NBDExtent], chunkSize: Int, zeroesAreFree: Bool, alignment: Int = 1) -> [CopyPiece] {
        let grid = UInt64(max(1, alignment))
        func down(_ value: UInt64) -> UInt64 { value / grid * grid }
        func up(_ value: UInt64) -> UInt64 { min(size, (value + grid - 1) / grid * grid) }
        // Without an allocation map everything is data. Neighbours of one kind are joined.
        var runs: [CopyPiece] = []
        for extent in extents.isEmpty ? [NBDExtent(offset: 0, length: size, flags: 0)] : extents where extent.length > 0 {
            if let last = runs.last, last.isZero == extent.isZero, last.offset + last.length == extent.offset {
                runs[runs.count - 1].length += extent.length
            } else {
                runs.append(CopyPiece(offset: extent.offset, length: extent.length, isZero: extent.isZero))
            }
        }
        // Zero runs shrink onto the grid, data runs grow onto it; data runs that now meet join.
        var aligned: [CopyPiece] = []
        for run in runs {
            let end = run.offset + run.length
            let start = run.isZero ? up(run.offset) : down(run.offset)
            let stop = run.isZero ? (end == size ? end : down(end)) : up(end)
            guard stop > start else { continue }
            if let last = aligned.last, !last.isZero, !run.isZero, last.offset + last.length >= start {
                aligned[aligned.count - 1].length = max(last.offset + last.length, stop) - last.offset
            } else {
                aligned.append(CopyPiece(offset: start, length: stop - start, isZero: run.isZero))
            }
        }
        var pieces: [CopyPiece] = []
        for run in aligned {
            if run.isZero && zeroesAreFree { continue }
            let step = max(grid, (run.isZero ? UInt64(1 << 30) : UInt64(chunkSize)) / grid * grid)
            var position = run.offset
            let end = run.offset + run.length
            while position < end {
                let length = min(step, end - position)
                pieces.append(CopyPiece(offset: position, length: length, isZero: run.isZero))
                position += length
            }
        }
        return pieces
    }
}

extension CopyPlan {
    /// The parts of `pieces` inside `ranges` (a dirty bitmap's dirty extents, sorted), each
    /// widened to the destination's `alignment` grid; parts that then meet are joined.
    static func restrict(_ pieces: [CopyPiece], to ranges: [NBDExtent], alignment: Int, size: UInt64) -> [CopyPiece] {
        let grid = UInt64(max(1, alignment))
        var result: [CopyPiece] = []
        var first = 0
        for piece in pieces {
            let pieceEnd = piece.offset + piece.length
            while first < ranges.count && ranges[first].offset + ranges[first].length <= piece.offset { first += 1 }
            var index = first
            while index < ranges.count && ranges[index].offset < pieceEnd {
                let range = ranges[index]
                let start = max(piece.offset, range.offset / grid * grid)
                let end = min(pieceEnd, min(size, (range.offset + range.length + grid - 1) / grid * grid))
                if end > start {
                    if let last = result.last, last.isZero == piece.isZero, last.offset + last.length >= start, last.offset >= piece.offset {
                        result[result.count - 1].length = max(last.offset + last.length, end) - last.offset
                    } else {
                        result.append(CopyPiece(offset: start, length: end - start, isZero: piece.isZero))
                    }
                }
                index += 1
            }
        }
        return result
    }
}

/// Views into buffers read for a piece, and the zero test for stream chunks.
enum ByteSlices {
    /// The `length` bytes at `offset` of `buffers`, which hold the bytes from `base` on.
    static func slices(of buffers: [ByteBuffer], startingAt base: UInt64, at offset: UInt64, length: Int) -> [ByteBuffer] {
        var result: [ByteBuffer] = []
        var skip = Int(offset - base)
        var wanted = length
        for buffer in buffers where wanted > 0 {
            let count = buffer.readableBytes
            if skip >= count {
                skip -= count
                continue
            }
            let take = min(count - skip, wanted)
            if let slice = buffer.getSlice(at: buffer.readerIndex + skip, length: take) { result.append(slice) }
            wanted -= take
            skip = 0
        }
        return result
    }

    /// `buffer` cut every `grain` bytes into runs of zeroes and of data, neighbours of a kind joined.
    static func runs(of buffer: ByteBuffer, grain: Int) -> [(range: Range<Int>, isZero: Bool)] {
        var runs: [(range: Range<Int>, isZero: Bool)] = []
        buffer.withUnsafeReadableBytes { bytes in
            var start = 0
            while start < bytes.count {
                let end = min(bytes.count, start + grain)
                let zero = isZero(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                if let last = runs.last, last.isZero == zero {
                    runs[runs.count - 1].range = last.range.lowerBound..<end
                } else {
                    runs.append((start..<end, zero))
                }
                start = end
            }
        }
        return runs
    }

    static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var index = 0
        while index + 8 <= bytes.count {
            if bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self) != 0 { return false }
            index += 8
        }
        while index < bytes.count {
            if bytes[index] != 0 { return false }
            index += 1
        }
        return true
    }
}

/// Machine-readable progress on stderr, one JSON line per percent (and at the end).
final class ProgressReport: @unchecked Sendable {
    // Touched only from the command's own task, one call at a time.
    private let enabled: Bool
    private let total: UInt64
    private var done: UInt64 = 0
    private var lastPercent = -1

    init(enabled: Bool, total: UInt64) {
        self.enabled = enabled
        self.total = total
    }

    func advance(by count: UInt64) {
        done += count
        guard enabled else { return }
        let percent = total == 0 ? 100 : Int(done * 100 / total)
        guard percent != lastPercent else { return }
        lastPercent = percent
        StandardStreams.writeError("{\"copied\":\(done),\"total\":\(total)}\n")
    }

    func finish() {
        guard enabled, lastPercent != 100 else { return }
        StandardStreams.writeError("{\"copied\":\(done),\"total\":\(total)}\n")
    }
}
