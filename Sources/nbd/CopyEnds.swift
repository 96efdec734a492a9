import NBDChecksum
import NBDClient
import NBDProtocol
import NIOCore

/// One side of `nbd copy`: an NBD export, a gateway export, a local file or stdout.
protocol CopyEnd: Sendable {
    /// Bytes to copy when this is the source.
    var size: UInt64 { get }
    /// Most bytes it takes as a destination; nil when it grows (a regular file, stdout).
    var capacity: UInt64? { get }
    /// As a destination, reads zeroes wherever nothing is written (a file just truncated).
    var zeroesAreFree: Bool { get }
    /// As a destination, the block size requests should be aligned to.
    var alignment: Int { get }
    /// The extents of a metadata context (`base:allocation`, or a dirty bitmap).
    func extents(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent]
    func read(at offset: UInt64, length: Int, lane: Int) async throws -> [ByteBuffer]
    /// Before the first write.
    func prepare(size: UInt64) async throws
    func write(at offset: UInt64, _ buffers: [ByteBuffer], lane: Int) async throws
    func zero(at offset: UInt64, length: UInt64, lane: Int) async throws
    /// After the last write: flush (a file copied from a stream gets its final size).
    func finish(size: UInt64) async throws
    /// The block checksum of a range (BLAKE2b, 4 MiB blocks), zeroes unread.
    func checksum(at offset: UInt64, length: UInt64) async throws -> String
    /// As a source, after the last read: fails if the source is known to have changed since
    /// the copy began (a gateway's tag moved on).
    func confirmUnchanged() async throws
    func close() async
}

extension CopyEnd {
    func confirmUnchanged() async throws {}

    func extents(at offset: UInt64, length: UInt64) async throws -> [NBDExtent] {
        try await extents(at: offset, length: length, context: NBDMetaContext.baseAllocation)
    }

    /// Reads what the allocation map says is data, a block window at a time.
    func checksum(at offset: UInt64, length: UInt64) async throws -> String {
        let blockSize = ChecksumAlgorithm.defaultBlockSize
        let extents = length > 0 ? try await self.extents(at: offset, length: length) : []
        return try await ChecksumRun.checksum(offset: offset, length: length, extents: extents, algorithm: .blake2b, blockSize: blockSize) { blockOffset, count in
            try await self.read(at: blockOffset, length: count, lane: Int(blockOffset / UInt64(blockSize)))
        }
    }
}

/// Zeroes written as bytes, for ends that cannot zero otherwise: pieces of at most 4 MiB,
/// slices of one buffer of zeroes.
enum ZeroBytes {
    static func write(at offset: UInt64, length: UInt64, _ write: (UInt64, ByteBuffer) async throws -> Void) async throws {
        let zeroes = ByteBuffer(repeating: 0, count: Int(min(length, 4 << 20)))
        var position = offset
        while position < offset + length {
            let count = Int(min(UInt64(zeroes.readableBytes), offset + length - position))
            try await write(position, zeroes.getSlice(at: zeroes.readerIndex, length: count) ?? zeroes)
            position += UInt64(count)
        }
    }
}

