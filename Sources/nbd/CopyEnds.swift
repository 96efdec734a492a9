import NBDChecksum
import NBDClient
import NBDProtocol
import NIOCore

/// One side of `nbd copy`: an NBD export or a local file.
protocol CopyEnd: Sendable {
    /// Bytes to copy when this is the source.
    var size: UInt64 { get }
    /// Most bytes it takes as a destination; nil when it grows (a regular file).
    var capacity: UInt64? { get }
    /// As a destination, reads zeroes wherever nothing is written (a file just truncated).
    var zeroesAreFree: Bool { get }
    /// As a destination, the block size requests should be aligned to.
    var alignment: Int { get }
    func extents(at offset: UInt64, length: UInt64) async throws -> [NBDExtent]
    func read(at offset: UInt64, length: Int, lane: Int) async throws -> [ByteBuffer]
    /// Before the first write.
    func prepare(size: UInt64) async throws
    func write(at offset: UInt64, _ buffers: [ByteBuffer], lane: Int) async throws
    func zero(at offset: UInt64, length: UInt64, lane: Int) async throws
    /// After the last write: flush.
    func finish(size: UInt64) async throws
    func close() async
}

extension CopyEnd {
    /// The block checksum of the first `length` bytes (BLAKE2b, 4 MiB blocks), zeroes unread.
    func checksum(length: UInt64) async throws -> String {
        let blockSize = ChecksumAlgorithm.defaultBlockSize
        let extents = try await self.extents(at: 0, length: length)
        let blocks = ChecksumRun.blocks(offset: 0, length: length, blockSize: blockSize, extents: extents)
        return try await ChecksumRun.checksum(blocks, algorithm: .blake2b, blockSize: blockSize, window: 4) { offset, count in
            try await self.read(at: offset, length: count, lane: Int(offset / UInt64(blockSize)))
        }
    }
}

enum CopyEnds {
    /// An NBD URI becomes an export over `connections` connections (one for writing without
    /// CAN_MULTI_CONN); anything else is a file.
    static func open(_ location: String, writing: Bool, connections: Int, client: ClientOptions) async throws -> any CopyEnd {
        let isNBD = ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"].contains { location.hasPrefix($0) }
        guard isNBD else { return FileCopyEnd(file: try await RandomAccessFile.open(location, writing: writing)) }
        let first = try await client.connect(to: location)
        if writing && first.info.isReadOnly {
            await first.disconnect()
            throw NBDError(.readOnly, "\(location) is read-only", exportName: first.info.name)
        }
        var clients = [first]
        let wanted = writing && !first.info.canMultiConn ? 1 : connections
        do {
            while clients.count < wanted { clients.append(try await client.connect(to: location)) }
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

    func extents(at offset: UInt64, length: UInt64) async throws -> [NBDExtent] {
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
            var position = offset
            while position < offset + length {
                let count = Int(min(UInt64(4 << 20), offset + length - position))
                try await connection.write(at: position, ByteBuffer(repeating: 0, count: count))
                position += UInt64(count)
            }
            return
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

    var size: UInt64 { file.size }
    var capacity: UInt64? { file.isRegular ? nil : file.size }
    var zeroesAreFree: Bool { file.isRegular }
    var alignment: Int { file.isRegular ? 1 : 4096 }

    func extents(at offset: UInt64, length: UInt64) async throws -> [NBDExtent] {
        try await file.extents(at: offset, length: length)
    }

    func read(at offset: UInt64, length: Int, lane: Int) async throws -> [ByteBuffer] {
        [try await file.read(at: offset, length: length)]
    }

    /// A regular file gets its size at once: what is never written stays a hole.
    func prepare(size: UInt64) async throws {
        if file.isRegular { try await file.truncate(to: size) }
    }

    func write(at offset: UInt64, _ buffers: [ByteBuffer], lane: Int) async throws {
        try await file.write(at: offset, buffers)
    }

    func zero(at offset: UInt64, length: UInt64, lane: Int) async throws {
        var position = offset
        while position < offset + length {
            let count = Int(min(UInt64(4 << 20), offset + length - position))
            try await file.write(at: position, [ByteBuffer(repeating: 0, count: count)])
            position += UInt64(count)
        }
    }

    func finish(size: UInt64) async throws {}

    func close() async {
        await file.close()
    }
}
