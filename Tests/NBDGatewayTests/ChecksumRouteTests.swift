import Foundation
import NBDTestSupport
import Testing

/// `GET /exports/NAME/checksum`: ovirt-imageio's block checksum, equal to hashlib over the same
/// bytes, without reading zero extents.
@Suite("Checksums through the gateway", .timeLimit(.minutes(3)))
struct ChecksumRouteTests {
    static let size = 8 << 20

    /// The export's `nbd_gateway_nbd_read_bytes_total`.
    func bytesRead(_ gateway: Gateway) async throws -> Double {
        let prefix = "nbd_gateway_nbd_read_bytes_total{export=\"disk\"} "
        let metrics = try await gateway.send(HTTPRequest("GET", "/metrics"), record: false).text
        return metrics.split(separator: "\n").first { $0.hasPrefix(prefix) }.flatMap { Double($0.dropFirst(prefix.count)) } ?? 0
    }

    @Test("equal to hashlib over the same bytes: every algorithm, aligned or not, sparse; only data blocks are read")
    func matchesReference() async throws {
        try await withNBDKitGateway(["memory", "size=\(Self.size)"]) { gateway, server in
            // The same bytes in the export and in a sparse local file.
            let file = server.directory.appendingPathComponent("mirror.img")
            _ = FileManager.default.createFile(atPath: file.path, contents: nil)
            let handle = try FileHandle(forWritingTo: file)
            try handle.truncate(atOffset: UInt64(Self.size))
            for (offset, count, seed) in [(1_000_000, 300_000, UInt64(1)), (5_000_000, 65_536, 2)] {
                let data = randomBytes(count, seed: seed)
                try await gateway.write("disk", offset: UInt64(offset), data)
                try handle.seek(toOffset: UInt64(offset))
                try handle.write(contentsOf: Data(data))
            }
            try handle.close()

            // 64 KiB blocks: 7 hold data (5 around the first run, 2 around the second), 121 do not.
            let before = try await bytesRead(gateway)
            let answer = try await gateway.get("/exports/disk/checksum?block_size=65536").json()
            let after = try await bytesRead(gateway)
            let expected = try await ReferenceChecksum.of(file, "blake2b", blockSize: 65536, offset: 0, length: UInt64(Self.size))
            #expect(answer["checksum"] as? String == expected)
            #expect(answer["algorithm"] as? String == "blake2b")
            #expect((answer["block_size"] as? NSNumber)?.intValue == 65536)
            #expect((answer["offset"] as? NSNumber)?.intValue == 0)
            #expect((answer["length"] as? NSNumber)?.intValue == Self.size)
            let read = after - before
            #expect(read > 0 && read <= Double(16 * 65536), "read \(read) bytes of \(Self.size) for 7 data blocks")

            let cases: [(String, Int?, UInt64?, UInt64?)] = [
                ("blake2b", nil, nil, nil), ("sha256", 4096, 999_999, 301_002), ("sha1", 1 << 20, 12_345, 6_000_000),
                ("sha256", 4 << 20, 8 << 20, 0),
            ]
            for (algorithm, blockSize, offset, length) in cases {
                var query = ["algorithm=\(algorithm)"]
                if let blockSize { query.append("block_size=\(blockSize)") }
                if let offset { query.append("offset=\(offset)") }
                if let length { query.append("length=\(length)") }
                let answer = try await gateway.get("/exports/disk/checksum?" + query.joined(separator: "&")).json()
                let start = offset ?? 0
                let expected = try await ReferenceChecksum.of(file, algorithm, blockSize: blockSize ?? 4 << 20, offset: start, length: length ?? UInt64(Self.size) - start)
                #expect(answer["checksum"] as? String == expected, "\(query)")
            }
        }
    }

    @Test("more blocks than a plan holds: 400 before any read (an nbdkit null disk of 2^60 bytes)")
    func tooManyBlocks() async throws {
        try await withNBDKitGateway(["null", "size=\(UInt64(1) << 60)"]) { gateway, _ in
            let answer = try await gateway.get("/exports/disk/checksum")
            #expect(answer.status == 400, "\(answer.summary)")
            #expect(answer.text.contains("larger block_size"))
            #expect(try await gateway.get("/exports/disk/checksum?length=1048576").status == 200)
        }
    }

    @Test("algorithms listed; a bad algorithm or block size is 400, a range past the end 416, an unknown export 404")
    func refusals() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let algorithms = try await gateway.get("/exports/disk/checksum/algorithms")
            #expect(algorithms.status == 200)
            #expect(algorithms.text == #"{"algorithms":["blake2b","sha256","sha1"],"default_algorithm":"blake2b","default_block_size":4194304}"#)
            let refusals: [(String, Int, String)] = [
                ("/exports/disk/checksum?algorithm=md5", 400, "bad_request"),
                ("/exports/disk/checksum?block_size=1000", 400, "bad_request"),
                ("/exports/disk/checksum?block_size=134217728", 400, "bad_request"),
                ("/exports/disk/checksum?block_size=x", 400, "invalid_range"),
                ("/exports/disk/checksum?offset=1048577", 416, "range_not_satisfiable"),
                ("/exports/disk/checksum?offset=1000&length=1048576", 416, "range_not_satisfiable"),
                ("/exports/nope/checksum", 404, "unknown_export"),
                ("/exports/disk/checksum/other", 404, "not_found"),
            ]
            for (target, status, code) in refusals {
                let response = try await gateway.get(target)
                #expect(response.status == status, "\(target): \(response.summary)")
                let error = try response.json()["error"] as? [String: Any]
                #expect(error?["code"] as? String == code, "\(target): \(response.summary)")
            }
        }
    }
}