enum CopyEnds {
    static let nbdSchemes = ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]

    /// Connections to an NBD server when not told: half the cores, 1 to 4. The server and this
    /// tool each need a core per connection's work: reading 8 GiB (836 MiB of data) from
    /// nbdkit into a file on 2 cores took 0.63 s over one connection and 0.70 s over four
    /// (nbdkit itself spent half as much again with four). HTTP connections stay at 4: through
    /// a gateway on the same machine one was slower than four (2.7 s against 1.9 s).
    static var defaultNBDConnections: Int { min(4, max(1, System.coreCount / 2)) }
    static let defaultHTTPConnections = 4

    /// An NBD URI becomes an export over `connections` connections (one for writing without
    /// CAN_MULTI_CONN), a gateway data URL an HTTP client with as many connections, `-` stdout
    /// (as a destination), anything else a file. `keepingContents`: a destination is written
    /// over in place (an incremental or resumed copy), never truncated. Nil connections: the
    /// defaults above.
    static func open(
        _ location: String, writing: Bool, keepingContents: Bool = false, connections: Int?,
        contexts: [String] = [NBDMetaContext.baseAllocation], client: ClientOptions, gateway: GatewayOptions
    ) async throws -> any CopyEnd {
        if location == "-" {
            guard writing else { throw NBDError(.invalidArgument, "- (standard input) cannot be read at any offset; give an NBD URI, a gateway URL or a file") }
            return StreamCopyEnd(output: try await OutputFile.open(nil))
        }
        if GatewayClient.isURL(location) {
            return try await GatewayCopyEnd.open(location, writing: writing, connections: connections ?? defaultHTTPConnections, options: gateway)
        }
        guard nbdSchemes.contains(where: { location.hasPrefix($0) }) else {
            let file = try await RandomAccessFile.open(location, writing: writing, keepingContents: keepingContents)
            return FileCopyEnd(file: file, keepingContents: keepingContents)
        }
        var configuration = client.configuration
        configuration.metaContexts = contexts
        let connect = { try await NBDClient.connect(to: location, configuration: configuration, logger: client.logger) }
        let first = try await connect()
        if writing && first.info.isReadOnly {
            await first.disconnect()
            throw NBDError(.readOnly, "\(location) is read-only", exportName: first.info.name)
        }
        var clients = [first]
        let wanted = writing && !first.info.canMultiConn ? 1 : connections ?? defaultNBDConnections
        do {
            while clients.count < wanted { clients.append(try await connect()) }
        } catch {
            for opened in clients { await opened.disconnect() }
            throw error
        }
        return NBDCopyEnd(clients: clients)
    }
}

/// An NBD export, its requests spread over its connections.
struct NBDCopyEnd: CopyEnd {
    let clients: [NBDClient]

    private var info: NBDExportInfo { clients[0].info }
    private func client(_ lane: Int) -> NBDClient { clients[lane % clients.count] }

    var size: UInt64 { info.size }
    var capacity: UInt64? { info.size }
    var zeroesAreFree: Bool { false }
    var alignment: Int { Int(info.blockSize.minimum) }

    func extents(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent] {
        guard context == NBDMetaContext.baseAllocation else {
            guard info.metaContexts[context] != nil else {
                throw NBDError(.unimplemented, "the server does not offer \(context)", exportName: info.name)
            }
            return length > 0 ? try await clients[0].blockStatus(at: offset, length: length, context: context) : []
        }
        guard info.canBlockStatus, length > 0 else { return [] }
        return try await clients[0].blockStatus(at: offset, length: length)
    }

    func read(at offset: UInt64, length: Int, lane: Int) async throws -> [ByteBuffer] {
        try await client(lane).readSlices(at: offset, length: length)
    }

    func prepare(size: UInt64) async throws {}

    func write(at offset: UInt64, _ buffers: [ByteBuffer], lane: Int) async throws {
        try await client(lane).write(at: offset, buffers)
    }

    /// WRITE_ZEROES (fast first where offered; the server may punch holes), never TRIM (its
    /// contents are undefined); zero bytes when the export cannot zero.
    func zero(at offset: UInt64, length: UInt64, lane: Int) async throws {
        let connection = client(lane)
        guard info.canZero else {
            return try await ZeroBytes.write(at: offset, length: length) { try await connection.write(at: $0, $1) }
        }
        if info.canFastZero {
            do {
                return try await connection.writeZeroes(at: offset, length: length, fastZero: true)
            } catch let error as NBDError where error.errno == .ENOTSUP {
                // Not fast here: zero the slow way.
            }
        }
        try await connection.writeZeroes(at: offset, length: length)
    }

    func finish(size: UInt64) async throws {
        // With several connections CAN_MULTI_CONN makes one flush cover all of them.
        if info.canFlush { try await clients[0].flush() }
    }

    func close() async {
        for client in clients { await client.disconnect() }
    }
}

/// A local file or device.
struct FileCopyEnd: CopyEnd {
    let file: RandomAccessFile
    /// Written over in place: what is not written keeps its old bytes.
    let keepingContents: Bool

