import NBDChecksum
import NBDClient
import NBDProtocol
import NIOCore

/// A gateway export as one side of `nbd copy`: ranged GETs read, PUTs with `Content-Digest`
/// write, `/zero` zeroes, `/extents` maps and `/checksum` verifies without moving the bytes.
struct GatewayCopyEnd: CopyEnd {
    let gateway: GatewayClient
    let export: NBDExportMetadata
    /// The tag the disk had when the copy began: reads from it are `If-Match`ed, so a disk
    /// changed under the copy fails it (412) instead of giving a mix of two states.
    let sourceTag: String?

    static func open(_ location: String, writing: Bool, connections: Int, options: GatewayOptions) async throws -> GatewayCopyEnd {
        let gateway = try GatewayClient(location, options: options, connections: connections)
        do {
            let (export, tag) = try await gateway.metadata()
            if writing && export.readOnly {
                throw NBDError(.readOnly, "\(location) is read-only")
            }
            return GatewayCopyEnd(gateway: gateway, export: export, sourceTag: writing ? nil : tag)
        } catch {
            await gateway.shutdown()
            throw error
        }
    }

    var size: UInt64 { export.size }
    var capacity: UInt64? { export.size }
    var zeroesAreFree: Bool { false }
    var alignment: Int { Int(max(1, export.blockSize.minimum)) }

    func extents(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent] {
        guard length > 0 else { return [] }
        if context == NBDMetaContext.baseAllocation && !export.contexts.contains(context) { return [] }
        return try await gateway.extents(at: offset, length: length, context: context)
    }

    func read(at offset: UInt64, length: Int, lane: Int) async throws -> [ByteBuffer] {
        do {
            return try await gateway.read(at: offset, length: length, ifMatch: sourceTag)
        } catch let failure as GatewayFailure where failure.status == .preconditionFailed {
            throw NBDError(.invalidArgument, "the source changed during the copy (\(failure))")
        }
    }

    func prepare(size: UInt64) async throws {}

    /// Each read was `If-Match`ed, but a write admitted while the last read ran could still
    /// have slipped into it: the tag at the end must be the tag at the start.
    func confirmUnchanged() async throws {
        guard let sourceTag else { return }
        let (_, tag) = try await gateway.metadata()
        guard tag == sourceTag else {
            throw NBDError(.invalidArgument, "the source changed during the copy (its ETag went from \(sourceTag) to \(tag ?? "none"))")
        }
    }

    func write(at offset: UInt64, _ buffers: [ByteBuffer], lane: Int) async throws {
        try await gateway.write(at: offset, buffers)
    }

    /// `/zero` (WRITE_ZEROES behind it, fast first where offered); zero bytes when the export
    /// cannot zero.
    func zero(at offset: UInt64, length: UInt64, lane: Int) async throws {
        guard export.canZero else {
            return try await ZeroBytes.write(at: offset, length: length) { try await gateway.write(at: $0, [$1]) }
        }
        try await gateway.zero(at: offset, length: length, fast: export.canFastZero)
    }

    func finish(size: UInt64) async throws {
        if export.canFlush { try await gateway.flush() }
    }

    /// Computed by the gateway: only the 64-hex-digit answer crosses the network.
    func checksum(at offset: UInt64, length: UInt64) async throws -> String {
        try await gateway.checksum(offset: offset, length: length, algorithm: ChecksumAlgorithm.blake2b.rawValue, blockSize: ChecksumAlgorithm.defaultBlockSize).checksum
    }

    func close() async {
        await gateway.shutdown()
    }
}
