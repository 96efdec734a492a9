import NBDProtocol
import NIOCore

/// One block of a checksummed range, and whether the allocation map says it reads as zeroes.
public struct ChecksumBlock: Equatable, Sendable {
    public var offset: UInt64
    public var length: Int
    public var isZero: Bool

    public init(offset: UInt64, length: Int, isZero: Bool) {
        self.offset = offset
        self.length = length
        self.isZero = isZero
    }
}

public enum ChecksumRun {
    /// The blocks of `offset..<offset+length`, cut from `offset`; a block is zero when extents
    /// that read as zeroes cover all of it (`extents` sorted, as block status gives them).
    public static func blocks(offset: UInt64, length: UInt64, blockSize: Int, extents: [NBDExtent]) -> [ChecksumBlock] {
        // The zero extents, neighbours joined (hole+zero and zero alike).
        var zeroes: [Range<UInt64>] = []
        for extent in extents where extent.isZero && extent.length > 0 {
            let range = extent.offset..<(extent.offset + extent.length)
            if let last = zeroes.last, last.upperBound == range.lowerBound {
                zeroes[zeroes.count - 1] = last.lowerBound..<range.upperBound
            } else {
                zeroes.append(range)
            }
        }
        var blocks: [ChecksumBlock] = []
        blocks.reserveCapacity(Int((length + UInt64(blockSize) - 1) / UInt64(blockSize)))
        var zeroIndex = 0
        var position = offset
        let end = offset + length
        while position < end {
            let blockEnd = min(end, position + UInt64(blockSize))
            while zeroIndex < zeroes.count && zeroes[zeroIndex].upperBound <= position { zeroIndex += 1 }
            let isZero = zeroIndex < zeroes.count && zeroes[zeroIndex].lowerBound <= position && zeroes[zeroIndex].upperBound >= blockEnd
            blocks.append(ChecksumBlock(offset: position, length: Int(blockEnd - position), isZero: isZero))
            position = blockEnd
        }
        return blocks
    }

    /// The checksum of `offset..<offset+length` in blocks of `blockSize`: blocks that
    /// `extents` says read as zeroes are not read, the rest are read with `read`.
    public static func checksum(
        offset: UInt64, length: UInt64, extents: [NBDExtent], algorithm: ChecksumAlgorithm, blockSize: Int, window: Int = 4,
        read: @escaping @Sendable (_ offset: UInt64, _ length: Int) async throws -> [ByteBuffer]
    ) async throws -> String {
        let blocks = blocks(offset: offset, length: length, blockSize: blockSize, extents: extents)
        return try await checksum(blocks, algorithm: algorithm, blockSize: blockSize, window: window, read: read)
    }

    /// The checksum of `blocks`: zero blocks from the precomputed digest, data blocks read with
    /// `read` (up to `window` at once) and hashed as they arrive.
    public static func checksum(
        _ blocks: [ChecksumBlock], algorithm: ChecksumAlgorithm, blockSize: Int, window: Int = 4,
        read: @escaping @Sendable (_ offset: UInt64, _ length: Int) async throws -> [ByteBuffer]
    ) async throws -> String {
        let sum = BlockChecksum(algorithm: algorithm, blockSize: blockSize)
        try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { group in
            var launched = 0
            var inFlight = 0
            var appended = 0
            var ready: [Int: [UInt8]] = [:]
            // Digests waiting for an earlier block stay few: zero blocks need no read, so without
            // this bound a slow data block would let the whole plan's digests pile up.
            let ahead = 64 * max(1, window)
            while appended < blocks.count {
                while launched < blocks.count && inFlight < max(1, window) && launched - appended < ahead {
                    let block = blocks[launched]
                    let index = launched
                    if block.isZero {
                        ready[index] = sum.zeroDigest(count: block.length)
                    } else {
                        group.addTask { (index, BlockChecksum.digest(algorithm, of: try await read(block.offset, block.length))) }
                        inFlight += 1
                    }
                    launched += 1
                }
                while let digest = ready.removeValue(forKey: appended) {
                    sum.append(digest: digest)
                    appended += 1
                }
                if appended == blocks.count { break }
                // Every block launched is ready or in flight, so a block is still to come.
                guard let (index, digest) = try await group.next() else { break }
                inFlight -= 1
                ready[index] = digest
            }
            guard appended == blocks.count else {
                throw ChecksumIncomplete(hashed: appended, blocks: blocks.count)
            }
        }
        return sum.finalize()
    }
}

/// The checksum loop ended before every block was hashed (a bug, never expected).
public struct ChecksumIncomplete: Error, CustomStringConvertible {
    public let hashed: Int
    public let blocks: Int
    public var description: String { "checksum: only \(hashed) of \(blocks) blocks were hashed" }
}
