import NBDClient
import NIOCore

extension GatewayRoutes {
    func dataOptions(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        let (_, info, _) = try await open(route)
        let writable = !(settings.readOnly || info.isReadOnly)
        var operations: [JSON.Value] = [.string("read")]
        if writable { operations.append(.string("write")) }
        if writable && info.canZero { operations.append(.string("zero")) }
        if writable && info.canTrim { operations.append(.string("trim")) }
        if info.canFlush { operations.append(.string("flush")) }
        if info.canBlockStatus { operations.append(.string("extents")) }
        let body = JSON.Value.object([
            ("operations", .array(operations)),
            ("size", .int(info.size)),
            ("block_size", Self.blockSizeJSON(info)),
            ("can_multi_conn", .bool(info.canMultiConn)),
        ])
        return .json(200, body.rendered, headers: [("Allow", route.allowed.joined(separator: ", "))])
    }

    func head(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        let (pool, info, name) = try await open(route)
        let tag = etag(pool, name)
        if let answer = try readPreconditions(request, tag: tag, export: name) { return answer }
        return GatewayResponse(status: 200, headers: Self.dataHeaders + [("ETag", tag)], headLength: info.size)
    }

    /// `If-Match` (412 unless it names the current tag) and `If-None-Match` (304 while it does)
    /// on a read, RFC 9110 §13.2.2's order; nil: answer as usual.
    func readPreconditions(_ request: GatewayRequest, tag: String, export: String) throws(GatewayError) -> GatewayResponse? {
        if let condition = request.header("If-Match"), !EntityTags.list(condition, contains: tag) {
            throw .preconditionFailed("If-Match \(condition) does not name the current ETag \(tag)", export: export)
        }
        if let condition = request.header("If-None-Match"), EntityTags.list(condition, contains: tag, weak: true) {
            return GatewayResponse(status: 304, headers: [("ETag", tag)], body: .bytes(ByteBuffer()))
        }
        return nil
    }

    /// Ranges up to this size are read whole, then sent from the receive buffers they arrived
    /// in (no copy, no streaming machinery), instead of streamed. 1 MiB is what `nbd copy` asks
    /// for; a stream would hold about as much (its high-water mark and its response block).
    static var inlineBodyLimit: Int { 1 << 20 }

    static var dataHeaders: [(name: String, value: String)] { [("Accept-Ranges", "bytes"), ("Content-Type", "application/octet-stream")] }

    func get(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        let (pool, info, name) = try await open(route)
        let size = info.size
        // Taken before reading: a write during the read makes it stale at once.
        let tag = etag(pool, name)
        if let answer = try readPreconditions(request, tag: tag, export: name) { return answer }
        let dataHeaders = Self.dataHeaders + [("ETag", tag)]
        // If-Range (RFC 9110 §13.1.5): the range only while the tag is current; a date or a
        // stale tag gets the whole body.
        let ranges = request.header("If-Range").map { $0 == tag } ?? true ? request.header("Range") : nil
        switch ByteRanges.select(ranges, size: size) {
        case .whole:
            guard size > 0 else { return GatewayResponse(status: 200, headers: dataHeaders, body: .bytes(ByteBuffer())) }
            return GatewayResponse(status: 200, headers: dataHeaders, body: .stream(length: size, stream(pool, [(0...(size - 1), nil)])))
        case .single(let range):
            let headers = dataHeaders + [("Content-Range", "bytes \(range.lowerBound)-\(range.upperBound)/\(size)")]
            if range.count <= Self.inlineBodyLimit {
                // Small ranges are read before answering: one round trip, and errors keep their status.
                let slices = try await withReadRetries(pool, info) { try await $0.readSlices(at: range.lowerBound, length: range.count) }
                pool.countRead(range.count)
                return GatewayResponse(status: 206, headers: headers, body: .slices(slices))
            }
            return GatewayResponse(status: 206, headers: headers, body: .stream(length: UInt64(range.count), stream(pool, [(range, nil)])))
        case .multiple(let ranges):
            let boundary = Self.makeBoundary()
            var parts: [(ClosedRange<UInt64>, ByteBuffer?)] = []
            var length: UInt64 = 0
            for range in ranges {
                let header = ByteBuffer(string: "\r\n--\(boundary)\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes \(range.lowerBound)-\(range.upperBound)/\(size)\r\n\r\n")
                length += UInt64(header.readableBytes) + UInt64(range.count)
                parts.append((range, header))
            }
            let trailer = ByteBuffer(string: "\r\n--\(boundary)--\r\n")
            length += UInt64(trailer.readableBytes)
            let headers: [(name: String, value: String)] = [("Accept-Ranges", "bytes"), ("Content-Type", "multipart/byteranges; boundary=\(boundary)"), ("ETag", tag)]
            return GatewayResponse(status: 206, headers: headers, body: .stream(length: length, stream(pool, parts, trailer: trailer)))
        case .unsatisfiable:
            throw .unsatisfiable("no requested range is inside the export (size \(size))", size: size, export: name)
        case .tooMany:
            throw .unsatisfiable("more than \(ByteRanges.maximumRanges) ranges", size: size, export: name, code: "too_many_ranges")
        }
    }

