import Foundation
import NBDTestSupport
import Testing

/// RFC 9530 `Content-Digest` on PUT: the body hashed as it streams; a match echoed, a mismatch
/// 400 digest_mismatch (the bytes were written), a malformed header 400 before the body.
@Suite("PUT with Content-Digest", .timeLimit(.minutes(3)))
struct ContentDigestTests {
    /// `sha-256=:…:` / `sha-512=:…:` of `bytes`, by Python's hashlib.
    func digest(_ algorithm: String, of bytes: [UInt8], in directory: URL) async throws -> String {
        let file = directory.appendingPathComponent("body-\(algorithm)")
        try Data(bytes).write(to: file)
        let name = algorithm == "sha-256" ? "sha256" : "sha512"
        let script = "import base64, hashlib, sys; print(base64.b64encode(hashlib.\(name)(open(sys.argv[1], 'rb').read()).digest()).decode())"
        let result = try await Tools.run("python3", ["-c", script, file.path])
        return "\(algorithm)=:\(String(decoding: result.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)):"
    }

    @Test("sha-256 and sha-512, plain and chunked: a match is 200 with the digest echoed; a mismatch is 400 digest_mismatch with the bytes written")
    func matchAndMismatch() async throws {
        try await withNBDKitGateway(["memory", "size=8M"]) { gateway, server in
            let body = randomBytes(3_000_000, seed: 77)
            let sha256 = try await digest("sha-256", of: body, in: server.directory)
            let sha512 = try await digest("sha-512", of: body, in: server.directory)
            for (header, expected) in [(sha256, sha256), (sha512, sha512), ("md5=:AAAA:, \(sha256)", sha256), ("\(sha256), \(sha512)", sha512)] {
                for chunked in [false, true] {
                    var request = HTTPRequest("PUT", "/exports/disk/data?offset=4096", headers: [("Content-Digest", header)], body: body)
                    request.chunked = chunked
                    let answer = try await gateway.send(request)
                    #expect(answer.status == 200, "\(header) chunked \(chunked): \(answer.summary)")
                    #expect(try answer.json()["content_digest"] as? String == expected)
                }
            }
            // A digest of other bytes: written all the same, and said so.
            let other = randomBytes(1000, seed: 78)
            let wrong = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=0", headers: [("Content-Digest", sha256)], body: other))
            #expect(wrong.status == 400, "\(wrong.summary)")
            let error = try wrong.json()["error"] as? [String: Any]
            #expect(error?["code"] as? String == "digest_mismatch")
            #expect((error?["message"] as? String)?.contains("written") == true)
            #expect(try await readBackend(server.uri, offset: 0, length: 1000) == other)
            // Only an unknown algorithm: nothing to check, written.
            let unknown = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=0", headers: [("Content-Digest", "md5=:AAAA:")], body: other))
            #expect(unknown.status == 200)
            #expect(try unknown.json()["content_digest"] == nil)
        }
    }

    @Test("a malformed Content-Digest is 400 bad_request before the body", arguments: [
        "sha-256", "sha-256=abc", "sha-256=:not base64!:", "SHA-256=:AAAA:", ":AAAA:", "1sha=:AAAA:", "shä=:AAAA:",
        "sha-256=:AAAA:",  // 3 bytes: no SHA-256 is.
    ])
    func malformed(_ header: String) async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, server in
            var request = HTTPRequest("PUT", "/exports/disk/data?offset=0", headers: [("Content-Digest", header), ("Expect", "100-continue")], body: Array("hello".utf8))
            request.expectContinue = true
            let answer = try await gateway.send(request)
            #expect(answer.status == 400, "\(header): \(answer.summary)")
            #expect((try answer.json()["error"] as? [String: Any])?["code"] as? String == "bad_request")
            #expect(answer.bodyBytesSent == 0)
            #expect(try await readBackend(server.uri, offset: 0, length: 5) == [0, 0, 0, 0, 0])
        }
    }
}
