import NBDClient
@testable import NBDGateway
import NIOCore
import Synchronization

/// An in-memory disk with the NBD commands the routes send, and failures to inject: the
/// routes' double for tests that need no socket and no server.
final class MemoryDisk: NBDBlockDevice {
    enum Command: Hashable, Sendable { case read, write, flush, trim, zero, blockStatus }

    let info: NBDExportInfo
    private let state: Mutex<(bytes: [UInt8], failures: [Command: NBDError])>

    init(name: String = "disk", size: Int = 1 << 20, flags: NBDTransmissionFlags = [.hasFlags, .sendFlush, .sendFUA, .sendTrim, .sendWriteZeroes, .sendFastZero]) {
        info = NBDExportInfo(name: name, description: "memory", size: UInt64(size), flags: flags, structuredReplies: true, metaContexts: ["base:allocation": 1])
        state = Mutex(([UInt8](repeating: 0, count: size), [:]))
    }

    /// Makes every later `command` fail with `error` (nil: succeed again).
    func fail(_ command: Command, with error: NBDError?) { state.withLock { $0.failures[command] = error } }

    func bytes(_ range: Range<Int>) -> [UInt8] { state.withLock { Array($0.bytes[range]) } }

    private func check(_ command: Command) throws {
        if let error = state.withLock({ $0.failures[command] }) { throw error }
    }

    /// While held, reads wait (each announces itself on `heldReads`) until `releaseReads()`.
    private let gate = Mutex<(holding: Bool, waiting: [CheckedContinuation<Void, Never>])>((false, []))
    let (heldReads, heldRead) = AsyncStream.makeStream(of: Void.self)

    func holdReads() { gate.withLock { $0.holding = true } }

    func releaseReads() {
        let waiting = gate.withLock { gate in
            gate.holding = false
            defer { gate.waiting = [] }
            return gate.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    func read(at offset: UInt64, length: Int) async throws -> ByteBuffer {
        try check(.read)
        await withCheckedContinuation { continuation in
            let wait = gate.withLock { gate in
                if gate.holding { gate.waiting.append(continuation) }
                return gate.holding
            }
            if wait { heldRead.yield() } else { continuation.resume() }
        }
        return ByteBuffer(bytes: bytes(Int(offset)..<(Int(offset) + length)))
    }

    /// The range in slices of at most 64 KiB, as an NBD read arrives across receive buffers.
    func readSlices(at offset: UInt64, length: Int) async throws -> [ByteBuffer] {
        let whole = try await read(at: offset, length: length)
        return stride(from: 0, to: length, by: 64 << 10).compactMap { whole.getSlice(at: $0, length: min(64 << 10, length - $0)) }
    }

    func readStream(at offset: UInt64, length: UInt64, chunkSize: Int, window: Int, consume: (ByteBuffer) async throws -> Void) async throws {
        var position = offset
        while position < offset + length {
            let count = Int(min(UInt64(chunkSize), offset + length - position))
            try await consume(try await read(at: position, length: count))
            position += UInt64(count)
        }
    }

    func write(at offset: UInt64, _ buffer: ByteBuffer, fua: Bool) async throws {
        try check(.write)
        state.withLock { $0.bytes.replaceSubrange(Int(offset)..<(Int(offset) + buffer.readableBytes), with: buffer.readableBytesView) }
    }

    func flush() async throws { try check(.flush) }

    func trim(at offset: UInt64, length: UInt64, fua: Bool) async throws {
        try check(.trim)
        state.withLock { $0.bytes.replaceSubrange(Int(offset)..<Int(offset + length), with: repeatElement(0, count: Int(length))) }
    }

    func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool, fastZero: Bool, noHole: Bool) async throws {
        try check(.zero)
        state.withLock { $0.bytes.replaceSubrange(Int(offset)..<Int(offset + length), with: repeatElement(0, count: Int(length))) }
    }

    func blockStatus(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent] {
        guard context == NBDMetaContext.baseAllocation else { throw NBDError(.unimplemented, "only base:allocation") }
        return try await blockStatus(at: offset, length: length)
    }

    /// 64 KiB blocks: data where any byte is set, hole and zero elsewhere; equal neighbours merged.
    func blockStatus(at offset: UInt64, length: UInt64) async throws -> [NBDExtent] {
        try check(.blockStatus)
        let bytes = state.withLock { $0.bytes }
        var extents: [NBDExtent] = []
        var position = offset
        while position < offset + length {
            let end = min((position / 65536 + 1) * 65536, offset + length)
            let flags: UInt32 = bytes[Int(position)..<Int(end)].contains { $0 != 0 } ? 0 : 3
            if let last = extents.last, last.flags == flags {
                extents[extents.count - 1].length += end - position
            } else {
                extents.append(NBDExtent(offset: position, length: end - position, flags: flags))
            }
            position = end
        }
        return extents
    }
}

/// An export backed by a `MemoryDisk`.
final class MemoryExport: ExportHandle {
    let version = ContentVersion()
    let name: String
    let disk: MemoryDisk
    init(name: String, disk: MemoryDisk) {
        self.name = name
        self.disk = disk
    }

    var cachedInfo: NBDExportInfo? { disk.info }
    var liveInfo: NBDExportInfo? { disk.info }
    var streamLoad: Int { 16 }
    func info() async throws -> NBDExportInfo { disk.info }
    func withClient<T: Sendable>(load: Int, _ body: (MemoryDisk) async throws -> T) async throws -> T { try await body(disk) }
    func countRead(_ bytes: Int) {}
    func countWritten(_ bytes: Int) {}
}

/// A catalog of memory exports; `unreachable` names exports whose backend cannot be reached.
final class MemoryCatalog: ExportDirectory {
    let exports: [String: MemoryExport]
    let unreachable: Set<String>

    init(_ disks: [String: MemoryDisk], unreachable: Set<String> = []) {
        exports = Dictionary(uniqueKeysWithValues: disks.map { ($0.key, MemoryExport(name: $0.key, disk: $0.value)) })
        self.unreachable = unreachable
    }

    func cachedPool(for name: String) -> MemoryExport? { exports[name] }

    func pool(for name: String) async throws(NBDError) -> MemoryExport {
        if unreachable.contains(name) {
            throw NBDError(.connectionFailed, "cannot connect to nbd://backend/\(name): connection refused", exportName: name)
        }
        guard let export = exports[name] else { throw NBDError(.unknownExport, "no export named \"\(name)\"", exportName: name) }
        return export
    }

    func list() async throws(NBDError) -> [NBDExportListing] {
        exports.keys.sorted().map { NBDExportListing(name: $0, description: "memory") }
    }

    func readiness() async -> [(uri: NBDURI, ready: Bool)] { [] }
}
