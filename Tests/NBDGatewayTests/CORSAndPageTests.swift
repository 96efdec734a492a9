import Foundation
@testable import NBDGateway
import NBDTestSupport
import Testing

@Suite("CORS policy (pure)")
struct CORSPolicyTests {
    @Test("named origins: the origin echoed with Vary and exposed headers; others get only Vary")
    func namedOrigins() {
        let policy = CORSPolicy(allowedOrigins: ["https://dash.example", "http://127.0.0.1:9000"])
        let allowed = policy.responseHeaders(origin: "https://dash.example")
        #expect(allowed.map(\.name) == ["Vary", "Access-Control-Allow-Origin", "Access-Control-Expose-Headers"])
        #expect(allowed[1].value == "https://dash.example")
        #expect(allowed[2].value == "Content-Range, Content-Length, Accept-Ranges, ETag, X-Request-Id, Retry-After, WWW-Authenticate")
        #expect(policy.responseHeaders(origin: "https://evil.example").map(\.name) == ["Vary"])
        #expect(policy.responseHeaders(origin: nil).map(\.name) == ["Vary"])
        #expect(policy.responseHeaders(origin: "https://DASH.example").count == 1, "origins compare exactly")
    }

    @Test("* allows every origin without Vary and never allows credentials; no policy adds nothing")
    func anyOrigin() {
        let any = CORSPolicy(allowedOrigins: ["*"])
        let headers = any.responseHeaders(origin: "https://anything.example")
        #expect(headers.first { $0.name == "Access-Control-Allow-Origin" }?.value == "*")
        #expect(!headers.contains { $0.name == "Vary" || $0.name == "Access-Control-Allow-Credentials" })
        #expect(CORSPolicy().responseHeaders(origin: "https://dash.example").isEmpty)
    }

    @Test("a preflight is OPTIONS with Access-Control-Request-Method from an allowed origin")
    func preflight() {
        let policy = CORSPolicy(allowedOrigins: ["https://dash.example"])
        func request(_ method: String, _ headers: [(name: String, value: String)]) -> GatewayRequest {
            GatewayRequest(method: method, rawPath: "/exports", headers: headers)
        }
        #expect(policy.isPreflight(request("OPTIONS", [("Origin", "https://dash.example"), ("Access-Control-Request-Method", "GET")])))
        #expect(!policy.isPreflight(request("OPTIONS", [("Origin", "https://dash.example")])))
        #expect(!policy.isPreflight(request("OPTIONS", [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "GET")])))
        #expect(!policy.isPreflight(request("GET", [("Origin", "https://dash.example"), ("Access-Control-Request-Method", "GET")])))
        let answer = policy.preflightResponse(methods: ["GET", "HEAD", "PUT", "OPTIONS"])
        #expect(answer.status == 204 && answer.header("Access-Control-Allow-Methods") == "GET, HEAD, PUT, OPTIONS")
        #expect(answer.header("Access-Control-Allow-Headers") == "Range, Content-Range, Authorization, Content-Type, If-Match, If-Range, If-None-Match, X-Request-Id")
        #expect(answer.header("Access-Control-Max-Age") == "600")
    }
}

@Suite("CORS and the page through the binary", .timeLimit(.minutes(3)))
struct CORSAndPageTests {
    static let dashboard = "http://127.0.0.1:9000"

