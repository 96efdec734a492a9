/// Block size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
public struct NBDBlockSize: Hashable, Sendable, CustomStringConvertible {
    /// Offsets and lengths must be multiples of this (a power of two, 1 ... 64 KiB).
    public var minimum: UInt32
    /// Requests should be multiples of this for efficiency.
    public var preferred: UInt32
    /// No READ or WRITE payload may exceed this.
    public var maximum: UInt32

    public init(minimum: UInt32, preferred: UInt32, maximum: UInt32) {
        self.minimum = minimum
        self.preferred = preferred
        self.maximum = maximum
    }

    /// What a client assumes when the server advertises nothing.
    public static let unadvertised = NBDBlockSize(minimum: 1, preferred: 512, maximum: NBDWire.defaultMaximumPayload)

    /// Whether the values obey the specification's rules.
    public var isValid: Bool {
        minimum >= 1 && minimum <= 65536 && minimum.nonzeroBitCount == 1
            && preferred >= max(minimum, 512) && preferred.nonzeroBitCount == 1
            && maximum >= preferred
    }

    public var description: String { "minimum \(minimum), preferred \(preferred), maximum \(maximum)" }
}

/// Everything negotiated for one export.
public struct NBDExportInfo: Hashable, Sendable {
    /// The export name that was asked for (the server may have reported a canonical one in `canonicalName`).
    public var name: String
    /// The export name the server reported (`NBD_INFO_NAME`), if any.
    public var canonicalName: String?
    /// The description the server reported (`NBD_INFO_DESCRIPTION`), or empty.
    public var description: String
    /// Export size in bytes.
    public var size: UInt64
    /// Per-export transmission flags.
    public var flags: NBDTransmissionFlags
    /// Block size constraints; `nil` when the server advertised none.
    public var advertisedBlockSize: NBDBlockSize?
    /// Whether structured replies were negotiated.
    public var structuredReplies: Bool
    /// Metadata contexts negotiated, by name, with the ids the server gave them.
    public var metaContexts: [String: UInt32]
    /// Every context the export offers, when the client asked (NBD_OPT_LIST_META_CONTEXT).
    public var availableMetaContexts: [String]

    public init(
        name: String,
        canonicalName: String? = nil,
        description: String = "",
        size: UInt64,
        flags: NBDTransmissionFlags,
        advertisedBlockSize: NBDBlockSize? = nil,
        structuredReplies: Bool = false,
        metaContexts: [String: UInt32] = [:],
        availableMetaContexts: [String] = []
    ) {
        self.name = name
        self.canonicalName = canonicalName
        self.description = description
        self.size = size
        self.flags = flags
        self.advertisedBlockSize = advertisedBlockSize
        self.structuredReplies = structuredReplies
        self.metaContexts = metaContexts
        self.availableMetaContexts = availableMetaContexts
    }

    /// The constraints the client honours: the advertised ones, or safe defaults.
    public var blockSize: NBDBlockSize {
        guard var size = advertisedBlockSize else { return .unadvertised }
        // Never send payloads larger than we are prepared to accept, whatever the server allows.
        size.maximum = min(size.maximum, NBDWire.defaultMaximumPayload)
        return size
    }

    public var isReadOnly: Bool { flags.contains(.readOnly) }
    public var isRotational: Bool { flags.contains(.rotational) }
    public var canFlush: Bool { flags.contains(.sendFlush) }
    public var canFUA: Bool { flags.contains(.sendFUA) }
    public var canTrim: Bool { flags.contains(.sendTrim) }
    public var canZero: Bool { flags.contains(.sendWriteZeroes) }
    public var canFastZero: Bool { flags.contains(.sendFastZero) }
    public var canDF: Bool { flags.contains(.sendDF) }
    public var canMultiConn: Bool { flags.contains(.canMultiConn) }
    public var canCache: Bool { flags.contains(.sendCache) }
    /// Whether `base:allocation` block status can be queried.
    public var canBlockStatus: Bool { metaContexts[NBDMetaContext.baseAllocation] != nil }
}

/// Well-known metadata context names.
public enum NBDMetaContext {
    public static let baseAllocation = "base:allocation"
}

/// One export as listed by `NBD_OPT_LIST`.
public struct NBDExportListing: Hashable, Sendable {
    public var name: String
    public var description: String
    public init(name: String, description: String) {
        self.name = name
        self.description = description
    }
}
