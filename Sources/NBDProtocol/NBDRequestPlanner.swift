/// Pure arithmetic for turning a byte range into protocol-legal requests: bounds checks,
/// widening to the minimum block, and splitting at the maximum payload.
public struct NBDRequestPlanner: Hashable, Sendable {
    public var exportSize: UInt64
    public var blockSize: NBDBlockSize

    public init(exportSize: UInt64, blockSize: NBDBlockSize) {
        self.exportSize = exportSize
        self.blockSize = blockSize
    }

    /// Checks that `offset..<offset+length` is non-empty and inside the export.
    public func checkBounds(offset: UInt64, length: UInt64) throws(NBDError) {
        guard length > 0 else { throw NBDError(.invalidArgument, "zero-length request") }
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow, end <= exportSize else {
            throw NBDError(.outOfBounds, "range \(offset)+\(length) passes the end of the export (size \(exportSize))")
        }
    }

    /// The range widened to whole minimum blocks (never past the export's end).
    public func aligned(offset: UInt64, length: UInt64) -> Range<UInt64> {
        let minimum = UInt64(blockSize.minimum)
        let start = offset / minimum * minimum
        // Rounded up without overflow: ranges near UInt64.max must not trap.
        let (sum, overflow) = offset.addingReportingOverflow(length)
        let last = overflow ? UInt64.max : sum
        var roundedUp = last
        if last % minimum != 0 {
            let (product, productOverflow) = (last / minimum + 1).multipliedReportingOverflow(by: minimum)
            roundedUp = productOverflow ? UInt64.max : product
        }
        let end = min(roundedUp, exportSize)
        return start..<end
    }

    /// The whole minimum blocks inside the range (the export's last, partial block counts as
    /// whole when the range reaches the export's end), or nil if there are none. For commands
    /// that may only touch whole blocks, such as TRIM. Expects a range inside the export.
    public func innerAligned(offset: UInt64, length: UInt64) -> Range<UInt64>? {
        let minimum = UInt64(blockSize.minimum)
        let (end, overflow) = offset.addingReportingOverflow(length)
        guard !overflow else { return nil }
        var start = offset
        if offset % minimum != 0 {
            let (next, pastMax) = (offset / minimum * minimum).addingReportingOverflow(minimum)
            guard !pastMax else { return nil }
            start = next
        }
        let alignedEnd = end == exportSize ? exportSize : end / minimum * minimum
        return start < alignedEnd ? start..<alignedEnd : nil
    }

    /// Whether the range already lies on minimum-block boundaries (or ends at the export's end).
    public func isAligned(offset: UInt64, length: UInt64) -> Bool {
        aligned(offset: offset, length: length) == offset..<(offset + length)
    }

    /// Splits an aligned range into pieces no larger than `limit` bytes (rounded down to the
    /// minimum block), for commands whose length is a payload size.
    public func split(_ range: Range<UInt64>, limit: UInt32? = nil) -> [Range<UInt64>] {
        let minimum = UInt64(blockSize.minimum)
        let cap = UInt64(limit ?? blockSize.maximum)
        let step = max(cap / minimum * minimum, minimum)
        var pieces: [Range<UInt64>] = []
        pieces.reserveCapacity(Int((UInt64(range.count) + step - 1) / step))
        var start = range.lowerBound
        while start < range.upperBound {
            let end = range.upperBound - start > step ? start + step : range.upperBound
            pieces.append(start..<end)
            start = end
        }
        return pieces
    }
}
