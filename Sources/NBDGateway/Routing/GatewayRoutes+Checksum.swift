import NBDChecksum
import NBDClient

extension GatewayRoutes {
    /// `GET /exports/NAME/checksum`: ovirt-imageio's block checksum of a range. Zero extents
    /// are never read; data blocks are read on pooled connections, a few at once.
    func checksum(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        let algorithmName = request.queryValue("algorithm") ?? ChecksumAlgorithm.defaultAlgorithm.rawValue
        guard let algorithm = ChecksumAlgorithm(rawValue: algorithmName) else {
            let names = ChecksumAlgorithm.allCases.map(\.rawValue).joined(separator: ", ")
            throw .badRequest("algorithm must be one of \(names), not \"\(algorithmName)\"")
        }
        let blockSizeParameter = try number(request, "block_size")
        let blockSize = blockSizeParameter.map { Int(clamping: $0) } ?? ChecksumAlgorithm.defaultBlockSize
        guard ChecksumAlgorithm.isValidBlockSize(blockSize) else {
            throw .badRequest("block_size must be a multiple of 4096 from 4096 to 67108864, not \(blockSizeParameter ?? 0)")
        }
        let offsetParameter = try number(request, "offset")
        let lengthParameter = try number(request, "length")
        let (pool, info, name) = try await open(route)
        let offset = offsetParameter ?? 0
        guard offset <= info.size else {
            throw .unsatisfiable("offset \(offset) is past the end of the export (size \(info.size))", size: info.size, export: name)
        }
        let length = lengthParameter ?? (info.size - offset)
        guard length <= info.size - offset else {
            throw .unsatisfiable("range \(offset)+\(length) passes the end of the export (size \(info.size))", size: info.size, export: name)
        }
        guard length / UInt64(blockSize) < ChecksumAlgorithm.maximumBlocks else {
            throw .badRequest("\(length) bytes are more than \(ChecksumAlgorithm.maximumBlocks) blocks of \(blockSize): ask for a larger block_size or a shorter range", export: name)
        }
        // Extents when the export has them; without, every block is read.
        var extents: [NBDExtent] = []
        if info.canBlockStatus && length > 0 {
            extents = try await withReadRetries(pool, info) { try await $0.blockStatus(at: offset, length: length) }
        }
        let retry = NBDReadRetry(attempts: settings.readRetries)
        // Each block's read is retried on its own: a failure never starts the checksum over.
        let checksum = try await answeringNBDErrors(pool, info) {
            try await ChecksumRun.checksum(
                offset: offset, length: length, extents: extents, algorithm: algorithm, blockSize: blockSize, window: 4
            ) { blockOffset, blockLength in
                let buffer = try await retry.run(progress: { 0 }) {
                    try await pool.withClient { try await $0.read(at: blockOffset, length: blockLength) }
                }
                pool.countRead(buffer.readableBytes)
                return [buffer]
            }
        }
        let body = JSON.Value.object([
            ("algorithm", .string(algorithm.rawValue)),
            ("block_size", .int(UInt64(blockSize))),
            ("offset", .int(offset)),
            ("length", .int(length)),
            ("checksum", .string(checksum)),
        ])
        return .json(200, body.rendered)
    }

    /// `GET /exports/NAME/checksum/algorithms`.
    func checksumAlgorithms(_ request: GatewayRequest, route: Route) async throws(GatewayError) -> GatewayResponse {
        _ = try await open(route)
        let body = JSON.Value.object([
            ("algorithms", .array(ChecksumAlgorithm.allCases.map { .string($0.rawValue) })),
            ("default_algorithm", .string(ChecksumAlgorithm.defaultAlgorithm.rawValue)),
            ("default_block_size", .int(UInt64(ChecksumAlgorithm.defaultBlockSize))),
        ])
        return .json(200, body.rendered)
    }
}
