import ArgumentParser
import NBDChecksum
import NBDClient
import NBDProtocol
import NIOCore

struct CopyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "copy",
        abstract: "Copy a disk between NBD exports and local files, sparse: zeroes and holes never move as bytes.",
        discussion: """
            SOURCE and DESTINATION are NBD URIs or local files. The source's allocation map \
            (base:allocation, or a file's holes) decides what is read: zero extents become \
            WRITE_ZEROES on an NBD destination (the server may punch holes; never TRIM) and \
            holes in a file destination. Several requests run at once, over several connections \
            where the export allows (CAN_MULTI_CONN).
            """
    )

    @Argument(help: "NBD URI or file to read.") var source: String
    @Argument(help: "NBD URI or file to write (a file is created or truncated).") var destination: String
    @OptionGroup var client: ClientOptions
    @Option(help: "NBD connections per export (writes use several only with CAN_MULTI_CONN).") var connections = 4
    @Option(name: .customLong("requests"), help: "Requests in flight at once.") var requestsInFlight = 16
    @Option(name: .customLong("chunk-size"), help: "Bytes per read and write.") var chunkSize = 4 << 20
    @Flag(help: "Compare the block checksums of both sides afterwards (exit 1 if they differ).") var verify = false
    @Flag(help: "Show a progress bar on a terminal.") var progress = false
    @Flag(name: .customLong("progress-json"), help: "Print progress as JSON lines on stderr: {\"copied\":N,\"total\":N}.") var progressJSON = false

    func run() async throws {
        try await reportingErrors {
            guard connections >= 1, requestsInFlight >= 1, chunkSize >= 4096, chunkSize <= 32 << 20 else {
                throw ValidationError("--connections and --requests must be at least 1; --chunk-size from 4096 to 32 MiB")
            }
            let from = try await CopyEnds.open(source, writing: false, connections: connections, client: client)
            let to: any CopyEnd
            do {
                to = try await CopyEnds.open(destination, writing: true, connections: connections, client: client)
            } catch {
                await from.close()
                throw error
            }
            do {
                try await copy(from, to)
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

    private func copy(_ from: any CopyEnd, _ to: any CopyEnd) async throws {
        let size = from.size
        if let capacity = to.capacity, capacity < size {
            throw NBDError(.outOfBounds, "the destination (\(capacity) bytes) is smaller than the source (\(size) bytes)")
        }
        try await to.prepare(size: size)
        let extents = try await from.extents(at: 0, length: size)
        let pieces = CopyPlan.pieces(size: size, extents: extents, chunkSize: chunkSize, zeroesAreFree: to.zeroesAreFree, alignment: to.alignment)
        let bar = ProgressBar(enabled: progress, total: size)
        let report = ProgressReport(enabled: progressJSON, total: size)
        // Bytes of the disk done so far: holes a fresh file already has count at once.
        let skipped = size - pieces.reduce(0) { $0 + $1.length }
        bar.advance(by: skipped)
        report.advance(by: skipped)
        let window = requestsInFlight
        try await withThrowingTaskGroup(of: UInt64.self) { group in
            var next = 0
            var running = 0
            while next < pieces.count || running > 0 {
                while running < window && next < pieces.count {
                    let piece = pieces[next]
                    let lane = next
                    group.addTask {
                        if piece.isZero {
                            try await to.zero(at: piece.offset, length: piece.length, lane: lane)
                        } else {
                            let buffers = try await from.read(at: piece.offset, length: Int(piece.length), lane: lane)
                            try await to.write(at: piece.offset, buffers, lane: lane)
                        }
                        return piece.length
                    }
                    next += 1
                    running += 1
                }
                guard let done = try await group.next() else { break }
                running -= 1
                bar.advance(by: done)
                report.advance(by: done)
            }
        }
        try await to.finish(size: size)
        bar.finish()
        report.finish()
    }

    private func verifyChecksums(_ from: any CopyEnd, _ to: any CopyEnd) async throws {
        let size = from.size
        async let sourceSum = from.checksum(length: size)
        async let destinationSum = to.checksum(length: size)
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
