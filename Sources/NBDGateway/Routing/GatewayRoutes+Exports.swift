import NBDClient
import NIOCore

extension GatewayRoutes {
    func listExports(_ request: GatewayRequest, visibleTo grant: AccessGrant?) async throws(GatewayError) -> GatewayResponse {
        var exports: [NBDExportListing]
        do {
            exports = try await catalog.list()
        } catch {
            throw GatewayError(error, export: nil)
        }
        if let grant { exports.removeAll { !grant.exports.contains($0.name) } }
        let body = JSON.Value.object([
            ("exports", .array(exports.map { .object([("name", .string($0.name)), ("description", .string($0.description))]) })),
        ])
        return .json(200, body.rendered)
    }

    func readiness(_ request: GatewayRequest) async throws(GatewayError) -> GatewayResponse {
        let results = await catalog.readiness()
        let down = results.filter { !$0.ready }
        guard down.isEmpty else {
            throw .unavailable("backend unreachable: \(down.map { "\($0.uri)" }.joined(separator: ", "))", code: "not_ready")
        }
        return .json(200, #"{"status":"ready"}"#)
    }

    /// The export's metadata, with the data's ETag (`If-None-Match` with it → 304).
    func metadata(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        let (pool, info, name) = try await open(route)
        let tag = etag(pool, name)
        if let condition = request.header("If-None-Match"), EntityTags.list(condition, contains: tag, weak: true) {
            return GatewayResponse(status: 304, headers: [("ETag", tag)], body: .bytes(ByteBuffer()))
        }
        return .json(200, Self.metadataJSON(info, name: name).rendered, headers: [("ETag", tag)])
    }

    static func blockSizeJSON(_ info: NBDExportInfo) -> JSON.Value {
        let sizes = info.blockSize
        return .object([("minimum", .int(UInt64(sizes.minimum))), ("preferred", .int(UInt64(sizes.preferred))), ("maximum", .int(UInt64(sizes.maximum)))])
    }

    /// The `ExportInfo` object (the same fields as `nbd info --json`).
    static func metadataJSON(_ info: NBDExportInfo, name: String) -> JSON.Value {
        let metadata = NBDExportMetadata(info)
        return .object([
            ("name", .string(name)),
            ("description", .string(metadata.description)),
            ("size", .int(metadata.size)),
            ("read_only", .bool(metadata.readOnly)),
            ("rotational", .bool(metadata.rotational)),
            ("can_flush", .bool(metadata.canFlush)),
            ("can_fua", .bool(metadata.canFua)),
            ("can_trim", .bool(metadata.canTrim)),
            ("can_zero", .bool(metadata.canZero)),
            ("can_fast_zero", .bool(metadata.canFastZero)),
            ("can_df", .bool(metadata.canDf)),
            ("can_multi_conn", .bool(metadata.canMultiConn)),
            ("can_cache", .bool(metadata.canCache)),
            ("block_size", blockSizeJSON(info)),
            ("contexts", .array(metadata.contexts.map { .string($0) })),
            // Everything the export offers (NBD_OPT_LIST_META_CONTEXT); `contexts` is what was negotiated.
            ("available_contexts", .array((info.availableMetaContexts.isEmpty ? metadata.contexts : info.availableMetaContexts).map { .string($0) })),
            ("structured_replies", .bool(metadata.structuredReplies)),
            // Replicas each hold their own connections: only CAN_MULTI_CONN (with the flush
            // before acknowledging) makes one replica's writes visible through another.
            ("consistent_across_gateways", .bool(metadata.canMultiConn)),
        ])
    }

    /// The answer to a write, zero, trim or flush; a write with `Content-Digest` echoes the
    /// digest its body matched.
    static func operationJSON(_ operation: String, offset: UInt64, length: UInt64, contentDigest: ContentDigest? = nil) -> String {
        var fields: [(String, JSON.Value)] = [("operation", .string(operation)), ("offset", .int(offset)), ("length", .int(length))]
        if let contentDigest { fields.append(("content_digest", .string(contentDigest.headerValue))) }
        return JSON.Value.object(fields).rendered
    }
}