    /// A body reading `parts` (each preceded by its multipart header, if any) on a pooled
    /// connection. A read that fails with a transient error is read again from the first byte
    /// not yet sent (see `NBDReadRetry`); the body is cut only when the retries are used up.
    private func stream(_ pool: Catalog.Export, _ parts: [(ClosedRange<UInt64>, ByteBuffer?)], trailer: ByteBuffer? = nil) -> ResponseBodyStream {
        let chunkSize = settings.readChunkSize
        let retry = NBDReadRetry(attempts: settings.readRetries)
        return ResponseBodyStream(highWater: 2 * chunkSize) { body in
            for (range, header) in parts {
                if let header { try await body.write(header) }
                var position = range.lowerBound
                let end = range.upperBound + 1
                try await retry.run(progress: { position }) {
                    var sent = 0
                    defer { pool.countRead(sent) }
                    try await pool.withClient(load: pool.streamLoad) { client in
                        try await client.readStream(at: position, length: end - position, chunkSize: chunkSize, window: 4) {
                            try await body.write($0)
                            sent += $0.readableBytes
                            position += UInt64($0.readableBytes)
                        }
                    }
                }
            }
            if let trailer { try await body.write(trailer) }
        }
    }

    static func makeBoundary() -> String {
        var generator = SystemRandomNumberGenerator()
        return "nbd-gateway-" + String(generator.next(), radix: 16)
    }

    // MARK: - PUT