    var size: UInt64 { file.size }
    var capacity: UInt64? { file.isRegular ? nil : file.size }
    var zeroesAreFree: Bool { file.isRegular && !keepingContents }
    var alignment: Int { file.isRegular ? 1 : 4096 }

    func extents(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent] {
        guard context == NBDMetaContext.baseAllocation else {
            throw NBDError(.unimplemented, "a file has no \(context), only its holes")
        }
        return try await file.extents(at: offset, length: length)
    }

    func read(at offset: UInt64, length: Int, lane: Int) async throws -> [ByteBuffer] {
        [try await file.read(at: offset, length: length)]
    }

    /// A regular file gets its size at once: what is never written stays a hole. One kept
    /// grows to the size if it is shorter, and is never cut.
    func prepare(size: UInt64) async throws {
        if file.isRegular && (!keepingContents || file.size < size) { try await file.truncate(to: size) }
    }

    func write(at offset: UInt64, _ buffers: [ByteBuffer], lane: Int) async throws {
        try await file.write(at: offset, buffers)
    }

    func zero(at offset: UInt64, length: UInt64, lane: Int) async throws {
        try await ZeroBytes.write(at: offset, length: length) { try await file.write(at: $0, [$1]) }
    }

    /// A copy from a stream learns the size only at its end.
    func finish(size: UInt64) async throws {
        if file.isRegular && (!keepingContents || file.size < size) { try await file.truncate(to: size) }
    }

    func close() async {
        await file.close()
    }
}

/// Standard output as a destination: pieces are written in order, whatever order their reads
/// finish in, and zeroes are written as bytes.
struct StreamCopyEnd: CopyEnd {
    let output: OutputFile
    private let turn = WriteTurn()

    init(output: OutputFile) {
        self.output = output
    }

    var size: UInt64 { 0 }
    var capacity: UInt64? { nil }
    var zeroesAreFree: Bool { false }
    var alignment: Int { 1 }

    func extents(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent] {
        throw NBDError(.invalidArgument, "standard output cannot be read")
    }

    func read(at offset: UInt64, length: Int, lane: Int) async throws -> [ByteBuffer] {
        throw NBDError(.invalidArgument, "standard output cannot be read")
    }

    func prepare(size: UInt64) async throws {}

    func write(at offset: UInt64, _ buffers: [ByteBuffer], lane: Int) async throws {
        try await turn.wait(for: offset)
        do {
            for buffer in buffers { try await output.write(buffer) }
        } catch {
            await turn.fail()
            throw error
        }
        await turn.done(through: offset + buffers.reduce(0) { $0 + UInt64($1.readableBytes) })
    }

    func zero(at offset: UInt64, length: UInt64, lane: Int) async throws {
        try await ZeroBytes.write(at: offset, length: length) { try await write(at: $0, [$1], lane: lane) }
    }

    func finish(size: UInt64) async throws {}

    func checksum(at offset: UInt64, length: UInt64) async throws -> String {
        throw NBDError(.invalidArgument, "standard output cannot be read back to verify")
    }

    func close() async {}
}

/// Whose turn it is to write to a stream: the piece that starts where the last one ended.
/// A failed write or a cancelled copy ends every wait (nothing after a gap may be written).
actor WriteTurn {
    private var position: UInt64 = 0
    private var failed = false
    private var waiting: [UInt64: CheckedContinuation<Void, any Error>] = [:]

    func wait(for offset: UInt64) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                if failed || Task.isCancelled {
                    continuation.resume(throwing: CancellationError())
                } else if offset == position {
                    continuation.resume()
                } else {
                    waiting[offset] = continuation
                }
            }
        } onCancel: {
            Task { await self.fail() }
        }
    }

    func done(through end: UInt64) {
        position = end
        waiting.removeValue(forKey: end)?.resume()
    }

    func fail() {
        failed = true
        let stranded = waiting.values
        waiting.removeAll()
        for continuation in stranded { continuation.resume(throwing: CancellationError()) }
    }
}
