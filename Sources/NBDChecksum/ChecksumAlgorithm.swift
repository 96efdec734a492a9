/// The digests block checksums are made of, as ovirt-imageio names them.
public enum ChecksumAlgorithm: String, CaseIterable, Sendable {
    /// BLAKE2b with a 32-byte digest (imageio's default), from libsodium.
    case blake2b
    case sha256
    case sha1

    /// Bytes of one digest.
    public var digestSize: Int {
        switch self {
        case .blake2b, .sha256: 32
        case .sha1: 20
        }
    }

    /// imageio's defaults: BLAKE2b-256 over 4 MiB blocks.
    public static let defaultAlgorithm = ChecksumAlgorithm.blake2b
    public static let defaultBlockSize = 4 << 20
    /// Block sizes accepted: multiples of 4 KiB from 4 KiB to 64 MiB (a block is read whole).
    /// Most blocks one checksum plans (the plan is kept in memory): 16M blocks, 4 TiB at 256 KiB.
    public static let maximumBlocks: UInt64 = 1 << 24

    public static func isValidBlockSize(_ size: Int) -> Bool {
        size >= 4096 && size <= 64 << 20 && size % 4096 == 0
    }
}
