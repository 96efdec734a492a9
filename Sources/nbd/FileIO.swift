import Foundation
import NBDClient
import NBDProtocol
import NIOCore
import NIOPosix

/// Blocking file I/O runs on NIO's thread pool, never on the cooperative pool.
enum StandardStreams {
    static func writeOutput(_ text: String) { FileHandle.standardOutput.write(Data(text.utf8)) }
    static func writeError(_ text: String) { FileHandle.standardError.write(Data(text.utf8)) }

    static func writeJSON(_ value: some Encodable) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        var data = try encoder.encode(value)
        data.append(UInt8(ascii: "\n"))
        FileHandle.standardOutput.write(data)
    }
}

/// A file (or stdout) written from async code.
struct OutputFile: Sendable {
    let descriptor: Int32
    let ownsDescriptor: Bool

    static func open(_ path: String?) async throws -> OutputFile {
        guard let path, path != "-" else { return OutputFile(descriptor: 1, ownsDescriptor: false) }
        let descriptor = try await NIOThreadPool.singleton.runIfActive {
            let fd = Foundation.open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            guard fd >= 0 else { throw POSIXFailure(operation: "open \(path)") }
            return fd
        }
        return OutputFile(descriptor: descriptor, ownsDescriptor: true)
    }

    func write(_ buffer: ByteBuffer) async throws {
        let descriptor = self.descriptor
        try await NIOThreadPool.singleton.runIfActive {
            try buffer.withUnsafeReadableBytes { bytes in
                var done = 0
                while done < bytes.count {
                    guard let base = bytes.baseAddress else { return }
                    let written = Foundation.write(descriptor, base + done, bytes.count - done)
                    if written < 0 {
                        if errno == EINTR { continue }
                        throw POSIXFailure(operation: "write")
                    }
                    done += written
                }
            }
        }
    }

    func close() async throws {
        guard ownsDescriptor else { return }
        let descriptor = self.descriptor
        try await NIOThreadPool.singleton.runIfActive {
            guard Foundation.close(descriptor) == 0 else { throw POSIXFailure(operation: "close") }
        }
    }
}

/// A file (or stdin) read from async code.
struct InputFile: Sendable {
    let descriptor: Int32
    let ownsDescriptor: Bool
    /// The size, for regular files.
    let size: UInt64?

    static func open(_ path: String?) async throws -> InputFile {
        let (descriptor, owns) = try await NIOThreadPool.singleton.runIfActive { () throws -> (Int32, Bool) in
            guard let path, path != "-" else { return (0, false) }
            let fd = Foundation.open(path, O_RDONLY)
            guard fd >= 0 else { throw POSIXFailure(operation: "open \(path)") }
            return (fd, true)
        }
        var status = stat()
        let size: UInt64? = fstat(descriptor, &status) == 0 && (status.st_mode & S_IFMT) == S_IFREG ? UInt64(status.st_size) : nil
        return InputFile(descriptor: descriptor, ownsDescriptor: owns, size: size)
    }

    /// Up to `maximum` bytes (fewer only at the end), or nil at the end.
    func read(maximum: Int) async throws -> ByteBuffer? {
        let descriptor = self.descriptor
        return try await NIOThreadPool.singleton.runIfActive {
            var buffer = ByteBufferAllocator().buffer(capacity: maximum)
            while buffer.readableBytes < maximum {
                let wanted = maximum - buffer.readableBytes
                let count = try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { space in
                    guard let base = space.baseAddress else { return 0 }
                    while true {
                        let got = Foundation.read(descriptor, base, min(space.count, wanted))
                        if got < 0 && errno == EINTR { continue }
                        guard got >= 0 else { throw POSIXFailure(operation: "read") }
                        return got
                    }
                }
                if count == 0 { break }
            }
            return buffer.readableBytes > 0 ? buffer : nil
        }
    }

    func close() async throws {
        guard ownsDescriptor else { return }
        let descriptor = self.descriptor
        try await NIOThreadPool.singleton.runIfActive { _ = Foundation.close(descriptor) }
    }
}