    func beginPut(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> UploadDecision {
        let syntax = try putSyntax(request)
        let (pool, info, name) = try await open(route)
        return try preparePut(request, syntax, pool: pool, info: info, name: name)
    }

    /// A PUT's query parameters and headers, parsed.
    typealias PutSyntax = (fua: Bool, offset: UInt64?, contentRange: ByteRanges.ContentRange?, contentLength: UInt64?, digest: ContentDigest?)

    /// The PUT's query and headers, checked before anything else (400s).
    func putSyntax(_ request: GatewayRequest) throws(GatewayError) -> PutSyntax {
        let fua = try flag(request, "fua")
        let offsetParameter = try number(request, "offset")
        var contentRange: ByteRanges.ContentRange?
        if let header = request.header("Content-Range") {
            guard let parsed = ByteRanges.contentRange(header) else {
                throw .invalidRange("Content-Range must be bytes a-b/*, bytes a-b/SIZE or bytes a-e/-1, not \"\(header)\"")
            }
            contentRange = parsed
        }
        var contentLength: UInt64?
        if let header = request.header("Content-Length") {
            guard let parsed = ByteRanges.decimal(Substring(header)) else { throw .badRequest("bad Content-Length \"\(header)\"") }
            contentLength = parsed
        }
        var digest: ContentDigest?
        if let header = request.header("Content-Digest") {
            let parsed = ContentDigest.parse(header)
            guard !parsed.malformed else {
                throw .badRequest("Content-Digest must be a dictionary of byte sequences (sha-256=:BASE64:), not \"\(header)\"")
            }
            digest = parsed.digest
        }
        return (fua, offsetParameter, contentRange, contentLength, digest)
    }

    /// Decides a PUT once the export is known: permission (403), bounds (416), then the upload.
    func preparePut(_ request: GatewayRequest, _ syntax: PutSyntax, pool: Catalog.Export, info: NBDExportInfo, name: String) throws(GatewayError) -> UploadDecision {
        let (fua, offsetParameter, contentRange, contentLength, digest) = syntax
        try requireWritable(info, name)
        let size = info.size
        if let contentRange, let offsetParameter, contentRange.first != offsetParameter {
            throw .invalidRange("Content-Range starts at \(contentRange.first) but offset is \(offsetParameter)", export: name)
        }
        if let total = contentRange?.total, total != size {
            throw .invalidRange("Content-Range declares size \(total), the export has \(size)", export: name)
        }
        var declared = contentRange?.length
        if let contentLength {
            if let rangeLength = declared, contentLength != rangeLength {
                throw contentLength > rangeLength
                    ? .payloadTooLarge("Content-Length \(contentLength) exceeds the \(rangeLength) bytes of Content-Range", export: name)
                    : .invalidRange("Content-Length \(contentLength) is short of the \(rangeLength) bytes of Content-Range", export: name)
            }
            declared = contentLength
        }
        if let maximum = settings.maximumBodySize, let declared, declared > maximum {
            throw .payloadTooLarge("a body of \(declared) bytes is over the gateway's limit of \(maximum) (--max-body-size)", export: name)
        }
        let offset = contentRange?.first ?? offsetParameter ?? 0
        guard offset <= size, (declared ?? 0) <= size - offset else {
            throw .unsatisfiable("the write passes the end of the export (size \(size))", size: size, export: name)
        }
        let change = try admitChange(request, pool, name)
        let useFUA = fua && info.canFUA
        // A FLUSH makes the data durable (fua without FUA support) and, with several
        // connections, visible on all of them before we answer.
        let flushAfter = (fua && !info.canFUA || info.canMultiConn) && info.canFlush
        let session = UploadSession(
            offset: offset, declaredLength: declared, exportSize: size, maximumLength: settings.maximumBodySize,
            chunkSize: settings.writeChunkSize, highWater: 8 * settings.writeChunkSize, expectedDigest: digest, spawn: spawn,
            write: { chunkOffset, chunk in
                // Each chunk that lands makes the tags before it stale, also when the client
                // goes away before the end (no answer then, so no final step either).
                defer { pool.version.advance() }
                try await pool.withClient { try await $0.write(at: chunkOffset, chunk, fua: useFUA) }
                pool.countWritten(chunk.readableBytes)
            },
            complete: {
                // The session holds the change: an upload whose client went away ends it when
                // the session goes, after its last write.
                withExtendedLifetime(change) {}
                if flushAfter { try await pool.withClient { try await $0.flush() } }
            }
        )
        let requestID = request.requestID
        // libcurl's resume upload (`bytes a-e/-1`, nbdkit's curl plugin) gets 204 with no body:
        // nbdkit 1.32's curl plugin aborts on a body in the answer to its PUT.
        let resumeForm = contentRange != nil && contentRange?.length == nil
        let started = ContinuousClock.now
        return .accept(session) { [self] result in
            // The write is over (done or not): tags taken while it ran are stale from now on.
            change.end()
            let response: GatewayResponse
            switch result {
            case .success(let length):
                let tag = etag(pool, name)
                response = resumeForm
                    ? GatewayResponse(status: 204, headers: [("ETag", tag)])
                    : .json(200, Self.operationJSON("write", offset: offset, length: length, contentDigest: digest), headers: [("ETag", tag)])
            case .failure(let failure):
                response = GatewayError(failure, export: name, exportSize: size).response(requestID: requestID)
            }
            // Counted like every other answer (refusals are counted where they are decided).
            record(request, response, since: started)
            return response
        }
    }
}
