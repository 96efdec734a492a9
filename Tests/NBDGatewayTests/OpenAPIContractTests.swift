import Foundation
import NBDTestSupport
import Testing

/// The contract itself, and the checker every gateway test runs on its responses
/// (`withGateway` checks what each test received against openapi.yaml when the test ends).
@Suite("OpenAPI contract", .timeLimit(.minutes(3)))
struct OpenAPIContractTests {
    @Test("openapi.yaml is a valid OpenAPI document (openapi_spec_validator)")
    func specIsValid() async throws {
        let result = try await runProcess("python3", ["-m", "openapi_spec_validator", Paths.openAPI.path], timeout: .seconds(60), check: false)
        #expect(result.status == 0, "\(result.stdoutText) \(result.stderrText)")
    }

    @Test("the checker is not vacuous: it flags answers that break the contract")
    func checkerCatchesViolations() async throws {
        func entry(_ method: String, _ path: String, _ status: Int, _ headers: [(name: String, value: String)], _ body: String?) -> RecordedResponse {
            RecordedResponse(method: method, path: path, status: status, headers: [("X-Request-Id", "r")] + headers, bodyText: body, bodyLength: body?.utf8.count ?? 0)
        }
        let json = ("Content-Type", "application/json")
        let good = [
            entry("GET", "/healthz", 200, [json], #"{"status":"ok"}"#),
            entry("GET", "/nope", 404, [json], #"{"error":{"status":404,"code":"not_found","message":"m","nbd_error":null,"nbd_errno":null,"export":null,"request_id":"r"}}"#),
            entry("HEAD", "/exports/d/data", 200, [("Accept-Ranges", "bytes"), ("Content-Length", "5"), ("ETag", #""5f3a9c-0a1b2c3d-7""#)], nil),
            entry("GET", "/exports/a%2Fb/data", 416, [json, ("Content-Range", "bytes */10")],
                  #"{"error":{"status":416,"code":"range_not_satisfiable","message":"m","export":"a/b","request_id":"r"}}"#),
        ]
        #expect(try await OpenAPIChecker.check(good) == [])
        let bad: [(RecordedResponse, String)] = [
            (entry("GET", "/healthz", 200, [json], #"{"status":"bad"}"#), "does not match its schema"),
            (RecordedResponse(method: "GET", path: "/healthz", status: 200, headers: [json], bodyText: #"{"status":"ok"}"#, bodyLength: 15), "X-Request-Id"),
            (entry("GET", "/exports/d/data", 416, [json], #"{"error":{"status":416,"code":"range_not_satisfiable","message":"m","request_id":"r"}}"#), "Content-Range"),
            (entry("GET", "/nope", 404, [json], #"{"error":{"status":404,"code":"nope","message":"m","request_id":"r"}}"#), "Error"),
            (entry("GET", "/nope", 404, [json], #"{"error":{"status":404,"code":"unknown_export","message":"m","request_id":"r"}}"#), "not_found"),
            (entry("GET", "/nope", 404, [("Content-Type", "text/html")], "<html></html>"), "application/json"),
            (entry("GET", "/exports/d", 418, [json], #"{"error":{"status":418,"code":"internal_error","message":"m","request_id":"r"}}"#), "belongs with 500"),
            (entry("GET", "/exports/d", 400, [json], #"{"error":{"status":400,"code":"bad_request","message":"m","request_id":"other"}}"#), "request_id"),
            (entry("HEAD", "/exports/d/data", 200, [("accept-ranges", "bytes"), ("Content-Length", "5")], nil), "spelled exactly"),
            (entry("HEAD", "/exports/d/data", 200, [("Accept-Ranges", "bytes")], nil), "Content-Length"),
            (entry("HEAD", "/exports/d/data", 200, [("Accept-Ranges", "bytes"), ("Content-Length", "5")], nil), "ETag"),
            (entry("HEAD", "/exports/d/data", 200, [("Accept-Ranges", "bytes"), ("Content-Length", "5"), ("ETag", "weak")], nil), "ETag"),
            (entry("DELETE", "/exports/d/data", 405, [json], #"{"error":{"status":405,"code":"method_not_allowed","message":"m","request_id":"r"}}"#), "Allow"),
            (entry("GET", "/readyz", 503, [json], #"{"error":{"status":503,"code":"not_ready","message":"m","request_id":"r"}}"#), "Retry-After"),
            (entry("PUT", "/exports/d/data", 201, [json], #"{"operation":"write","offset":0,"length":1}"#), "not documented"),
            (entry("GET", "/exports", 200, [json], #"{"exports":[{"name":"d"}]}"#), "description"),
            (entry("GET", "/exports/d/data", 206, [("Content-Type", "application/octet-stream")], nil), "Content-Range"),
            (entry("GET", "/exports/d", 502, [json], #"{"error":{"status":502,"code":"backend_error","message":"m","nbd_error":null,"nbd_errno":5,"request_id":"r"}}"#), "null together"),
        ]
        let found = try await OpenAPIChecker.checkEach(bad.map(\.0))
        for ((record, expected), problems) in zip(bad, found) {
            #expect(problems.contains { $0.contains(expected) }, "\(record.method) \(record.path) \(record.status): expected a problem about \(expected), got \(problems)")
        }
    }

    @Test("every operation of the contract is routed (never 404 not_found or 405)")
    func everyOperationExists() async throws {
        let operations = try await OpenAPIChecker.operations()
        #expect(operations.count == 30)  // 16 of the API, the page and its files, 12 CORS preflights.
        let origin = "http://127.0.0.1:9000"
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--cors-origin", origin]) { gateway, _ in
            for (method, template) in operations {
                var target = template.replacingOccurrences(of: "{name}", with: "disk").replacingOccurrences(of: "{file}", with: "app.js")
                var body: [UInt8]?
                var headers: [(name: String, value: String)] = []
                switch method {
                case "OPTIONS" where !template.hasSuffix("/data"):
                    headers = [("Origin", origin), ("Access-Control-Request-Method", "GET")]
                case "PUT": body = Array("hello".utf8)
                case "POST":
                    body = []
                    if template.hasSuffix("/trim") || template.hasSuffix("/zero") { target += "?length=1" }
                default: break
                }
                let response = try await gateway.send(HTTPRequest(method, target, headers: headers, body: body))
                #expect((200..<300).contains(response.status), "\(method) \(template): \(response.summary)")
            }
        }
    }
}
