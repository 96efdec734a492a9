/// One extent of the `base:allocation` map.
public struct NBDExtent: Hashable, Sendable {
    /// Export offset of the extent's first byte.
    public var offset: UInt64
    /// Length in bytes.
    public var length: UInt64
    /// The raw context flags.
    public var flags: UInt32

    /// An extent of `length` bytes at `offset` with the context's `flags`.
    public init(offset: UInt64, length: UInt64, flags: UInt32) {
        self.offset = offset
        self.length = length
        self.flags = flags
    }

    /// Unallocated: reads may return zeroes without the server storing anything.
    public var isHole: Bool { flags & NBDAllocationFlags.hole != 0 }
    /// Reads as zeroes.
    public var isZero: Bool { flags & NBDAllocationFlags.zero != 0 }

    /// Lays a block status reply's descriptors end to end from `start`, stopping at `end`
    /// (the last extent is cut there; empty descriptors are skipped).
    public static func extents(from descriptors: [NBDBlockDescriptor], at start: UInt64, upTo end: UInt64) -> [NBDExtent] {
        var extents: [NBDExtent] = []
        var position = start
        for descriptor in descriptors where descriptor.length > 0 && position < end {
            let extentEnd = min(position + UInt64(descriptor.length), end)
            extents.append(NBDExtent(offset: position, length: extentEnd - position, flags: descriptor.flags))
            position = extentEnd
        }
        return extents
    }

    /// Joins neighbours that touch and have the same flags.
    public static func merged(_ extents: [NBDExtent]) -> [NBDExtent] {
        var merged: [NBDExtent] = []
        for extent in extents {
            if let last = merged.last, last.flags == extent.flags, last.offset + last.length == extent.offset {
                merged[merged.count - 1].length += extent.length
            } else {
                merged.append(extent)
            }
        }
        return merged
    }

    /// Cuts the extents to `range`, dropping those outside it.
    public static func clipped(_ extents: [NBDExtent], to range: Range<UInt64>) -> [NBDExtent] {
        extents.compactMap { extent in
            let start = max(extent.offset, range.lowerBound)
            let end = min(extent.offset + extent.length, range.upperBound)
            return start < end ? NBDExtent(offset: start, length: end - start, flags: extent.flags) : nil
        }
    }
}
