import Foundation
import NBDTestSupport
import Testing

/// Strong ETags on the data and the metadata: stable while nothing is written, new after every
/// write, zero and trim; `If-Range`, `If-Match` and `If-None-Match` honoured; never the same
/// tag from another run of the gateway.
@Suite("ETags, If-Range, If-Match, If-None-Match", .timeLimit(.minutes(3)))
struct ETagTests {
    @Test("a tag is stable until a write, zero or trim; If-Range with a stale tag gets the whole disk, with the current one its range")
    func tagsAndIfRange() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let first = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-9")])
            let tag = try #require(first.header("ETag"))
            #expect(tag.hasPrefix("\"") && tag.hasSuffix("\""))
            #expect(try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=5-9")]).header("ETag") == tag)
            #expect(try await gateway.send(HTTPRequest("HEAD", "/exports/disk/data")).header("ETag") == tag)
            #expect(try await gateway.get("/exports/disk").header("ETag") == tag)

            let current = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-9"), ("If-Range", tag)])
            #expect(current.status == 206)
            #expect(current.body.count == 10)

            let written = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=0", body: Array("hello".utf8)))
            #expect(written.status == 200)
            let afterWrite = try #require(written.header("ETag"))
            #expect(afterWrite != tag)
            #expect(try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-9")]).header("ETag") == afterWrite)

            let stale = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-9"), ("If-Range", tag)])
            #expect(stale.status == 200)
            #expect(stale.body.count == 1 << 20)
            #expect(stale.header("ETag") == afterWrite)
            let dated = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-9"), ("If-Range", "Sun, 29 Nov 2026 10:00:00 GMT")])
            #expect(dated.status == 200)