/// A file or device read and written at offsets (pread, pwrite), from async code.
struct RandomAccessFile: Sendable {
    let path: String
    let descriptor: Int32
    /// The size when opened (0 for a file created for writing).
    let size: UInt64
    /// A regular file (holes read as zeroes, the size can change).
    let isRegular: Bool

    /// Opens `path` to read, or to write (created, and truncated if it is a regular file unless
    /// `keepingContents`).
    static func open(_ path: String, writing: Bool, keepingContents: Bool = false) async throws -> RandomAccessFile {
        try await NIOThreadPool.singleton.runIfActive {
            var status = stat()
            let exists = stat(path, &status) == 0
            let regular = !exists || (status.st_mode & S_IFMT) == S_IFREG
            // A device is written in place, never truncated.
            let flags = writing ? (O_RDWR | O_CREAT | (regular && !keepingContents ? O_TRUNC : 0)) : O_RDONLY
            let descriptor = Foundation.open(path, flags, 0o644)
            guard descriptor >= 0 else { throw POSIXFailure(operation: "open \(path)") }
            guard fstat(descriptor, &status) == 0 else {
                let failure = POSIXFailure(operation: "stat \(path)")
                _ = Foundation.close(descriptor)
                throw failure
            }
            let kind = status.st_mode & S_IFMT
            // A pipe or character device has no size to copy or checksum: refused, not read as empty.
            guard writing || kind == S_IFREG || kind == S_IFBLK else {
                _ = Foundation.close(descriptor)
                throw NBDError(.invalidArgument, "\(path) is not a regular file or block device")
            }
            var size = UInt64(status.st_size)
            if (status.st_mode & S_IFMT) == S_IFBLK {
                let end = lseek(descriptor, 0, SEEK_END)
                size = end > 0 ? UInt64(end) : 0
            }
            return RandomAccessFile(path: path, descriptor: descriptor, size: size, isRegular: (status.st_mode & S_IFMT) == S_IFREG)
        }
    }

    /// `length` bytes at `offset`, zeroes past the end.
    func read(at offset: UInt64, length: Int) async throws -> ByteBuffer {
        let descriptor = self.descriptor
        return try await NIOThreadPool.singleton.runIfActive {
            var buffer = ByteBufferAllocator().buffer(capacity: length)
            try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { space in
                guard let base = space.baseAddress else { return 0 }
                var done = 0
                while done < length {
                    let got = pread(descriptor, base + done, length - done, off_t(offset) + off_t(done))
                    if got < 0 && errno == EINTR { continue }
                    guard got >= 0 else { throw POSIXFailure(operation: "read") }
                    if got == 0 { break }
                    done += got
                }
                (base + done).initializeMemory(as: UInt8.self, repeating: 0, count: length - done)
                return length
            }
            return buffer
        }
    }

    /// Writes `buffers` one after the other from `offset`, with one pwritev for up to 1024 of
    /// them (a piece read from NBD arrives as many receive-buffer slices).
    func write(at offset: UInt64, _ buffers: [ByteBuffer]) async throws {
        let descriptor = self.descriptor
        try await NIOThreadPool.singleton.runIfActive {
            try Self.withIOVectors(buffers[...], []) { vectors in
                var vectors = vectors
                var first = 0
                var position = off_t(offset)
                while first < vectors.count {
                    let count = Int32(min(vectors.count - first, 1024))
                    let written = vectors.withUnsafeMutableBufferPointer { pointer -> Int in
                        guard let base = pointer.baseAddress else { return 0 }
                        return pwritev(descriptor, base + first, count, position)
                    }
                    if written < 0 && errno == EINTR { continue }
                    guard written > 0 else { throw POSIXFailure(operation: "write") }
                    position += off_t(written)
                    // Past the vectors written whole; the next one may be written in part.
                    var left = written
                    while first < vectors.count && left >= vectors[first].iov_len {
                        left -= vectors[first].iov_len
                        first += 1
                    }
                    if left > 0 {
                        vectors[first].iov_base = vectors[first].iov_base.map { $0 + left }
                        vectors[first].iov_len -= left
                    }
                }
            }
        }
    }

