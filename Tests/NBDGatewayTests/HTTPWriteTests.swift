import Foundation
import NBDTestSupport
import Testing

/// Writes (PUT) and the commands (trim, zero, flush) through the real gateway over nbdkit.
@Suite("HTTP writes: PUT forms, refusals before the body, trim, zero, flush", .timeLimit(.minutes(3)))
struct HTTPWriteTests {
    static let size: UInt64 = 1 << 20
    static let memory = ["memory", "size=1M"]

    @Test("PUT ?offset=N writes the body there; the backend has the bytes")
    func putWithOffset() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, server in
            let data = randomBytes(100_000, seed: 1)
            let response = try await gateway.put("/exports/disk/data?offset=4097", data)
            #expect(response.status == 200)
            #expect(response.header("Content-Type") == "application/json")
            #expect(response.text == #"{"operation":"write","offset":4097,"length":100000}"#)
            #expect(try await gateway.read("disk", offset: 4097, length: data.count) == data)
            #expect(try await gateway.read("disk", offset: 4090, length: 7) == [0, 0, 0, 0, 0, 0, 0])
            #expect(try await readBackend(server.uri, offset: 4097, length: data.count) == data)
            // No offset and no Content-Range: from offset 0.
            let start = randomBytes(10, seed: 2)
            #expect(try await gateway.put("/exports/disk/data", start).status == 200)
            #expect(try await gateway.read("disk", offset: 0, length: 10) == start)
            // fua=1 is accepted and answers the same.
            let durable = try await gateway.put("/exports/disk/data?offset=20&fua=1", start)
            #expect(durable.text == #"{"operation":"write","offset":20,"length":10}"#)
            // The last byte of the disk.
            #expect(try await gateway.put("/exports/disk/data?offset=1048575", [0xAB]).status == 200)
            #expect(try await gateway.read("disk", offset: 1_048_575, length: 1) == [0xAB])
        }
    }

    @Test("PUT with Content-Range: bytes a-b/* and bytes a-b/SIZE")
    func putWithContentRange() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let first = randomBytes(100, seed: 3)
            let response = try await gateway.put("/exports/disk/data", first, headers: [("Content-Range", "bytes 100-199/*")])
            #expect(response.status == 200)
            #expect(response.text == #"{"operation":"write","offset":100,"length":100}"#)
            let second = randomBytes(100, seed: 4)
            let sized = try await gateway.put("/exports/disk/data", second, headers: [("Content-Range", "bytes 300-399/1048576")])
            #expect(sized.status == 200)
            // Content-Range and ?offset agreeing is fine.
            let third = randomBytes(5, seed: 5)
            #expect(try await gateway.put("/exports/disk/data?offset=500", third, headers: [("Content-Range", "bytes 500-504/*")]).status == 200)
            #expect(try await gateway.read("disk", offset: 100, length: 100) == first)
            #expect(try await gateway.read("disk", offset: 300, length: 100) == second)
            #expect(try await gateway.read("disk", offset: 500, length: 5) == third)
        }
    }

    @Test("libcurl's resume upload: chunked, Expect: 100-continue, Content-Range: bytes a-e/-1")
    func putCurlResumeForm() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            // As nbdkit 1.32's curl plugin sends it: e is one past the last byte; the body decides the length.
            let data = randomBytes(196_608, seed: 6)
            var request = HTTPRequest("PUT", "/exports/disk/data", headers: [("Content-Range", "bytes 65536-262144/-1")], body: data)
            request.chunked = true
            request.expectContinue = true
            request.chunkSize = 65_532
            let response = try await gateway.send(request)
            // 204 without a body: nbdkit's curl plugin, which sends this form, aborts on a body.
            #expect(response.status == 204)
            #expect(response.interim == [100])
            #expect(response.bodyBytesSent > data.count)  // Chunk framing included.
            #expect(response.text == "")
            #expect(try await gateway.read("disk", offset: 65536, length: data.count) == data)
            // Chunked without Expect, and with ?offset.
            var plain = HTTPRequest("PUT", "/exports/disk/data?offset=7", body: Array("chunked".utf8))
            plain.chunked = true
            plain.chunkSize = 3
            #expect(try await gateway.send(plain).status == 200)
            #expect(try await gateway.read("disk", offset: 7, length: 7) == Array("chunked".utf8))
        }
    }

    @Test("large uploads stream whole (many write chunks, connection suspended and resumed), plain and chunked")
    func largeUpload() async throws {
        try await withNBDKitGateway(["memory", "size=48M"]) { gateway, server in
            let data = randomBytes(20 << 20, seed: 29)
            let plain = try await gateway.put("/exports/disk/data?offset=12345", data)
            #expect(plain.text == #"{"operation":"write","offset":12345,"length":20971520}"#)
            var chunked = HTTPRequest("PUT", "/exports/disk/data", headers: [("Content-Range", "bytes 25000001-45971520/*")], body: data)
            chunked.chunked = true
            chunked.chunkSize = 100_003
            #expect(try await gateway.send(chunked).status == 200)
            #expect(try await gateway.read("disk", offset: 12345, length: data.count) == data)
            #expect(try await gateway.read("disk", offset: 25_000_001, length: data.count) == data)
            #expect(try await readBackend(server.uri, offset: 25_000_001, length: data.count) == data)
        }
    }

    @Test("one keep-alive connection: PUT, GET, HEAD and GET stay in step; a PUT refused before its body closes it")
    func keepAlive() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let data = randomBytes(70_000, seed: 30)
            let keep: [(name: String, value: String)] = [("Connection", "keep-alive")]
            let requests = [
                HTTPRequest("PUT", "/exports/disk/data?offset=100", headers: keep, body: data),
                HTTPRequest("GET", "/exports/disk/data", headers: keep + [("Range", "bytes=100-70099")]),
                HTTPRequest("POST", "/exports/disk/zero", headers: keep, body: []),
                HTTPRequest("HEAD", "/exports/disk/data", headers: keep),
                HTTPRequest("GET", "/exports/disk/data", headers: keep + [("Range", "bytes=100-199")]),
                // Refused from its headers: answered at once, its body unread, so the connection ends.
                HTTPRequest("PUT", "/exports/disk/data?offset=1048570", headers: keep, body: data),
            ]
            let responses = try await RawHTTP.sendSequence(requests, port: gateway.port)
            for (request, response) in zip(requests, responses) { gateway.record(request, response) }
            #expect(responses.map(\.status) == [200, 206, 400, 200, 206, 416])
            #expect(responses[1].body == data)
            #expect(responses[4].body == Array(data[0..<100]))
            #expect(responses[5].header("Connection")?.lowercased() == "close")
            #expect(responses[0..<5].allSatisfy { $0.header("Connection")?.lowercased() != "close" })
        }
    }

    @Test("an empty body writes nothing and answers 200 with length 0")
    func emptyBody() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let response = try await gateway.put("/exports/disk/data?offset=1048576", [])
            #expect(response.status == 200)
            #expect(response.text == #"{"operation":"write","offset":1048576,"length":0}"#)
        }
    }

    @Test("a write past the end: 416 with Content-Range: bytes */SIZE, and nothing is written")
    func putPastEnd() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, server in
            let original = randomBytes(2000, seed: 7)
            try await gateway.write("disk", offset: Self.size - 2000, original)
            let attempts: [(String, [(name: String, value: String)], Int)] = [
                ("/exports/disk/data", [("Content-Range", "bytes 1047576-1048576/*")], 1001),
                ("/exports/disk/data?offset=1048000", [], 1000),
                ("/exports/disk/data?offset=1048577", [], 1),
                ("/exports/disk/data?offset=2000000", [], 0),
                ("/exports/disk/data?offset=9223372036854775807", [], 10),
            ]
            for (target, headers, length) in attempts {
                let response = try await gateway.put(target, randomBytes(length, seed: 8), headers: headers)
                #expect(response.status == 416, "\(target)")
                #expect(response.errorCode == "range_not_satisfiable")
                #expect(response.header("Content-Range") == "bytes */\(Self.size)")
                try await gateway.expectServing("disk")
            }
            // Chunked, so the length is known only at the end: still refused (the part that fits
            // may have been written, the contract allows that); the gateway goes on serving.
            var chunked = HTTPRequest("PUT", "/exports/disk/data?offset=1047576", body: randomBytes(3000, seed: 9))
            chunked.chunked = true
            chunked.chunkSize = 500
            let response = try await gateway.send(chunked)
            #expect(response.status == 416)
            try await gateway.expectServing("disk")
            try await gateway.write("disk", offset: Self.size - 2000, original)
            #expect(try await gateway.read("disk", offset: Self.size - 2000, length: 2000) == original)
            #expect(try await readBackend(server.uri, offset: Self.size - 2000, length: 2000) == original)
        }
    }

    @Test("a refused PUT (declared lengths) writes nothing: the region reads back unchanged")
    func refusedWritesWriteNothing() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let original = randomBytes(4096, seed: 10)
            try await gateway.write("disk", offset: 0, original)
            let junk = randomBytes(1000, seed: 11)
            let refusals: [(target: String, headers: [(name: String, value: String)], body: [UInt8], status: Int, code: String)] = [
                // Content-Length above the range's length: 413; below: 400.
                ("/exports/disk/data", [("Content-Range", "bytes 0-99/*")], junk, 413, "payload_too_large"),
                ("/exports/disk/data", [("Content-Range", "bytes 0-1999/*")], junk, 400, "invalid_range"),
                // Content-Range against ?offset.
                ("/exports/disk/data?offset=1", [("Content-Range", "bytes 0-999/*")], junk, 400, "invalid_range"),
                // A SIZE that is not the export's.
                ("/exports/disk/data", [("Content-Range", "bytes 0-999/5000")], junk, 400, "invalid_range"),
                // Malformed Content-Range.
                ("/exports/disk/data", [("Content-Range", "bytes=0-999")], junk, 400, "invalid_range"),
                ("/exports/disk/data", [("Content-Range", "bytes 0-999")], junk, 400, "invalid_range"),
                ("/exports/disk/data", [("Content-Range", "bytes */1048576")], junk, 400, "invalid_range"),
                ("/exports/disk/data", [("Content-Range", "bytes 999-0/*")], junk, 400, "invalid_range"),
                ("/exports/disk/data", [("Content-Range", "bytes 0-99999999999999999999/*")], junk, 400, "invalid_range"),
                // Bad query values.
                ("/exports/disk/data?offset=-1", [], junk, 400, "invalid_range"),
                ("/exports/disk/data?offset=abc", [], junk, 400, "invalid_range"),
                ("/exports/disk/data?offset=99999999999999999999", [], junk, 400, "invalid_range"),
                ("/exports/disk/data?offset=%ZZ", [], junk, 400, "invalid_range"),
                ("/exports/disk/data?fua=2", [], junk, 400, "bad_request"),
                ("/exports/disk/data?fua=yes", [], junk, 400, "bad_request"),
            ]
            for refusal in refusals {
                let response = try await gateway.put(refusal.target, refusal.body, headers: refusal.headers)
                let label = "\(refusal.target) \(refusal.headers)"
                #expect(response.status == refusal.status, "\(label): \(response.summary)")
                #expect(response.errorCode == refusal.code, "\(label)")
                try await gateway.expectServing("disk")
            }
            // Bodies that disagree with their Content-Range, found while reading a chunked body.
            var longer = HTTPRequest("PUT", "/exports/disk/data", headers: [("Content-Range", "bytes 0-99/*")], body: junk)
            longer.chunked = true
            let tooLong = try await gateway.send(longer)
            #expect(tooLong.status == 413)
            #expect(tooLong.errorCode == "payload_too_large")
            var shorter = HTTPRequest("PUT", "/exports/disk/data", headers: [("Content-Range", "bytes 0-1999/*")], body: junk)
            shorter.chunked = true
            let tooShort = try await gateway.send(shorter)
            #expect(tooShort.status == 400)
            #expect(tooShort.errorCode == "invalid_range")
            try await gateway.expectServing("disk")
            // The refusals decided from the headers wrote nothing. (The chunked ones may have
            // written what arrived, per the contract; put the original back and check it stays.)
            try await gateway.write("disk", offset: 0, original)
            #expect(try await gateway.read("disk", offset: 0, length: 4096) == original)
        }
    }

    /// A PUT the gateway must refuse from its headers, sent with `Expect: 100-continue`.
    struct Refusal: Sendable {
        var target: String
        var headers: [(name: String, value: String)]
        var status: Int
        var code: String
    }

    static func refusals(_ name: String) -> [Refusal] {
        [
            Refusal(target: "/exports/\(name)/data", headers: [("Content-Range", "bytes 1047576-1049575/*")], status: 416, code: "range_not_satisfiable"),
            Refusal(target: "/exports/\(name)/data?offset=1047577", headers: [], status: 416, code: "range_not_satisfiable"),
            Refusal(target: "/exports/\(name)/data", headers: [("Content-Range", "bytes 0-99/*")], status: 413, code: "payload_too_large"),
            Refusal(target: "/exports/\(name)/data", headers: [("Content-Range", "bytes 0-4999/*")], status: 400, code: "invalid_range"),
        ]
    }

    /// Sends `refusal` with Expect: 100-continue and a 2000-byte body; returns the answer.
    func sendExpecting(_ gateway: Gateway, _ refusal: Refusal) async throws -> HTTPResponse {
        var request = HTTPRequest("PUT", refusal.target, headers: refusal.headers, body: randomBytes(2000, seed: 99))
        request.expectContinue = true
        let response = try await gateway.send(request)
        #expect(response.status == refusal.status, "\(refusal.target) \(refusal.headers): \(response.summary)")
        #expect(response.errorCode == refusal.code)
        return response
    }

    @Test("refusals are decided before the body: with Expect: 100-continue no 100 is sent and no body byte uploaded")
    func expectContinueRefusals() async throws {
        try await withServer({ try await Servers.nbdkit(Self.memory) }) { server in
            // Each cold refusal goes to an export the gateway has not opened yet.
            let names = ["c0", "c1", "c2", "c3", "warm"]
            try await withGateway(names.flatMap { ["--export", "\($0)=\(server.uri)"] }) { gateway in
                for (index, refusal) in Self.refusals("c").enumerated() {
                    var cold = refusal
                    cold.target = cold.target.replacingOccurrences(of: "/exports/c/", with: "/exports/c\(index)/")
                    let response = try await sendExpecting(gateway, cold)
                    #expect(response.interim.isEmpty, "\(cold.target): no 100 Continue before a refusal")
                    #expect(response.bodyBytesSent == 0, "\(cold.target)")
                    try await gateway.expectServing("c\(index)")
                }
                // Once the export is open its PUTs are decided at once, from the pooled info.
                #expect(try await gateway.head("/exports/warm/data").status == 200)
                for refusal in Self.refusals("warm") {
                    let response = try await sendExpecting(gateway, refusal)
                    #expect(response.interim.isEmpty, "\(refusal.target) \(refusal.headers)")
                    #expect(response.bodyBytesSent == 0)
                    try await gateway.expectServing("warm")
                }
                // Nothing was written anywhere.
                #expect(try await readBackend(server.uri, offset: 0, length: 4096) == [UInt8](repeating: 0, count: 4096))
                #expect(try await readBackend(server.uri, offset: Self.size - 4096, length: 4096) == [UInt8](repeating: 0, count: 4096))
            }
        }
    }

    /// A read-only export: read-only at the NBD level (nbdkit -r), or made so by the gateway.
    struct ReadOnlySetup: Sendable, CustomTestStringConvertible {
        var name: String
        var nbdkitOptions: [String]
        var gatewayArguments: [String]
        var testDescription: String { name }
    }

    @Test("a read-only export: 403 read_only (EPERM) before the body; trim and zero too; reads and flush work", arguments: [
        ReadOnlySetup(name: "nbdkit -r", nbdkitOptions: ["-r"], gatewayArguments: []),
        ReadOnlySetup(name: "nbd-gateway --read-only", nbdkitOptions: [], gatewayArguments: ["--read-only"]),
    ])
    func readOnly(_ setup: ReadOnlySetup) async throws {
        try await withNBDKitGateway(Self.memory, nbdkitOptions: setup.nbdkitOptions, gatewayArguments: setup.gatewayArguments) { gateway, server in
            for attempt in 0..<2 {
                var request = HTTPRequest("PUT", "/exports/disk/data?offset=0", body: randomBytes(100_000, seed: 25))
                request.expectContinue = true
                let response = try await gateway.send(request)
                #expect(response.status == 403)
                let error = try response.errorObject()
                #expect(error["code"] as? String == "read_only")
                #expect(error["nbd_error"] as? String == "EPERM")
                #expect(error["nbd_errno"] as? Int == 1)
                #expect(error["export"] as? String == "disk")
                if attempt == 0 {
                    // The first PUT is decided while the export opens.
                    #expect(response.interim.isEmpty && response.bodyBytesSent == 0)
                } else {
                    #expect(response.interim.isEmpty && response.bodyBytesSent == 0)
                }
                try await gateway.expectServing("disk")
            }
            // Without Expect the answer is the same (the body is read and discarded).
            let plain = try await gateway.put("/exports/disk/data?offset=0", randomBytes(1000, seed: 26))
            #expect(plain.status == 403)
            #expect(plain.errorCode == "read_only")
            for target in ["/exports/disk/trim?length=512", "/exports/disk/zero?length=512"] {
                let response = try await gateway.post(target)
                #expect(response.status == 403, "\(target)")
                #expect(response.errorCode == "read_only", "\(target)")
            }
            #expect(try await gateway.post("/exports/disk/flush").status == 200)
            #expect(try await gateway.read("disk", offset: 0, length: 4096) == [UInt8](repeating: 0, count: 4096))
            #expect(try await readBackend(server.uri, offset: 0, length: 4096) == [UInt8](repeating: 0, count: 4096))
            let info = try await gateway.get("/exports/disk").json()
            #expect(info["read_only"] as? Bool == setup.nbdkitOptions.contains("-r"))
        }
    }

    @Test("a body cut short by the client: the gateway goes on serving, and the next write is whole")
    func truncatedBody() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            for chunked in [false, true] {
                var request = HTTPRequest("PUT", "/exports/disk/data?offset=0", body: randomBytes(300_000, seed: 12))
                request.chunked = chunked
                request.truncateBodyAt = 70_000
                try await gateway.send(request)
                try await gateway.expectServing("disk")
            }
            // A client that sends only the request head and leaves.
            var headOnly = HTTPRequest("PUT", "/exports/disk/data?offset=0", headers: [("Content-Length", "1000")], body: [])
            headOnly.truncateBodyAt = 0
            try await gateway.send(headOnly)
            let data = randomBytes(300_000, seed: 13)
            try await gateway.write("disk", offset: 0, data)
            #expect(try await gateway.read("disk", offset: 0, length: data.count) == data)
        }
    }

    @Test("trim, zero and flush: ?offset=&length= (length required), fua, fast; the answer echoes the range")
    func commands() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            try await gateway.write("disk", offset: 0, randomBytes(65536, seed: 14))
            let zero = try await gateway.post("/exports/disk/zero?offset=1000&length=2000")
            #expect(zero.status == 200)
            #expect(zero.text == #"{"operation":"zero","offset":1000,"length":2000}"#)
            #expect(try await gateway.read("disk", offset: 1000, length: 2000) == [UInt8](repeating: 0, count: 2000))
            #expect(try await gateway.post("/exports/disk/zero?offset=4000&length=10&fua=1&fast=1").status == 200)
            #expect(try await gateway.read("disk", offset: 4000, length: 10) == [UInt8](repeating: 0, count: 10))
            let trim = try await gateway.post("/exports/disk/trim?offset=8192&length=8192&fua=1")
            #expect(trim.status == 200)
            #expect(trim.text == #"{"operation":"trim","offset":8192,"length":8192}"#)
            // Trim's offset defaults to 0.
            #expect(try await gateway.post("/exports/disk/trim?length=512").text == #"{"operation":"trim","offset":0,"length":512}"#)
            let flush = try await gateway.post("/exports/disk/flush")
            #expect(flush.status == 200)
            #expect(flush.text == #"{"operation":"flush","offset":0,"length":0}"#)
            // Any request body of a command is ignored.
            #expect(try await gateway.send(HTTPRequest("POST", "/exports/disk/flush", body: randomBytes(5000, seed: 1))).status == 200)

            let refusals: [(String, Int, String)] = [
                ("/exports/disk/trim", 400, "invalid_range"),
                ("/exports/disk/zero?offset=5", 400, "invalid_range"),
                ("/exports/disk/trim?length=0", 400, "invalid_range"),
                ("/exports/disk/zero?length=-1", 400, "invalid_range"),
                ("/exports/disk/zero?length=abc", 400, "invalid_range"),
                ("/exports/disk/trim?length=99999999999999999999", 400, "invalid_range"),
                ("/exports/disk/trim?length=%ZZ", 400, "invalid_range"),
                ("/exports/disk/zero?length=10&fua=2", 400, "bad_request"),
                ("/exports/disk/zero?length=10&fast=true", 400, "bad_request"),
                ("/exports/disk/trim?offset=1048000&length=1000", 416, "range_not_satisfiable"),
                ("/exports/disk/zero?offset=1048577&length=1", 416, "range_not_satisfiable"),
                ("/exports/disk/zero?offset=9223372036854775807&length=9223372036854775807", 416, "range_not_satisfiable"),
            ]
            for (target, status, code) in refusals {
                let response = try await gateway.post(target)
                #expect(response.status == status, "\(target): \(response.summary)")
                #expect(response.errorCode == code, "\(target)")
                if status == 416 { #expect(response.header("Content-Range") == "bytes */\(Self.size)") }
                try await gateway.expectServing("disk")
            }
            // The last byte is in range.
            #expect(try await gateway.post("/exports/disk/zero?offset=1048575&length=1").status == 200)
        }
    }

    @Test("capabilities the export lacks: 501 not_implemented (zero, fast zero, flush)")
    func notImplemented() async throws {
        try await withNBDKitGateway(["--filter=nozero", "memory", "size=1M"]) { gateway, _ in
            let zero = try await gateway.post("/exports/disk/zero?length=10")
            #expect(zero.status == 501)
            #expect(zero.errorCode == "not_implemented")
            try await gateway.expectServing("disk")
        }
        try await withNBDKitGateway(["--filter=nozero", "memory", "size=1M", "zeromode=emulate", "fastzeromode=none"]) { gateway, _ in
            #expect(try await gateway.post("/exports/disk/zero?length=10").status == 200)
            let fast = try await gateway.post("/exports/disk/zero?length=10&fast=1")
            #expect(fast.status == 501)
            #expect(fast.errorCode == "not_implemented")
        }
        // nbdkit's full plugin: no flush, and every write fails with ENOSPC (507).
        try await withNBDKitGateway(["full", "size=1M"]) { gateway, _ in
            let flush = try await gateway.post("/exports/disk/flush")
            #expect(flush.status == 501)
            #expect(flush.errorCode == "not_implemented")
            let write = try await gateway.put("/exports/disk/data", randomBytes(100, seed: 1))
            #expect(write.status == 507)
            #expect(write.errorCode == "insufficient_storage")
            let error = try write.errorObject()
            #expect(error["nbd_error"] as? String == "ENOSPC")
            #expect(error["nbd_errno"] as? Int == 28)
            try await gateway.expectServing("disk")
        }
    }

    @Test("extents: the allocation map as JSON, contiguous from offset; 416 past the end; 501 without base:allocation")
    func extents() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            try await gateway.write("disk", offset: 65536, randomBytes(65536, seed: 15))
            let response = try await gateway.get("/exports/disk/extents")
            #expect(response.status == 200)
            let body = try response.json()
            #expect(body["offset"] as? Int == 0)
            let extents = try #require(body["extents"] as? [[String: Any]])
            #expect(!extents.isEmpty)
            var next = 0
            for extent in extents {
                #expect(extent["offset"] as? Int == next)
                let length = try #require(extent["length"] as? Int)
                #expect(length >= 1)
                #expect(extent["hole"] is Bool && extent["zero"] is Bool)
                next += length
            }
            #expect(body["length"] as? Int == next)
            #expect(next >= 1 && next <= 1 << 20)
            // The written block is data; the start of the disk is a hole reading as zeroes.
            #expect(extents.first?["hole"] as? Bool == true)
            #expect(extents.contains { ($0["hole"] as? Bool) == false })
            let window = try await gateway.get("/exports/disk/extents?offset=65536&length=4096").json()
            #expect(window["offset"] as? Int == 65536)
            let windowExtents = try #require(window["extents"] as? [[String: Any]])
            #expect(windowExtents.first?["offset"] as? Int == 65536)
            #expect(windowExtents.first?["hole"] as? Bool == false)
            #expect((window["length"] as? Int).map { $0 >= 1 && $0 <= 4096 } == true)

            for (target, status, code) in [
                ("/exports/disk/extents?offset=1048000&length=1000", 416, "range_not_satisfiable"),
                ("/exports/disk/extents?length=0", 400, "invalid_range"),
                ("/exports/disk/extents?offset=x", 400, "invalid_range"),
                ("/exports/disk/extents?length=99999999999999999999", 400, "invalid_range"),
            ] {
                let refused = try await gateway.get(target)
                #expect(refused.status == status, "\(target): \(refused.summary)")
                #expect(refused.errorCode == code, "\(target)")
                try await gateway.expectServing("disk")
            }
            let past = try await gateway.get("/exports/disk/extents?offset=2000000")
            #expect(past.status == 416)
            #expect(past.header("Content-Range") == "bytes */\(Self.size)")
        }
        try await withNBDKitGateway(Self.memory, nbdkitOptions: ["--no-sr"]) { gateway, _ in
            let response = try await gateway.get("/exports/disk/extents")
            #expect(response.status == 501)
            #expect(response.errorCode == "not_implemented")
            try await gateway.expectServing("disk")
        }
    }
}
