import Logging
import NBDClient
@testable import NBDGateway
import NIOCore
import Testing

/// `--auth-file` and `--max-in-flight` in process: every refusal, exact statuses and codes,
/// nothing written, and the other clients served.
@Suite("Tokens and in-flight limit (routes in process)")
struct AccessControlTests {
    static let operatorToken = "operator-secret-1"
    static let fileText = """
        # token              access  exports
        reader-7f3a-token    ro      disk,hidden
        writer-2c1d-token    rw      disk
        sha256:\(TokenDigest.sha256(operatorToken).map { String($0, radix: 16).leftPadded(2) }.joined())  rw  *
        """

    let disk = MemoryDisk()
    let routes: GatewayRoutes<MemoryCatalog>
    let support = GatewayRoutesTests()

    init() throws {
        let catalog = MemoryCatalog(["disk": disk, "other": MemoryDisk(name: "other"), "hidden": MemoryDisk(name: "hidden")])
        routes = GatewayRoutes(
            catalog: catalog,
            settings: GatewayRouteSettings(
                openAPIDocument: "openapi: 3.1.0\npaths:\n", metricsText: { "# metrics\n" },
                access: AccessControl(try AccessFile(parsing: Self.fileText)), maximumInFlight: 2
            ),
            spawn: { job in Task { await job() } }, logger: Logger(label: "test")
        )
    }

    func send(_ method: String, _ path: String, token: String?, basic: Bool = false, headers: [(name: String, value: String)] = []) async -> (status: Int, code: String?, response: GatewayResponse) {
        var all = headers
        if let token {
            all.append(("Authorization", basic ? "Basic " + base64("any-user:" + token) : "Bearer " + token))
        }
        let request = GatewayRequest(method: method, rawPath: path, headers: all, requestID: "r1")
        let response: GatewayResponse
        if method == "PUT" {
            switch await routes.beginUpload(request) {
            case .reject(let refusal): response = refusal
            case .accept(let session, let respond):
                session.setWake {}
                let bytes = [UInt8](repeating: 0xAB, count: 4)
                bytes.withUnsafeBytes { session.offer($0, suspend: {}) }
                response = respond(await session.finish())
            }
        } else {
            response = await routes.respond(to: request)
        }
        return (response.status, await support.errorCode(response), response)
    }

    @Test("no token, a wrong one, an empty Basic password: 401 naming both schemes")
    func unauthenticated() async {
        for (token, basic) in [(nil, false), ("wrong-token-123", false), ("wrong-token-123", true), ("", true)] as [(String?, Bool)] {
            let answer = await send("GET", "/exports/disk", token: token, basic: basic)
            #expect(answer.status == 401 && answer.code == "unauthorized", "token \(token ?? "none")")
            let challenges = answer.response.headers.filter { $0.name == "WWW-Authenticate" }.map(\.value)
            #expect(challenges == [#"Bearer realm="nbd-gateway""#, #"Basic realm="nbd-gateway""#])
        }
        // Before the method check too: the route is matched, then the token.
        #expect(await send("DELETE", "/exports/disk/data", token: nil).status == 401)
        #expect(await send("GET", "/exports", token: nil).status == 401)
    }

    @Test("Bearer and Basic (any user name) carry the same token")
    func bothSchemes() async {
        #expect(await send("GET", "/exports/disk", token: "reader-7f3a-token").status == 200)
        #expect(await send("GET", "/exports/disk", token: "reader-7f3a-token", basic: true).status == 200)
        #expect(await send("GET", "/exports/disk/data", token: Self.operatorToken, basic: true, headers: [("Range", "bytes=0-3")]).status == 206)
    }

    @Test("an export the token may not see answers exactly as one that does not exist")
    func hiddenExport() async {
        let hidden = await send("GET", "/exports/other", token: "writer-2c1d-token")
        let missing = await send("GET", "/exports/nowhere", token: "writer-2c1d-token")
        #expect(hidden.status == 404 && hidden.code == "unknown_export")
        #expect(missing.status == 404 && missing.code == "unknown_export")
        #expect(await send("PUT", "/exports/other/data", token: "writer-2c1d-token").status == 404)
        let listing = String(decoding: await support.body(await send("GET", "/exports", token: "writer-2c1d-token").response), as: UTF8.self)
        #expect(listing == #"{"exports":[{"name":"disk","description":"memory"}]}"#)
        let operatorListing = String(decoding: await support.body(await send("GET", "/exports", token: Self.operatorToken).response), as: UTF8.self)
        #expect(operatorListing.contains(#""other""#) && operatorListing.contains(#""hidden""#))
    }

    @Test("a read-only token may not PUT, zero, trim or flush: 403 access_denied, nothing written")
    func readOnlyToken() async {
        for (method, path) in [("PUT", "/exports/disk/data"), ("POST", "/exports/disk/zero"), ("POST", "/exports/disk/trim"), ("POST", "/exports/disk/flush")] {
            let answer = await send(method, path, token: "reader-7f3a-token")
            #expect(answer.status == 403 && answer.code == "access_denied", "\(method) \(path)")
        }
        #expect(disk.bytes(0..<4) == [0, 0, 0, 0])
        // The same write with a read-write token goes through.
        #expect(await send("PUT", "/exports/disk/data", token: "writer-2c1d-token").status == 200)
        #expect(disk.bytes(0..<4) == [0xAB, 0xAB, 0xAB, 0xAB])
    }

