import NIOCore

/// Several buffers seen as one run of bytes, sliced without copying.
struct NBDBufferChain {
    private var buffers: [ByteBuffer]
    private var starts: [Int]
    let count: Int

    init(_ buffers: [ByteBuffer]) {
        self.buffers = buffers.filter { $0.readableBytes > 0 }
        var starts: [Int] = []
        var total = 0
        for buffer in self.buffers {
            starts.append(total)
            total += buffer.readableBytes
        }
        self.starts = starts
        self.count = total
    }

    /// The bytes `start..<start+length` as slices of the original buffers.
    func slice(from start: Int, length: Int) -> [ByteBuffer] {
        var pieces: [ByteBuffer] = []
        let end = start + length
        for (index, buffer) in buffers.enumerated() {
            let bufferStart = starts[index]
            let bufferEnd = bufferStart + buffer.readableBytes
            guard bufferEnd > start, bufferStart < end else { continue }
            let from = max(start, bufferStart) - bufferStart
            let to = min(end, bufferEnd) - bufferStart
            if let piece = buffer.getSlice(at: buffer.readerIndex + from, length: to - from) {
                pieces.append(piece)
            }
        }
        return pieces
    }
}