            var tags = [tag, afterWrite]
            for target in ["/exports/disk/zero?offset=0&length=4096", "/exports/disk/trim?offset=0&length=4096"] {
                let answer = try await gateway.send(HTTPRequest("POST", target, body: []))
                #expect(answer.status == 200, "\(target): \(answer.summary)")
                let next = try #require(answer.header("ETag"))
                #expect(!tags.contains(next), "\(target) kept an old tag")
                tags.append(next)
            }
        }
    }

    @Test("If-Match: a stale tag is 412 precondition_failed before the body and writes nothing; the current one or * is written")
    func ifMatch() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, server in
            let tag = try #require(try await gateway.get("/exports/disk").header("ETag"))
            let ok = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=0", headers: [("If-Match", tag)], body: Array("first".utf8)))
            #expect(ok.status == 200)
            let newTag = try #require(ok.header("ETag"))

            // The old tag again: refused from the headers, before any body byte.
            var stale = HTTPRequest("PUT", "/exports/disk/data?offset=100", headers: [("If-Match", tag), ("Expect", "100-continue")], body: Array("second".utf8))
            stale.expectContinue = true
            let refused = try await gateway.send(stale)
            #expect(refused.status == 412, "\(refused.summary)")
            #expect(refused.bodyBytesSent == 0)
            let error = try refused.json()["error"] as? [String: Any]
            #expect(error?["code"] as? String == "precondition_failed")
            #expect(try await readBackend(server.uri, offset: 100, length: 6) == [UInt8](repeating: 0, count: 6))

            for target in ["/exports/disk/zero?offset=0&length=5", "/exports/disk/trim?offset=0&length=4096"] {
                let refusedCommand = try await gateway.send(HTTPRequest("POST", target, headers: [("If-Match", tag)], body: []))
                #expect(refusedCommand.status == 412, "\(target): \(refusedCommand.summary)")
            }
            #expect(try await readBackend(server.uri, offset: 0, length: 5) == Array("first".utf8))

            let listed = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=200", headers: [("If-Match", "\"other\", \(newTag)")], body: Array("third".utf8)))
            #expect(listed.status == 200, "\(listed.summary)")
            let any = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=300", headers: [("If-Match", "*")], body: Array("fourth".utf8)))
            #expect(any.status == 200)
            #expect(try await readBackend(server.uri, offset: 200, length: 5) == Array("third".utf8))
        }
    }

    @Test("If-Match while another write runs is 412 (a tag taken then never passes); an upload whose client went away ends, and the current tag is written again")
    func ifMatchDuringAnotherWrite() async throws {
        try await withNBDKitGateway(["memory", "size=4M"]) { gateway, server in
            let port = gateway.port
            let before = try #require(try await gateway.get("/exports/disk").header("ETag"))
            // An upload that stops after 100 KiB of its 2 MiB (less than a write chunk).
            let upload = try await blockingPool.runIfActive { () throws -> RawHTTP.Connection in
                let connection = try RawHTTP.Connection(port: port)
                let head = "PUT /exports/disk/data?offset=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: \(2 << 20)\r\n\r\n"
                _ = connection.write(Array(head.utf8) + [UInt8](repeating: 7, count: 100 << 10))
                return connection
            }
            // Its admission moves the tag on: the tag taken after that is taken during the upload.
            var during = before
            try await waitUntil("the upload admitted") {
                during = try await gateway.get("/exports/disk").header("ETag") ?? before
                return during != before
            }
            let refused = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=3145728", headers: [("If-Match", during)], body: [1]))
            #expect(refused.status == 412 && refused.errorCode == "precondition_failed", "\(refused.summary)")
            #expect((try? refused.errorObject())?["message"] as? String ?? "" == "If-Match \(during): another change to the export is running")

            // The client goes away: the change ends when its session does; the tag moves on.
            try await blockingPool.runIfActive { upload.close() }
            var after = during
            try await waitUntil("the abandoned upload ended") {
                after = try await gateway.get("/exports/disk").header("ETag") ?? during
                return after != during
            }
            let stale = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=3145728", headers: [("If-Match", during)], body: [2]))
            #expect(stale.status == 412, "\(stale.summary)")
            let current = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=3145728", headers: [("If-Match", after)], body: [3]))
            #expect(current.status == 200, "\(current.summary)")
            #expect(try await readBackend(server.uri, offset: 3145728, length: 1) == [3])
        }
    }

    @Test("If-None-Match on the metadata: 304 with the tag while current, 200 after a write; another run of the gateway has other tags")
    func ifNoneMatchAndRestart() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=1M"]) }) { server in
            let tag = try await withGateway(["--export", "disk=\(server.uri)"]) { gateway in
                let first = try await gateway.get("/exports/disk")
                let tag = try #require(first.header("ETag"))
                let notModified = try await gateway.get("/exports/disk", headers: [("If-None-Match", tag)])
                #expect(notModified.status == 304)
                #expect(notModified.body.isEmpty)
                #expect(notModified.header("ETag") == tag)
                // Weak comparison (a compressing proxy turns the tag into W/"..."), and on the data too.
                #expect(try await gateway.get("/exports/disk", headers: [("If-None-Match", "W/\(tag)")]).status == 304)
                let data = try await gateway.get("/exports/disk/data", headers: [("If-None-Match", "\"other\", \(tag)"), ("Range", "bytes=0-9")])
                #expect(data.status == 304)
                #expect(data.body.isEmpty)
                let stale = try await gateway.get("/exports/disk/data", headers: [("If-Match", "\"other\""), ("Range", "bytes=0-9")])
                #expect(stale.status == 412)
                #expect(try await gateway.get("/exports/disk/data", headers: [("If-Match", tag), ("Range", "bytes=0-9")]).status == 206)
                #expect(try await gateway.send(HTTPRequest("HEAD", "/exports/disk/data", headers: [("If-None-Match", tag)])).status == 304)
                try await gateway.write("disk", offset: 0, Array("x".utf8))
                let changed = try await gateway.get("/exports/disk", headers: [("If-None-Match", tag)])
                #expect(changed.status == 200)
                #expect(changed.header("ETag") != tag)
                return tag
            }
            try await withGateway(["--export", "disk=\(server.uri)"]) { gateway in
                let again = try await gateway.get("/exports/disk")
                #expect(again.header("ETag") != tag)
                let range = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-0"), ("If-Range", tag)])
                #expect(range.status == 200)
            }
        }
    }
}
