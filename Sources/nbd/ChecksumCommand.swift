import ArgumentParser
import NBDChecksum
import NBDClient
import NBDProtocol
import NIOCore

struct ChecksumCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checksum",
        abstract: "Print the block checksum of an export, a gateway URL or a local file (ovirt-imageio's definition, as the gateway's /checksum).",
        discussion: """
            URI is an NBD URI, a gateway data URL (http(s)://HOST[:PORT]/exports/NAME/data: the \
            gateway computes it, or with --local this tool does, from /extents and the bytes) \
            or a local file. Zero extents (file holes) are not read.
            """
    )

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var gateway: GatewayOptions
    @Option(help: "blake2b (32-byte digest), sha256 or sha1.") var algorithm = ChecksumAlgorithm.defaultAlgorithm.rawValue
    @Option(name: .customLong("block-size"), help: "Bytes per block: a multiple of 4096 up to 64 MiB.") var blockSize = ChecksumAlgorithm.defaultBlockSize
    @Option(help: "Byte offset to start at.") var offset: UInt64 = 0
    @Option(help: "Bytes to checksum (default: to the end).") var length: UInt64?
    @Flag(help: "For a gateway URL: read the bytes and compute here instead of asking the gateway.") var local = false
    @Flag(help: "Print the gateway's JSON instead of CHECKSUM  URI.") var json = false

    func run() async throws {
        try await reportingErrors {
            guard let algorithm = ChecksumAlgorithm(rawValue: algorithm) else {
                throw ValidationError("--algorithm must be one of \(ChecksumAlgorithm.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard ChecksumAlgorithm.isValidBlockSize(blockSize) else {
                throw ValidationError("--block-size must be a multiple of 4096 from 4096 to 67108864")
            }
            let source = connection.uri
            let end = try await CopyEnds.open(source, writing: false, connections: 1, client: connection.client, gateway: gateway)
            let result: GatewayChecksum
            do {
                let total = try range(size: end.size)
                if let remote = end as? GatewayCopyEnd, !local {
                    result = try await remote.gateway.checksum(offset: offset, length: total, algorithm: algorithm.rawValue, blockSize: blockSize)
                } else {
                    result = GatewayChecksum(algorithm: algorithm.rawValue, blockSize: blockSize, offset: offset, length: total, checksum: try await checksum(end, total, algorithm))
                }
            } catch {
                await end.close()
                throw error
            }
            await end.close()
            if json {
                try StandardStreams.writeJSON(result)
            } else {
                StandardStreams.writeOutput("\(result.checksum)  \(source)\n")
            }
        }
    }

    private func range(size: UInt64) throws -> UInt64 {
        guard offset <= size else { throw NBDError(.outOfBounds, "offset \(offset) is past the end (size \(size))") }
        let total = length ?? (size - offset)
        guard total <= size - offset else { throw NBDError(.outOfBounds, "offset \(offset) + length \(total) passes the end (size \(size))") }
        guard total / UInt64(blockSize) < ChecksumAlgorithm.maximumBlocks else {
            throw NBDError(.invalidArgument, "\(total) bytes are too many blocks of \(blockSize): use a larger --block-size")
        }
        return total
    }

    /// Data blocks read eight at a time, each retried after EIO; zero blocks never read.
    private func checksum(_ end: any CopyEnd, _ total: UInt64, _ algorithm: ChecksumAlgorithm) async throws -> String {
        let extents = total > 0 ? try await end.extents(at: offset, length: total) : []
        let retry = NBDReadRetry(attempts: 3)
        return try await ChecksumRun.checksum(
            offset: offset, length: total, extents: extents, algorithm: algorithm, blockSize: blockSize, window: 8
        ) { blockOffset, blockLength in
            try await retry.run(progress: { 0 }, retryable: { $0.errno == .EIO }) {
                try await end.read(at: blockOffset, length: blockLength, lane: 0)
            }
        }
    }
}
