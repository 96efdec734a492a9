import NBDProtocol

/// Export metadata in the shape `nbd info --json` prints and the REST gateway serves
/// (field names follow `nbdinfo --json`, in snake_case).
public struct NBDExportMetadata: Codable, Hashable, Sendable {
    public struct BlockSize: Codable, Hashable, Sendable {
        public var minimum: UInt32
        public var preferred: UInt32
        public var maximum: UInt32
    }

    public var name: String
    public var description: String
    public var size: UInt64
    public var readOnly: Bool
    public var rotational: Bool
    public var canFlush: Bool
    public var canFua: Bool
    public var canTrim: Bool
    public var canZero: Bool
    public var canFastZero: Bool
    public var canDf: Bool
    public var canMultiConn: Bool
    public var canCache: Bool
    public var blockSize: BlockSize
    public var contexts: [String]
    public var structuredReplies: Bool

    enum CodingKeys: String, CodingKey {
        case name, description, size, rotational, contexts
        case readOnly = "read_only"
        case canFlush = "can_flush"
        case canFua = "can_fua"
        case canTrim = "can_trim"
        case canZero = "can_zero"
        case canFastZero = "can_fast_zero"
        case canDf = "can_df"
        case canMultiConn = "can_multi_conn"
        case canCache = "can_cache"
        case blockSize = "block_size"
        case structuredReplies = "structured_replies"
    }

    public init(_ info: NBDExportInfo) {
        name = info.name
        description = info.description
        size = info.size
        readOnly = info.isReadOnly
        rotational = info.isRotational
        canFlush = info.canFlush
        canFua = info.canFUA
        canTrim = info.canTrim
        canZero = info.canZero
        canFastZero = info.canFastZero
        canDf = info.canDF
        canMultiConn = info.canMultiConn
        canCache = info.canCache
        let sizes = info.blockSize
        blockSize = BlockSize(minimum: sizes.minimum, preferred: sizes.preferred, maximum: sizes.maximum)
        contexts = info.metaContexts.keys.sorted()
        structuredReplies = info.structuredReplies
    }
}
