import Foundation
import NBDTestSupport
import Testing

/// Reads through the real gateway binary, over nbdkit's pattern plugin (each 8-byte word holds
/// its offset, so every byte is known) and memory plugin.
@Suite("HTTP reads: GET, byte ranges, HEAD, OPTIONS, metadata", .timeLimit(.minutes(3)))
struct HTTPReadTests {
    static let size = 1 << 20
    static let pattern = ["pattern", "size=1M"]

    @Test("GET without Range: 200, the whole disk, Accept-Ranges: bytes")
    func wholeDisk() async throws {
        try await withNBDKitGateway(Self.pattern) { gateway, _ in
            let response = try await gateway.get("/exports/disk/data")
            #expect(response.status == 200)
            #expect(response.complete)
            #expect(response.header("Content-Length") == String(Self.size))
            #expect(response.header("Content-Type") == "application/octet-stream")
            #expect(response.hasHeader(exactly: "Accept-Ranges"))
            #expect(response.header("Accept-Ranges") == "bytes")
            #expect(response.header("Content-Range") == nil)
            #expect(response.body == patternBytes(offset: 0, length: Self.size))
        }
    }

    /// Range header, expected first and last byte.
    struct SingleRange: Sendable, CustomTestStringConvertible {
        var header: String
        var first: Int
        var last: Int
        var testDescription: String { header }
    }

    @Test("one range: 206 with Content-Range and exactly those bytes; ends past the size are clipped", arguments: [
        SingleRange(header: "bytes=0-9", first: 0, last: 9),
        SingleRange(header: "bytes=4093-8200", first: 4093, last: 8200),
        SingleRange(header: "bytes=1000000-", first: 1_000_000, last: 1_048_575),
        SingleRange(header: "bytes=-100", first: 1_048_476, last: 1_048_575),
        SingleRange(header: "bytes=-5000000", first: 0, last: 1_048_575),
        SingleRange(header: "bytes=1048570-1048700", first: 1_048_570, last: 1_048_575),
        // nbdkit's curl plugin asks one byte past the end on the last block.
        SingleRange(header: "bytes=1048476-1048576", first: 1_048_476, last: 1_048_575),
        SingleRange(header: "bytes=0-9,5-20", first: 0, last: 20),  // Coalesced.
        SingleRange(header: "bytes=0-0,1-1,2-2", first: 0, last: 2),  // Adjacent.
        SingleRange(header: "bytes=0-9,2000000-", first: 0, last: 9),  // The unsatisfiable one dropped.
    ])
    func singleRange(_ range: SingleRange) async throws {
        try await withNBDKitGateway(Self.pattern) { gateway, _ in
            let response = try await gateway.get("/exports/disk/data", headers: [("Range", range.header)])
            #expect(response.status == 206)
            #expect(response.complete)
            #expect(response.header("Content-Range") == "bytes \(range.first)-\(range.last)/\(Self.size)")
            #expect(response.header("Content-Length") == String(range.last - range.first + 1))
            #expect(response.header("Accept-Ranges") == "bytes")
            #expect(response.body == patternBytes(offset: UInt64(range.first), length: range.last - range.first + 1))
        }
    }

    @Test("ranges at the inline limit (sent from the received slices) and just past it (streamed): byte-exact, unaligned")
    func inlineLimit() async throws {
        try await withNBDKitGateway(["pattern", "size=4M"]) { gateway, _ in
            // 1 MiB is the limit; the reads cross several 256 KiB receive buffers.
            for (first, last) in [(1, 1 << 20), (1, (1 << 20) + 1), (3 << 20, (4 << 20) - 1), (12_345, 12_345 + 300_000)] {
                let response = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=\(first)-\(last)")])
                #expect(response.status == 206 && response.complete)
                #expect(response.header("Content-Range") == "bytes \(first)-\(last)/\(4 << 20)")
                #expect(response.body == patternBytes(offset: UInt64(first), length: last - first + 1), "bytes=\(first)-\(last)")
            }
            try await gateway.expectServing("disk")
        }
    }

