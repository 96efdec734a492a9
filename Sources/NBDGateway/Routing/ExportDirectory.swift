import NBDClient
import NIOCore

/// The NBD commands the routes send on an export's connection. `NBDClient` is the real one;
/// tests run the routes in process against an in-memory disk.
public protocol NBDBlockDevice: Sendable {
    /// What the connection negotiated.
    var info: NBDExportInfo { get }
    func read(at offset: UInt64, length: Int) async throws -> ByteBuffer
    /// Reads a range as the slices it arrived in, in order (no copy into one buffer).
    func readSlices(at offset: UInt64, length: Int) async throws -> [ByteBuffer]
    /// Reads a range in order, `chunkSize` at a time with `window` reads in flight.
    func readStream(at offset: UInt64, length: UInt64, chunkSize: Int, window: Int, consume: (ByteBuffer) async throws -> Void) async throws
    func write(at offset: UInt64, _ buffer: ByteBuffer, fua: Bool) async throws
    func flush() async throws
    func trim(at offset: UInt64, length: UInt64, fua: Bool) async throws
    func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool, fastZero: Bool, noHole: Bool) async throws
    func blockStatus(at offset: UInt64, length: UInt64) async throws -> [NBDExtent]
    /// The map in a negotiated metadata context, with that context's flags.
    func blockStatus(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent]
}

extension NBDClient: NBDBlockDevice {
    /// The gateway retries around the whole stream (`NBDReadRetry` in the routes), never per chunk.
    public func readStream(at offset: UInt64, length: UInt64, chunkSize: Int, window: Int, consume: (ByteBuffer) async throws -> Void) async throws {
        try await readStream(at: offset, length: length, chunkSize: chunkSize, window: window, retry: .none, consume: consume)
    }
}

/// One export as the routes use it: what it negotiated, and connections to run commands on.
/// `ExportPool` is the real one.
public protocol ExportHandle: Sendable {
    associatedtype Device: NBDBlockDevice
    /// The name the gateway serves it under.
    var name: String { get }
    /// The export info if a connection has negotiated already (it may have closed since).
    var cachedInfo: NBDExportInfo? { get }
    /// The export info if a negotiated connection is open now.
    var liveInfo: NBDExportInfo? { get }
    /// What a streaming read counts for against a connection's load.
    var streamLoad: Int { get }
    /// What the connections negotiated (opening one if none is open).
    func info() async throws -> NBDExportInfo
    /// Runs `body` with a connection; `load` is what it counts for.
    func withClient<T: Sendable>(load: Int, _ body: (Device) async throws -> T) async throws -> T
    func countRead(_ bytes: Int)
    func countWritten(_ bytes: Int)
    /// The content generation behind the export's ETags.
    var version: ContentVersion { get }
    /// The export's part of its ETags (`EntityTags.identity(name)`, kept: a hash per request shows in profiles).
    var tagIdentity: String { get }
}

extension ExportHandle {
    public var tagIdentity: String { EntityTags.identity(name) }

    /// Runs `body` with a connection, counting as one request.
    public func withClient<T: Sendable>(_ body: (Device) async throws -> T) async throws -> T {
        try await withClient(load: 1, body)
    }
}

/// Which exports exist and where: the routes' view of the catalog. `ExportCatalog` is the real one.
public protocol ExportDirectory: Sendable {
    associatedtype Export: ExportHandle
    /// The export's handle if it was opened before, without waiting.
    func cachedPool(for name: String) -> Export?
    /// The export's handle, or why there is none (`.unknownExport`, a backend's failure).
    func pool(for name: String) async throws(NBDError) -> Export
    /// Every export served (NBD_OPT_LIST on the backends).
    func list() async throws(NBDError) -> [NBDExportListing]
    /// Each backend and whether it answers.
    func readiness() async -> [(uri: NBDURI, ready: Bool)]
}

extension ExportPool: ExportHandle {}
extension ExportCatalog: ExportDirectory {}

extension NBDBlockDevice {
    /// WRITE_ZEROES that may leave holes.
    public func writeZeroes(at offset: UInt64, length: UInt64, fua: Bool, fastZero: Bool) async throws {
        try await writeZeroes(at: offset, length: length, fua: fua, fastZero: fastZero, noHole: false)
    }
}