    @Test("/metrics needs a * token; health, readiness and the contract stay open")
    func operatorRoutes() async {
        #expect(await send("GET", "/metrics", token: nil).status == 401)
        let limited = await send("GET", "/metrics", token: "writer-2c1d-token")
        #expect(limited.status == 403 && limited.code == "access_denied")
        #expect(await send("GET", "/metrics", token: Self.operatorToken).status == 200)
        for path in ["/healthz", "/readyz", "/openapi.yaml"] {
            #expect(await send("GET", path, token: nil).status == 200, "\(path)")
        }
    }

    @Test("a reload replaces the tokens for the next request")
    func reload() async throws {
        #expect(await send("GET", "/exports/disk", token: "writer-2c1d-token").status == 200)
        let access = try #require(routes.settings.access)
        access.replace(with: try AccessFile(parsing: "fresh-token-99  ro  disk\n"))
        #expect(await send("GET", "/exports/disk", token: "writer-2c1d-token").status == 401)
        #expect(await send("GET", "/exports/disk", token: "fresh-token-99").status == 200)
    }

    @Test("--max-in-flight: past it a request gets 503 overloaded with Retry-After before any work; the held ones finish")
    func inFlightLimit() async throws {
        disk.holdReads()
        let first = Task { await send("GET", "/exports/disk/data", token: "reader-7f3a-token", headers: [("Range", "bytes=0-3")]) }
        let second = Task { await send("GET", "/exports/disk/data", token: "reader-7f3a-token", headers: [("Range", "bytes=4-7")]) }
        var held = disk.heldReads.makeAsyncIterator()
        _ = await held.next()
        _ = await held.next()
        let refused = await send("GET", "/exports/disk/data", token: "reader-7f3a-token", headers: [("Range", "bytes=0-3")])
        #expect(refused.status == 503 && refused.code == "overloaded" && refused.response.header("Retry-After") == "1")
        // Routes that need no disk are not counted.
        #expect(await send("GET", "/healthz", token: nil).status == 200)
        disk.releaseReads()
        #expect(await first.value.status == 206)
        #expect(await second.value.status == 206)
        #expect(await send("GET", "/exports/disk/data", token: "reader-7f3a-token", headers: [("Range", "bytes=0-3")]).status == 206)
    }
}

@Suite("Auth file parsing and credentials")
struct AccessFileTests {
    @Test("lines, comments, sha256 entries and export lists")
    func parses() throws {
        let file = try AccessFile(parsing: "# comment\n\n  reader-7f3a  ro  disk0,disk1  # trailing\nsha256:\(String(repeating: "ab", count: 32)) rw *\n")
        #expect(file.entries.count == 2)
        #expect(file.entries[0].access == .readOnly && file.entries[0].exports == .named(["disk0", "disk1"]))
        #expect(file.entries[0].digest == TokenDigest.sha256("reader-7f3a"))
        #expect(file.entries[1].digest == [UInt8](repeating: 0xAB, count: 32) && file.entries[1].exports == .all)
        #expect(file.entries[1].fingerprint == "abababab")
    }

    @Test("each malformed line is refused with its line number and reason")
    func refuses() {
        let cases: [(String, String)] = [
            ("reader-7f3a ro", "line 1: expected TOKEN ACCESS EXPORTS, found 2 fields"),
            ("\nreader-7f3a rx disk", "line 2: access must be ro or rw, not \"rx\""),
            ("short ro disk", "line 1: a token must be at least 8 characters"),
            ("sha256:abcd ro disk", "line 1: sha256: must be followed by 64 hex digits"),
            ("reader-7f3a ro disk,,x", "line 1: exports must be * or a comma-separated list of names"),
            ("reader-7f3a ro disk\nreader-7f3a rw *", "line 2: the token is listed twice"),
        ]
        for (text, message) in cases {
            #expect(throws: AccessFileError.self, "\(text)") { try AccessFile(parsing: text) }
            do {
                _ = try AccessFile(parsing: text)
            } catch {
                #expect("\(error)" == message)
            }
        }
    }

    @Test("credentials: Bearer, Basic with any user, malformed headers ignored")
    func credentials() {
        func token(_ header: String) -> String? {
            Credentials.token(in: GatewayRequest(method: "GET", rawPath: "/", headers: [("Authorization", header)]))
        }
        #expect(token("Bearer abc.def") == "abc.def")
        #expect(token("bearer  abc ") == "abc")
        #expect(token("Basic " + base64("user:pa:ss")) == "pa:ss")
        #expect(token("Basic " + base64(":secret")) == "secret")
        #expect(token("Basic " + base64("user:")) == nil)
        #expect(token("Basic !!!") == nil)
        #expect(token("Digest abc") == nil)
        #expect(token("Bearer") == nil)
    }

    @Test("digests compare equal only when every byte is")
    func constantTimeComparison() {
        let digest = TokenDigest.sha256("some-token")
        var other = digest
        other[31] ^= 1
        #expect(TokenDigest.equal(digest, digest) && !TokenDigest.equal(digest, other) && !TokenDigest.equal(digest, Array(digest.prefix(16))))
    }
}

func base64(_ text: String) -> String {
    let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    let bytes = Array(text.utf8)
    var out = ""
    var index = 0
    while index < bytes.count {
        let chunk = Array(bytes[index..<min(index + 3, bytes.count)])
        let value = chunk.enumerated().reduce(UInt32(0)) { $0 | UInt32($1.element) << UInt32(16 - 8 * $1.offset) }
        for position in 0..<4 {
            out.append(position <= chunk.count ? alphabet[Int(value >> UInt32(18 - 6 * position) & 63)] : "=")
        }
        index += 3
    }
    return out
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
