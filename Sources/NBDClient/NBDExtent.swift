import NBDProtocol

/// One extent of the `base:allocation` map.
public struct NBDExtent: Hashable, Sendable {
    public var offset: UInt64
    public var length: UInt64
    /// The raw context flags.
    public var flags: UInt32

    public init(offset: UInt64, length: UInt64, flags: UInt32) {
        self.offset = offset
        self.length = length
        self.flags = flags
    }

    /// Unallocated: reads may return zeroes without the server storing anything.
    public var isHole: Bool { flags & NBDAllocationFlags.hole != 0 }
    /// Reads as zeroes.
    public var isZero: Bool { flags & NBDAllocationFlags.zero != 0 }
}
