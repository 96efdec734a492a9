import Foundation
import NBDChecksum
import NBDProtocol
import NBDTestSupport
import NIOCore
import Testing

/// The block checksum on exact bytes (values from Python's hashlib over the same definition),
/// the block plan on exact extents, and `nbd checksum` on exports and files against an
/// independent implementation.
@Suite("Block checksums", .timeLimit(.minutes(3)))
struct ChecksumTests {
    /// Hashes `data` block by block as the gateway does, zero blocks from the zero digest.
    func checksum(_ data: [UInt8], _ algorithm: ChecksumAlgorithm, blockSize: Int, zero: Bool = false) -> String {
        let sum = BlockChecksum(algorithm: algorithm, blockSize: blockSize)
        for start in stride(from: 0, to: data.count, by: blockSize) {
            let block = Array(data[start..<min(data.count, start + blockSize)])
            sum.append(digest: zero ? sum.zeroDigest(count: block.count) : BlockChecksum.digest(algorithm, of: [ByteBuffer(bytes: block)]))
        }
        return sum.finalize()
    }

    @Test("exact values: 10,000 bytes in 4 KiB blocks, zero blocks from the precomputed digest, the empty range", arguments: [
        (ChecksumAlgorithm.blake2b, "e5f3b188c0880798620dfefe903471229c169156217d4cd51364e26ad544c7b4", "be398f6c8b850894c16dffa90bf94d820030d4e4836198e56aada18b8319ab98", "0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"),
        (.sha256, "9290b4e966be476ea86028e863e8f7d5a101ef65f83faec0c40b7be21c3d51ae", "e55c62a66cf8c8ef6ce47c63fa471e4a9269755b9857ae519ece52b0c07ad5da", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (.sha1, "522804d04dffab5d2e90331a663813e13b6e022d", "23b8a64bcdaf9e60d4435a09af9c28f5eef56d10", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
    ])
    func exactValues(_ algorithm: ChecksumAlgorithm, _ data: String, _ zeroes: String, _ empty: String) {
        let bytes = (0..<10_000).map { UInt8($0 % 251) }
        #expect(checksum(bytes, algorithm, blockSize: 4096) == data)
        // Three whole zero blocks and a 100-byte one, never hashed from bytes.
        #expect(checksum([UInt8](repeating: 0, count: 3 * 4096 + 100), algorithm, blockSize: 4096, zero: true) == zeroes)
        #expect(checksum([UInt8](repeating: 0, count: 3 * 4096 + 100), algorithm, blockSize: 4096) == zeroes)
        #expect(checksum([], algorithm, blockSize: 4096) == empty)
    }

    @Test("the block plan: blocks cut from the offset, zero only where zero extents cover them whole")
    func plan() {
        let zero = NBDAllocationFlags.hole | NBDAllocationFlags.zero
        let extents = [
            NBDExtent(offset: 0, length: 8192, flags: zero),
            NBDExtent(offset: 8192, length: 4096, flags: NBDAllocationFlags.zero),  // Joined with the one before.
            NBDExtent(offset: 12288, length: 4096, flags: 0),
            NBDExtent(offset: 16384, length: 9000, flags: zero),
        ]
        let blocks = ChecksumRun.blocks(offset: 1000, length: 25000, blockSize: 4096, extents: extents)
        #expect(blocks.map(\.offset) == [1000, 5096, 9192, 13288, 17384, 21480, 25576])
        #expect(blocks.map(\.length) == [4096, 4096, 4096, 4096, 4096, 4096, 424])
        #expect(blocks.map(\.isZero) == [true, true, false, false, true, false, false])
        // No extents (no block status): every block is read.
        #expect(ChecksumRun.blocks(offset: 0, length: 8192, blockSize: 4096, extents: []).map(\.isZero) == [false, false])
        #expect(ChecksumRun.blocks(offset: 0, length: 0, blockSize: 4096, extents: []).isEmpty)
    }

    @Test("nbd checksum: an export and the same bytes in a file agree with hashlib, sparse and full, aligned or not, every algorithm")
    func toolAgreesWithReference() async throws {
        let size = 6 << 20
        try await withServer({ try await Servers.nbdkit(["memory", "size=\(size)"]) }) { server in
            let tool = try nbdToolPath()
            // A sparse file: two data runs, holes elsewhere; the export gets the same bytes.
            let file = server.directory.appendingPathComponent("disk.img")
            _ = FileManager.default.createFile(atPath: file.path, contents: nil)
            let handle = try FileHandle(forWritingTo: file)
            try handle.truncate(atOffset: UInt64(size))
            for (offset, count, seed) in [(1_000_000, 300_000, UInt64(1)), (4_194_304, 65_536, 2)] {
                let data = randomBytes(count, seed: seed)
                try handle.seek(toOffset: UInt64(offset))
                try handle.write(contentsOf: Data(data))
                let piece = server.directory.appendingPathComponent("piece-\(seed)")
                try Data(data).write(to: piece)
                try await Tools.run(tool, ["write", "--offset", String(offset), server.uri, piece.path])
            }
            try handle.close()
            let cases: [(String, Int, UInt64, UInt64?)] = [
                ("blake2b", 4 << 20, 0, nil), ("sha256", 65536, 0, nil), ("sha1", 1 << 20, 0, nil),
                ("blake2b", 65536, 12_345, 3_000_000), ("sha256", 4096, 999_999, 301_002),
            ]
            for (algorithm, blockSize, offset, length) in cases {
                let total = length ?? UInt64(size) - offset
                let expected = try await ReferenceChecksum.of(file, algorithm, blockSize: blockSize, offset: offset, length: total)
                var arguments = ["checksum", "--algorithm", algorithm, "--block-size", String(blockSize), "--offset", String(offset)]
                if let length { arguments += ["--length", String(length)] }
                let fromExport = try await Tools.run(tool, arguments + [server.uri]).stdout
                let fromFile = try await Tools.run(tool, arguments + [file.path]).stdout
                #expect(String(decoding: fromExport, as: UTF8.self) == "\(expected)  \(server.uri)\n", "\(algorithm) \(blockSize) \(offset)")
                #expect(String(decoding: fromFile, as: UTF8.self) == "\(expected)  \(file.path)\n", "\(algorithm) \(blockSize) \(offset)")
            }
            // A full (non-sparse) file of random bytes.
            let full = server.directory.appendingPathComponent("full.img")
            try Data(randomBytes(3_000_001, seed: 9)).write(to: full)
            let expected = try await ReferenceChecksum.of(full, "blake2b", blockSize: 4 << 20, offset: 0, length: 3_000_001)
            let json = try await Tools.run(tool, ["checksum", "--json", full.path]).stdout
            let object = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
            #expect(object["checksum"] as? String == expected)
            #expect(object["algorithm"] as? String == "blake2b")
            #expect((object["block_size"] as? NSNumber)?.intValue == 4 << 20)
            #expect((object["length"] as? NSNumber)?.intValue == 3_000_001)
            // Refusals: an unknown algorithm, a bad block size.
            let unknown = try await Tools.run(tool, ["checksum", "--algorithm", "md5", full.path], check: false)
            #expect(unknown.status != 0)
            let badBlock = try await Tools.run(tool, ["checksum", "--block-size", "1000", full.path], check: false)
            #expect(badBlock.status != 0)
            // Standard input cannot be read at any offset: refused with what to give instead.
            let stdin = try await Tools.run(tool, ["checksum", "-"], check: false)
            #expect(stdin.status == 1)
            #expect(String(decoding: stdin.stderr, as: UTF8.self).contains("- (standard input) cannot be read at any offset; give an NBD URI, a gateway URL or a file"))
        }
    }
}