    @Test("preflights need no token and name the path's methods; real answers (errors too) carry the origin; other origins get nothing")
    func cors() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let tokens = directory.appendingPathComponent("tokens")
        try "dashboard-token-1 ro *\n".write(to: tokens, atomically: true, encoding: .utf8)
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--cors-origin", Self.dashboard, "--auth-file", tokens.path]) { gateway, _ in
            let preflight = try await gateway.send(HTTPRequest("OPTIONS", "/exports/disk/data", headers: [
                ("Origin", Self.dashboard), ("Access-Control-Request-Method", "PUT"), ("Access-Control-Request-Headers", "authorization, range"),
            ]))
            #expect(preflight.status == 204)
            #expect(preflight.header("Access-Control-Allow-Origin") == Self.dashboard && preflight.header("Vary") == "Origin")
            #expect(preflight.header("Access-Control-Allow-Methods") == "GET, HEAD, PUT, OPTIONS")
            #expect(preflight.header("Access-Control-Allow-Headers")?.contains("Authorization") == true)
            let exportsPreflight = try await gateway.send(HTTPRequest("OPTIONS", "/exports", headers: [("Origin", Self.dashboard), ("Access-Control-Request-Method", "GET")]))
            #expect(exportsPreflight.status == 204 && exportsPreflight.header("Access-Control-Allow-Methods") == "GET, HEAD")

            let ranged = try await gateway.get("/exports/disk/data", headers: [("Origin", Self.dashboard), ("Range", "bytes=0-3"), ("Authorization", "Bearer dashboard-token-1")])
            #expect(ranged.status == 206 && ranged.header("Access-Control-Allow-Origin") == Self.dashboard)
            #expect(ranged.header("Access-Control-Expose-Headers")?.contains("Content-Range") == true)
            let refused = try await gateway.get("/exports/disk/data", headers: [("Origin", Self.dashboard)])
            #expect(refused.status == 401 && refused.header("Access-Control-Allow-Origin") == Self.dashboard, "a page must be able to read the 401")

            let other = try await gateway.send(HTTPRequest("OPTIONS", "/exports", headers: [("Origin", "http://evil.example"), ("Access-Control-Request-Method", "GET")]))
            #expect(other.status == 401 && other.header("Access-Control-Allow-Origin") == nil, "not a preflight: the token is checked")
            let otherGet = try await gateway.get("/healthz", headers: [("Origin", "http://evil.example")])
            #expect(otherGet.status == 200 && otherGet.header("Access-Control-Allow-Origin") == nil && otherGet.header("Vary") == "Origin")
            // A plain OPTIONS keeps its meaning (with a token).
            let plain = try await gateway.send(HTTPRequest("OPTIONS", "/exports/disk/data", headers: [("Authorization", "Bearer dashboard-token-1")]))
            #expect(plain.status == 200 && plain.header("Allow") == "GET, HEAD, PUT, OPTIONS")
        }
    }

    @Test("the page and its files: types, CSP, ETag and 304; under --base-path the bare prefix redirects; --no-ui turns it off")
    func page() async throws {
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--base-path", "/nbd"]) { gateway, _ in
            let page = try await gateway.get("/nbd/")
            #expect(page.status == 200 && page.header("Content-Type") == "text/html; charset=utf-8")
            #expect(page.header("Content-Security-Policy")?.hasPrefix("default-src 'none'; script-src 'self'") == true)
            #expect(page.header("Cache-Control") == "no-cache" && page.header("X-Content-Type-Options") == "nosniff")
            let etag = try #require(page.header("ETag"))
            let again = try await gateway.get("/nbd/", headers: [("If-None-Match", etag)])
            #expect(again.status == 304 && again.body.isEmpty)
            let script = try await gateway.get("/nbd/ui/app.js")
            #expect(script.status == 200 && script.header("Content-Type") == "text/javascript; charset=utf-8")
            #expect(try await gateway.get("/nbd/ui/style.css").header("Content-Type") == "text/css; charset=utf-8")
            let bare = try await gateway.send(HTTPRequest("GET", "/nbd"), record: false)
            #expect(bare.status == 308 && bare.header("Location") == "/nbd/")
            // The page's files are the repository's, compiled in.
            let source = try Data(contentsOf: Paths.repository.appendingPathComponent("Sources/NBDGateway/UI/app.js"))
            #expect(script.body == Array(source))
        }
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--no-ui"]) { gateway, _ in
            let page = try await gateway.get("/")
            #expect(page.status == 404 && page.errorCode == "not_found")
        }
    }
}
