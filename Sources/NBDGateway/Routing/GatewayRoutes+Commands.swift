import NBDClient

extension GatewayRoutes {
    func extents(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        let offsetParameter = try number(request, "offset")
        let lengthParameter = try number(request, "length")
        let summary = try flag(request, "summary")
        let context = request.queryValue("context") ?? NBDMetaContext.baseAllocation
        let (pool, info, name) = try await open(route)
        guard info.metaContexts[context] != nil else {
            let offered = (info.availableMetaContexts.isEmpty ? Array(info.metaContexts.keys) : info.availableMetaContexts).sorted()
            let message = "export \"\(name)\" did not negotiate \"\(context)\" (it offers \(offered.isEmpty ? "none" : offered.joined(separator: ", ")))"
            // The allocation map missing is the server's limit (501); another name is the client's choice (400).
            if context == NBDMetaContext.baseAllocation { throw .notImplemented(message, export: name) }
            throw .badRequest(message, export: name)
        }
        let offset = offsetParameter ?? 0
        if info.size == 0 && offsetParameter == nil && lengthParameter == nil {
            return .json(200, summary ? #"{"context":"\#(context)","offset":0,"length":0,"totals":[]}"# : #"{"context":"\#(context)","offset":0,"length":0,"extents":[]}"#)
        }
        guard offset < info.size else {
            throw .unsatisfiable("offset \(offset) is not inside the export (size \(info.size))", size: info.size, export: name)
        }
        let length = lengthParameter ?? (info.size - offset)
        guard length > 0 else { throw .invalidRange("length must be at least 1", export: name) }
        guard length <= info.size - offset else {
            throw .unsatisfiable("range \(offset)+\(length) passes the end of the export (size \(info.size))", size: info.size, export: name)
        }
        let extents = try await withReadRetries(pool, info) { try await $0.blockStatus(at: offset, length: length, context: context) }
        let covered = extents.reduce(0) { $0 + $1.length }
        if summary {
            return .json(200, ExtentKinds.summaryJSON(extents, context: context, offset: offset, length: covered).rendered)
        }
        let body = JSON.Value.object([
            ("context", .string(context)),
            ("offset", .int(offset)),
            ("length", .int(covered)),
            ("extents", .array(extents.map { ExtentKinds.extentJSON($0, context: context) })),
        ])
        return .json(200, body.rendered)
    }

    func flush(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        let (pool, info, name) = try await open(route)
        guard info.canFlush else { throw .notImplemented("export \"\(name)\" does not support flush", export: name) }
        try await withClient(pool, info) { try await $0.flush() }
        return .json(200, Self.operationJSON("flush", offset: 0, length: 0))
    }

    func trim(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        try await ranged(request, route: route, operation: "trim") { client, offset, length, fua, _ in
            try await client.trim(at: offset, length: length, fua: fua)
        }
    }

    func zero(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        try await ranged(request, route: route, operation: "zero") { client, offset, length, fua, fast in
            try await client.writeZeroes(at: offset, length: length, fua: fua, fastZero: fast)
        }
    }

    /// Trim and zero: `?offset=&length=` (length required), `fua`, and `fast` for zero.
    private func ranged(
        _ request: GatewayRequest, route: Route, operation: String,
        _ body: @Sendable (Catalog.Export.Device, UInt64, UInt64, Bool, Bool) async throws -> Void
    ) async throws(GatewayError) -> GatewayResponse {
        let offset = try number(request, "offset") ?? 0
        guard let length = try number(request, "length") else {
            throw .invalidRange("query parameter length is required")
        }
        guard length > 0 else { throw .invalidRange("length must be at least 1") }
        let fua = try flag(request, "fua")
        let fast = operation == "zero" ? try flag(request, "fast") : false
        let (pool, info, name) = try await open(route)
        try requireWritable(info, name)
        let supported = operation == "trim" ? info.canTrim : info.canZero
        guard supported else { throw .notImplemented("export \"\(name)\" does not support \(operation)", export: name) }
        if fast && !info.canFastZero { throw .notImplemented("export \"\(name)\" does not support fast zero", export: name) }
        guard offset <= info.size, length <= info.size - offset else {
            throw .unsatisfiable("range \(offset)+\(length) passes the end of the export (size \(info.size))", size: info.size, export: name)
        }
        let change = try admitChange(request, pool, name)
        // Without FUA on the export, durability comes from a FLUSH afterwards.
        let useFUA = fua && info.canFUA
        let flushAfter = (fua && !info.canFUA || info.canMultiConn) && info.canFlush
        defer { change.end() }
        try await withClient(pool, info, writing: true) { client in
            try await body(client, offset, length, useFUA, fast)
            if flushAfter { try await client.flush() }
        }
        change.end()  // Before the answer's tag: the one it carries is the content after the change.
        return .json(200, Self.operationJSON(operation, offset: offset, length: length), headers: [("ETag", etag(pool, name))])
    }
}