    @Test("several ranges: 206 multipart/byteranges, sorted and coalesced, each part with its bytes")
    func multipart() async throws {
        try await withNBDKitGateway(Self.pattern) { gateway, _ in
            let response = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=500000-500099, 0-9,5-20,-16")])
            #expect(response.status == 206)
            #expect(response.complete)
            #expect(response.header("Content-Range") == nil)
            #expect(response.header("Content-Length") == String(response.body.count))
            let contentType = try #require(response.header("Content-Type"))
            #expect(contentType.hasPrefix("multipart/byteranges"))
            let boundary = try #require(Multipart.boundary(of: contentType))
            let parts = try Multipart.parse(response.body, boundary: boundary)
            let expected: [(Int, Int)] = [(0, 20), (500_000, 500_099), (Self.size - 16, Self.size - 1)]
            #expect(parts.count == expected.count)
            for (part, (first, last)) in zip(parts, expected) {
                #expect(part.header("Content-Type") == "application/octet-stream")
                #expect(part.header("Content-Range") == "bytes \(first)-\(last)/\(Self.size)")
                #expect(part.data == patternBytes(offset: UInt64(first), length: last - first + 1))
            }
            // 64 ranges are served; the 65th makes it too many (416 too_many_ranges).
            let sixtyFour = (0..<64).map { "\($0 * 1000)-\($0 * 1000 + 9)" }.joined(separator: ",")
            let many = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=" + sixtyFour)])
            #expect(many.status == 206)
            let manyParts = try Multipart.parse(many.body, boundary: try #require(Multipart.boundary(of: many.header("Content-Type") ?? "")))
            #expect(manyParts.count == 64)
            #expect(manyParts.last?.data == patternBytes(offset: 63_000, length: 10))
            let tooMany = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=" + sixtyFour + ",70000-70000")])
            #expect(tooMany.status == 416)
            #expect(tooMany.errorCode == "too_many_ranges")
            #expect(tooMany.header("Content-Range") == "bytes */\(Self.size)")
            // Many overlapping tiny ranges coalesce instead (guarding against abuse, not refusing it).
            let overlapping = Array(repeating: "10-20", count: 500).joined(separator: ",")
            let coalesced = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=" + overlapping)])
            #expect(coalesced.status == 206)
            #expect(coalesced.header("Content-Range") == "bytes 10-20/\(Self.size)")
            try await gateway.expectServing("disk")
        }
    }

    @Test("no satisfiable range: 416 range_not_satisfiable with Content-Range: bytes */SIZE", arguments: [
        "bytes=1048576-", "bytes=2000000-3000000", "bytes=-0", "bytes=1048576-1048576,5000000-",
    ])
    func unsatisfiable(_ header: String) async throws {
        try await withNBDKitGateway(Self.pattern) { gateway, _ in
            let response = try await gateway.get("/exports/disk/data", headers: [("Range", header)])
            #expect(response.status == 416)
            #expect(response.header("Content-Range") == "bytes */\(Self.size)")
            #expect(response.header("Content-Type") == "application/json")
            let error = try response.errorObject()
            #expect(error["code"] as? String == "range_not_satisfiable")
            #expect(error["status"] as? Int == 416)
            #expect(error["export"] as? String == "disk")
            try await gateway.expectServing("disk")
        }
    }

    @Test("a Range that does not parse, another unit, or numbers that do not fit: ignored, 200 whole disk")
    func ignoredRanges() async throws {
        try await withNBDKitGateway(Self.pattern) { gateway, _ in
            for header in ["bytes=abc", "items=0-5", "bytes=5-2", "bytes 0-5", "bytes=0-99999999999999999999", "bytes=-99999999999999999999",
                           "bytes=9223372036854775808-", "bytes=-1-5", "bytes=0-5,x"] {
                let response = try await gateway.get("/exports/disk/data", headers: [("Range", header)])
                #expect(response.status == 200, "\(header)")
                #expect(response.header("Content-Length") == String(Self.size), "\(header)")
                #expect(response.body.count == Self.size, "\(header)")
            }
        }
    }

    @Test("HEAD: the headers of a full GET, Range ignored, no body")
    func head() async throws {
        try await withNBDKitGateway(Self.pattern) { gateway, _ in
            for headers in [[], [("Range", "bytes=0-9")]] as [[(name: String, value: String)]] {
                let response = try await gateway.head("/exports/disk/data", headers: headers)
                #expect(response.status == 200)
                #expect(response.header("Content-Length") == String(Self.size))
                #expect(response.hasHeader(exactly: "Accept-Ranges"))
                #expect(response.header("Accept-Ranges") == "bytes")
                #expect(response.header("Content-Range") == nil)
                #expect(response.body.isEmpty)
            }
            // HEAD of an unknown export: the GET's status and headers, without a body.
            let missing = try await gateway.head("/exports/nope/data")
            #expect(missing.status == 404)
            #expect(missing.header("Content-Type") == "application/json")
            #expect(missing.body.isEmpty)
            // The connection is still in step after a HEAD (no stray body bytes): two on one connection.
            let both = try await RawHTTP.sendSequence([
                HTTPRequest("HEAD", "/exports/disk/data", headers: [("Connection", "keep-alive")]),
                HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=8-15")]),
            ], port: gateway.port)
            #expect(both.map(\.status) == [200, 206])
            #expect(both[1].body == patternBytes(offset: 8, length: 8))
        }
    }

    @Test("OPTIONS: Allow and the operations each export supports")
    func options() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let response = try await gateway.send(HTTPRequest("OPTIONS", "/exports/disk/data"))
            #expect(response.status == 200)
            #expect(response.header("Allow") == "GET, HEAD, PUT, OPTIONS")
            let body = try response.json()
            #expect(body["operations"] as? [String] == ["read", "write", "zero", "trim", "flush", "extents"])
            #expect(body["size"] as? Int == Self.size)
            #expect(body["can_multi_conn"] as? Bool == true)
            let blockSize = try #require(body["block_size"] as? [String: Int])
            #expect(blockSize["minimum"] == 1)
        }
        // Read-only plugin (no flush): read and extents only.
        try await withNBDKitGateway(Self.pattern) { gateway, _ in
            let body = try await gateway.send(HTTPRequest("OPTIONS", "/exports/disk/data")).json()
            #expect(body["operations"] as? [String] == ["read", "extents"])
        }
        // --read-only over a writable export: no write, zero or trim; flush stays.
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--read-only"]) { gateway, _ in
            let response = try await gateway.send(HTTPRequest("OPTIONS", "/exports/disk/data"))
            #expect(response.header("Allow") == "GET, HEAD, PUT, OPTIONS")
            #expect(try response.json()["operations"] as? [String] == ["read", "flush", "extents"])
        }
        // No structured replies, so no base:allocation: no extents; no zero with the nozero filter.
        try await withNBDKitGateway(["--filter=nozero", "memory", "size=1M"], nbdkitOptions: ["--no-sr"]) { gateway, _ in
            let body = try await gateway.send(HTTPRequest("OPTIONS", "/exports/disk/data")).json()
            #expect(body["operations"] as? [String] == ["read", "write", "trim", "flush"])
        }
    }

    @Test("GET /exports lists the exports; GET /exports/{name} is the metadata in nbdinfo's field names")
    func metadata() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let list = try await gateway.get("/exports")
            #expect(list.status == 200)
            let exports = try #require(try list.json()["exports"] as? [[String: String]])
            #expect(exports.contains { $0["name"] == "disk" && $0["description"] == "" })

            let response = try await gateway.get("/exports/disk")
            #expect(response.status == 200)
            let info = try response.json()
            #expect(info["size"] as? Int == Self.size)
            #expect(info["read_only"] as? Bool == false)
            #expect(info["can_flush"] as? Bool == true)
            #expect(info["can_multi_conn"] as? Bool == true)
            #expect(info["structured_replies"] as? Bool == true)
            #expect(info["contexts"] as? [String] == ["base:allocation"])
            #expect(info["description"] as? String == "")
            #expect(info["name"] as? String == "disk")
            // HEAD on the metadata: its headers, no body.
            let head = try await gateway.head("/exports/disk")
            #expect(head.status == 200)
            #expect(head.body.isEmpty)
        }
    }

    @Test("a large read streams whole and byte-exact across chunk boundaries")
    func largeRead() async throws {
        let size = 24 << 20
        try await withNBDKitGateway(["pattern", "size=\(size)"]) { gateway, _ in
            let response = try await gateway.get("/exports/disk/data")
            #expect(response.status == 200)
            #expect(response.complete)
            #expect(response.body.count == size)
            #expect(response.body == patternBytes(offset: 0, length: size))
            // A range straddling the 1 MiB read chunks.
            let range = try await gateway.read("disk", offset: (1 << 20) - 3, length: (2 << 20) + 7)
            #expect(range == patternBytes(offset: (1 << 20) - 3, length: (2 << 20) + 7))
        }
    }

    @Test("six streams at once, twice: every body byte-exact whether its response sends 1 MiB blocks (the first four) or 256 KiB ones")
    func concurrentStreams() async throws {
        let size = 6 << 20
        try await withNBDKitGateway(["pattern", "size=\(size)"]) { gateway, _ in
            let expected = patternBytes(offset: 0, length: size)
            for _ in 0..<2 {
                try await withThrowingTaskGroup(of: HTTPResponse.self) { group in
                    for _ in 0..<6 { group.addTask { try await gateway.get("/exports/disk/data") } }
                    for try await response in group {
                        #expect(response.status == 200)
                        #expect(response.complete)
                        #expect(response.body == expected)
                    }
                }
            }
        }
    }

    @Test("an empty disk: HEAD 0, GET 200 empty, any Range 416 bytes */0, extents empty, empty PUT 200")
    func emptyDisk() async throws {
        try await withNBDKitGateway(["memory", "size=0"]) { gateway, _ in
            let head = try await gateway.head("/exports/disk/data")
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == "0")
            let get = try await gateway.get("/exports/disk/data")
            #expect(get.status == 200)
            #expect(get.body.isEmpty)
            for header in ["bytes=0-0", "bytes=-1", "bytes=0-"] {
                let ranged = try await gateway.get("/exports/disk/data", headers: [("Range", header)])
                #expect(ranged.status == 416, "\(header)")
                #expect(ranged.header("Content-Range") == "bytes */0")
            }
            let extents = try await gateway.get("/exports/disk/extents")
            #expect(extents.status == 200)
            #expect(extents.text == #"{"context":"base:allocation","offset":0,"length":0,"extents":[]}"#)
            let empty = try await gateway.put("/exports/disk/data", [])
            #expect(empty.status == 200)
            #expect(empty.text == #"{"operation":"write","offset":0,"length":0}"#)
            let tooLong = try await gateway.put("/exports/disk/data", [1])
            #expect(tooLong.status == 416)
            #expect(tooLong.header("Content-Range") == "bytes */0")
            try await gateway.expectServing("disk")
        }
    }

    /// A backend with a minimum block size: the gateway must widen reads and read-modify-write
    /// unaligned writes (the backends refuse unaligned requests).
    struct AlignedBackend: Sendable, CustomTestStringConvertible {
        var name: String
        var start: @Sendable (URL) async throws -> TestServer
        var testDescription: String { name }
    }

    static let alignedBackends: [AlignedBackend] = [
        AlignedBackend(name: "nbdkit blocksize-policy 512/4K/64K, errors on unaligned") { _ in
            try await Servers.nbdkit(["--filter=blocksize-policy", "memory", "size=1M", "blocksize-minimum=512",
                                      "blocksize-preferred=4096", "blocksize-maximum=65536", "blocksize-error-policy=error"])
        },
        AlignedBackend(name: "qemu-nbd with 4 KiB alignment (blkdebug)") { directory in
            let image = directory.appendingPathComponent("aligned.img")
            try Data(count: 1 << 20).write(to: image)
            return try await Servers.qemuNBD(image: "driver=blkdebug,align=4096,image.driver=file,image.filename=\(image.path)", imageOptions: true)
        },
    ]

    @Test("unaligned reads and writes over a backend with a minimum block size", arguments: alignedBackends)
    func alignment(_ backend: AlignedBackend) async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withServer({ try await backend.start(directory) }) { server in
            try await withGateway(["--export", "disk=\(server.uri)"]) { gateway in
                let info = try await gateway.get("/exports/disk").json()
                let minimum = (info["block_size"] as? [String: Int])?["minimum"] ?? 0
                #expect(minimum >= 512, "the backend should advertise its minimum block size")
                var model = [UInt8](repeating: 0, count: 1 << 20)
                // Unaligned at both ends, inside one block, across many blocks and the 64 KiB maximum.
                let writes: [(Int, Int)] = [(100, 1000), (4090, 10), (5000, 3), (70_001, 200_003), (1_048_570, 6)]
                for (index, (offset, length)) in writes.enumerated() {
                    let bytes = randomBytes(length, seed: UInt64(index + 1))
                    try await gateway.write("disk", offset: UInt64(offset), bytes)
                    model.replaceSubrange(offset..<(offset + length), with: bytes)
                }
                for (offset, length) in [(0, 5000), (99, 1002), (4089, 12), (70_000, 200_010), (1_048_000, 576), (3, 1)] {
                    let back = try await gateway.read("disk", offset: UInt64(offset), length: length)
                    #expect(back == Array(model[offset..<(offset + length)]), "read \(offset)+\(length)")
                }
                let whole = try await gateway.get("/exports/disk/data")
                #expect(whole.body == model)
                // Zero an unaligned range: its edges are read-modify-written.
                let zero = try await gateway.post("/exports/disk/zero?offset=150&length=300")
                #expect(zero.status == 200)
                model.replaceSubrange(150..<450, with: [UInt8](repeating: 0, count: 300))
                #expect(try await gateway.read("disk", offset: 0, length: 1200) == Array(model[0..<1200]))
            }
        }
    }
}
