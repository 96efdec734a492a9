import NIOCore

/// ovirt-imageio's block checksum (its blkhash.py): the range is cut into `blockSize` blocks
/// (the last may be shorter), each block is hashed, and the checksum is the hash of the block
/// digests one after the other. A block of zeroes has a digest known in advance, so zero
/// extents are never read. Pure: the bytes come from the caller. Used by one task at a time.
public final class BlockChecksum {
    public let algorithm: ChecksumAlgorithm
    public let blockSize: Int
    private let outer: IncrementalHash
    /// The digest of one whole block of zeroes, made when first needed.
    private var zeroBlockDigest: [UInt8]?

    public init(algorithm: ChecksumAlgorithm, blockSize: Int) {
        self.algorithm = algorithm
        self.blockSize = blockSize
        outer = IncrementalHash(algorithm)
    }

    /// The digest of one block made of `slices`, in order.
    public static func digest(_ algorithm: ChecksumAlgorithm, of slices: [ByteBuffer]) -> [UInt8] {
        let hash = IncrementalHash(algorithm)
        for slice in slices { hash.update(slice) }
        return hash.finalize()
    }

    /// The digest of `count` zero bytes.
    public static func zeroDigest(_ algorithm: ChecksumAlgorithm, count: Int) -> [UInt8] {
        let zeroes = [UInt8](repeating: 0, count: min(count, 1 << 20))
        let hash = IncrementalHash(algorithm)
        var left = count
        while left > 0 {
            let piece = min(left, zeroes.count)
            zeroes.withUnsafeBytes { hash.update(UnsafeRawBufferPointer(rebasing: $0[0..<piece])) }
            left -= piece
        }
        return hash.finalize()
    }

    /// The digest a zero block of `count` bytes has (the whole-block one is kept).
    public func zeroDigest(count: Int) -> [UInt8] {
        guard count == blockSize else { return Self.zeroDigest(algorithm, count: count) }
        if let zeroBlockDigest { return zeroBlockDigest }
        let digest = Self.zeroDigest(algorithm, count: count)
        zeroBlockDigest = digest
        return digest
    }

    /// Adds the next block's digest.
    public func append(digest: [UInt8]) {
        outer.update(digest)
    }

    /// The checksum, in lowercase hex.
    public func finalize() -> String {
        let hex = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in outer.finalize() {
            text.append(hex[Int(byte >> 4)])
            text.append(hex[Int(byte & 15)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
