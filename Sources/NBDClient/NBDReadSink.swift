import NBDProtocol
import NIOCore

/// Where a READ's bytes land: one sink per user read, shared by the requests it was split into.
///
/// Confined to the channel's event loop while requests are in flight; the reader looks at it
/// only after every request completed (the futures give the happens-before edge).
final class NBDReadSink: @unchecked Sendable {
    private enum Storage {
        /// Nothing written yet: the first slice may be adopted without copying.
        case empty
        /// A buffer of `length` bytes being filled in place.
        case buffer(ByteBuffer)
        /// Caller-owned memory, one or more regions laid end to end.
        case regions([UnsafeMutableRawBufferPointer])
        /// The received bytes kept as they arrived (slices of the receive buffers), no copy.
        case slices([(offset: UInt64, bytes: ByteBuffer)])
    }

    /// Export offset of the first destination byte.
    let baseOffset: UInt64
    let length: Int
    private var storage: Storage

    /// A sink producing a `ByteBuffer`.
    init(baseOffset: UInt64, length: Int) {
        self.baseOffset = baseOffset
        self.length = length
        self.storage = .empty
    }

    /// A sink keeping the received slices themselves (see `takeSlices`).
    init(baseOffset: UInt64, slicesOfLength length: Int) {
        self.baseOffset = baseOffset
        self.length = length
        self.storage = .slices([])
    }

    /// A sink writing into caller-owned memory (the caller keeps it alive until the read returns).
    init(baseOffset: UInt64, regions: [UnsafeMutableRawBufferPointer]) {
        self.baseOffset = baseOffset
        self.length = regions.reduce(0) { $0 + $1.count }
        self.storage = .regions(regions)
    }

    /// Copies `bytes` to the destination at export offset `offset` (the decoder checked bounds).
    func write(_ bytes: ByteBuffer, at offset: UInt64) {
        let position = Int(offset - baseOffset)
        switch storage {
        case .empty:
            if position == 0 && bytes.readableBytes == length {
                storage = .buffer(bytes)  // The whole read arrived in one slice: no copy.
                return
            }
            var buffer = ByteBufferAllocator().buffer(capacity: length)
            buffer.moveWriterIndex(to: length)
            buffer.setBuffer(bytes, at: position)
            storage = .buffer(buffer)
        case .buffer(var buffer):
            storage = .empty  // Drop our reference so the write below does not copy on write.
            buffer.setBuffer(bytes, at: position)
            storage = .buffer(buffer)
        case .regions(let regions):
            bytes.withUnsafeReadableBytes { source in
                Self.copy(source, into: regions, at: position)
            }
        case .slices(var slices):
            storage = .empty
            slices.append((offset, bytes))
            storage = .slices(slices)
        }
    }

    /// Fills `length` bytes at export offset `offset` with zeroes (a hole).
    func zero(at offset: UInt64, length count: Int) {
        let position = Int(offset - baseOffset)
        switch storage {
        case .empty:
            var buffer = ByteBufferAllocator().buffer(capacity: length)
            buffer.moveWriterIndex(to: length)
            storage = .buffer(buffer)
            zero(at: offset, length: count)
        case .buffer(var buffer):
            storage = .empty
            buffer.withUnsafeMutableReadableBytes { bytes in
                _ = bytes[position..<(position + count)].initializeMemory(as: UInt8.self, repeating: 0)
            }
            storage = .buffer(buffer)
        case .slices(var slices):
            storage = .empty
            slices.append((offset, ByteBuffer(repeating: 0, count: count)))
            storage = .slices(slices)
        case .regions(let regions):
            let zeroes = [UInt8](repeating: 0, count: min(count, 1 << 20))
            var done = 0
            while done < count {
                let step = min(zeroes.count, count - done)
                zeroes.withUnsafeBytes { source in
                    Self.copy(UnsafeRawBufferPointer(rebasing: source[0..<step]), into: regions, at: position + done)
                }
                done += step
            }
        }
    }

    /// The bytes read (only for ByteBuffer sinks, after every request succeeded).
    func takeBuffer() -> ByteBuffer {
        switch storage {
        case .buffer(let buffer):
            return buffer
        case .empty, .regions, .slices:
            return ByteBuffer()
        }
    }

    /// The received slices in export order, cut to `range` (only for slice sinks, after every
    /// request succeeded, which proves they cover the sink's range without overlap).
    func takeSlices(cutTo range: Range<UInt64>) -> [ByteBuffer] {
        guard case .slices(let slices) = storage else { return [] }
        var result: [ByteBuffer] = []
        result.reserveCapacity(slices.count)
        for (offset, bytes) in slices.sorted(by: { $0.offset < $1.offset }) {
            let end = offset + UInt64(bytes.readableBytes)
            let from = max(offset, range.lowerBound)
            let to = min(end, range.upperBound)
            guard from < to, let piece = bytes.getSlice(at: bytes.readerIndex + Int(from - offset), length: Int(to - from)) else { continue }
            result.append(piece)
        }
        return result
    }

    private static func copy(_ source: UnsafeRawBufferPointer, into regions: [UnsafeMutableRawBufferPointer], at position: Int) {
        var regionStart = 0
        var copied = 0
        for region in regions {
            let regionEnd = regionStart + region.count
            let target = position + copied
            if copied < source.count && target < regionEnd && target >= regionStart {
                let count = min(regionEnd - target, source.count - copied)
                guard let destination = region.baseAddress, let from = source.baseAddress else { return }
                (destination + (target - regionStart)).copyMemory(from: from + copied, byteCount: count)
                copied += count
            }
            regionStart = regionEnd
        }
    }
}