    /// Calls `body` with an iovec for each buffer's readable bytes, all of them pinned meanwhile.
    private static func withIOVectors(_ buffers: ArraySlice<ByteBuffer>, _ vectors: [iovec], _ body: ([iovec]) throws -> Void) throws {
        guard let buffer = buffers.first else { return try body(vectors) }
        try buffer.withUnsafeReadableBytes { bytes in
            var vectors = vectors
            if let base = bytes.baseAddress, bytes.count > 0 {
                vectors.append(iovec(iov_base: UnsafeMutableRawPointer(mutating: base), iov_len: bytes.count))
            }
            try withIOVectors(buffers.dropFirst(), vectors, body)
        }
    }

    /// Sets a regular file's size (the new part is a hole).
    func truncate(to size: UInt64) async throws {
        let descriptor = self.descriptor
        try await NIOThreadPool.singleton.runIfActive {
            guard ftruncate(descriptor, off_t(size)) == 0 else { throw POSIXFailure(operation: "truncate") }
        }
    }

    /// Linux's lseek whences for sparse files (Glibc exports them only under _GNU_SOURCE).
    private static let seekData: Int32 = 3
    private static let seekHole: Int32 = 4

    /// The holes of `offset..<offset+length` as zero extents (SEEK_HOLE/SEEK_DATA), data between.
    func extents(at offset: UInt64, length: UInt64) async throws -> [NBDExtent] {
        let descriptor = self.descriptor
        let regular = isRegular
        return try await NIOThreadPool.singleton.runIfActive {
            let end = offset + length
            // A device has no holes to ask about.
            guard regular else { return length > 0 ? [NBDExtent(offset: offset, length: length, flags: 0)] : [] }
            var extents: [NBDExtent] = []
            var position = offset
            while position < end {
                let data = lseek(descriptor, off_t(position), Self.seekData)
                // No data after position (ENXIO): a hole to the end. Any other failure (no
                // SEEK_DATA here): everything left is data, never assumed zero.
                if data < 0 && errno != ENXIO {
                    extents.append(NBDExtent(offset: position, length: end - position, flags: 0))
                    break
                }
                let dataStart = data < 0 ? end : min(end, UInt64(data))
                if dataStart > position {
                    extents.append(NBDExtent(offset: position, length: dataStart - position, flags: NBDAllocationFlags.hole | NBDAllocationFlags.zero))
                }
                guard dataStart < end else { break }
                let hole = lseek(descriptor, off_t(dataStart), Self.seekHole)
                let dataEnd = hole < 0 ? end : min(end, UInt64(hole))
                extents.append(NBDExtent(offset: dataStart, length: dataEnd - dataStart, flags: 0))
                position = dataEnd
            }
            return extents
        }
    }

    func close() async {
        let descriptor = self.descriptor
        _ = try? await NIOThreadPool.singleton.runIfActive { Foundation.close(descriptor) }
    }
}

struct POSIXFailure: Error, CustomStringConvertible {
    let operation: String
    let code = errno
    var description: String { "\(operation): \(String(cString: strerror(code)))" }
}

/// A one-line progress bar on stderr, shown only when stderr is a terminal.
final class ProgressBar: @unchecked Sendable {
    // Touched only from the command's own task, one call at a time.
    private let enabled: Bool
    private let total: UInt64?
    private var done: UInt64 = 0
    private var lastDrawn: UInt64 = 0
    private let started = Date()

    init(enabled: Bool, total: UInt64?) {
        self.enabled = enabled && isatty(2) == 1
        self.total = total
    }

    func advance(by count: UInt64) {
        done += count
        guard enabled, done - lastDrawn >= 1 << 20 || done == total else { return }
        lastDrawn = done
        draw()
    }

    func finish() {
        guard enabled else { return }
        draw()
        StandardStreams.writeError("\n")
    }

    private func draw() {
        let seconds = max(Date().timeIntervalSince(started), 0.001)
        let rate = Double(done) / seconds / 1_048_576
        let width = 30
        if let total, total > 0 {
            let fraction = min(1, Double(done) / Double(total))
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled)
            StandardStreams.writeError(String(format: "\r[%@] %3.0f%% %.1f MiB/s", bar, fraction * 100, rate))
        } else {
            StandardStreams.writeError(String(format: "\r%.1f MiB %.1f MiB/s", Double(done) / 1_048_576, rate))
        }
    }
}
