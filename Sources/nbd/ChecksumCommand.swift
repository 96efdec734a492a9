import ArgumentParser
import NBDChecksum
import NBDClient
import NBDProtocol
import NIOCore

struct ChecksumCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checksum",
        abstract: "Print the block checksum of an export or a local file (ovirt-imageio's definition, as the gateway's /checksum).",
        discussion: "URI is an NBD URI or a local file. Zero extents (file holes) are not read."
    )

    @OptionGroup var connection: ConnectionOptions
    @Option(help: "blake2b (32-byte digest), sha256 or sha1.") var algorithm = ChecksumAlgorithm.defaultAlgorithm.rawValue
    @Option(name: .customLong("block-size"), help: "Bytes per block: a multiple of 4096 up to 64 MiB.") var blockSize = ChecksumAlgorithm.defaultBlockSize
    @Option(help: "Byte offset to start at.") var offset: UInt64 = 0
    @Option(help: "Bytes to checksum (default: to the end).") var length: UInt64?
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
            let isNBD = ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"].contains { source.hasPrefix($0) }
            let (total, checksum) = isNBD
                ? try await checksumExport(algorithm)
                : try await checksumFile(source, algorithm)
            if json {
                try StandardStreams.writeJSON(ChecksumResult(algorithm: algorithm.rawValue, blockSize: blockSize, offset: offset, length: total, checksum: checksum))
            } else {
                StandardStreams.writeOutput("\(checksum)  \(source)\n")
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

    private func checksumExport(_ algorithm: ChecksumAlgorithm) async throws -> (UInt64, String) {
        let client = try await connection.connect()
        do {
            let total = try range(size: client.size)
            var extents: [NBDExtent] = []
            if client.info.metaContexts[NBDMetaContext.baseAllocation] != nil && total > 0 {
                extents = try await client.blockStatus(at: offset, length: total)
            }
            let blocks = ChecksumRun.blocks(offset: offset, length: total, blockSize: blockSize, extents: extents)
            let retry = NBDReadRetry(attempts: 3)
            let checksum = try await ChecksumRun.checksum(blocks, algorithm: algorithm, blockSize: blockSize, window: 8) { blockOffset, blockLength in
                try await retry.run(progress: { 0 }, retryable: { $0.errno == .EIO }) {
                    try await client.readSlices(at: blockOffset, length: blockLength)
                }
            }
            await client.disconnect()
            return (total, checksum)
        } catch {
            await client.disconnect()
            throw error
        }
    }

    private func checksumFile(_ path: String, _ algorithm: ChecksumAlgorithm) async throws -> (UInt64, String) {
        let file = try await RandomAccessFile.open(path, writing: false)
        do {
            let total = try range(size: file.size)
            let extents = try await file.extents(at: offset, length: total)
            let blocks = ChecksumRun.blocks(offset: offset, length: total, blockSize: blockSize, extents: extents)
            let checksum = try await ChecksumRun.checksum(blocks, algorithm: algorithm, blockSize: blockSize, window: 2) { blockOffset, blockLength in
                [try await file.read(at: blockOffset, length: blockLength)]
            }
            await file.close()
            return (total, checksum)
        } catch {
            await file.close()
            throw error
        }
    }
}

/// The gateway's checksum answer, field for field.
struct ChecksumResult: Encodable {
    var algorithm: String
    var blockSize: Int
    var offset: UInt64
    var length: UInt64
    var checksum: String

    enum CodingKeys: String, CodingKey {
        case algorithm
        case blockSize = "block_size"
        case offset, length, checksum
    }
}
