import Foundation
import NBDTestSupport
import Testing

/// Requests libmicrohttpd refuses before the gateway sees them. Version 0.9.75 offers no hook
/// for these answers: they are its own (HTML, `Connection: close`, no `X-Request-Id`), as
/// openapi.yaml documents. Each is tested for its exact status, and the gateway serves on.
@Suite("Answers libmicrohttpd makes itself", .timeLimit(.minutes(3)))
struct LibraryAnswerTests {
    static func statusLine(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.prefix { $0 != 13 && $0 != 10 }, as: UTF8.self)
    }

    @Test("HTTP/0.9, an HTTP/2 preface, unknown versions, bad Content-Length, bad chunks, an over-long URI or header: the documented status, closed, and others served")
    func libraryAnswers() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let cases: [(String, [UInt8], String)] = [
                ("HTTP/0.9", Array("GET /healthz\r\n\r\n".utf8), "HTTP/1.1 400 Bad Request"),
                ("an HTTP/2 preface", Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8), "HTTP/1.1 505 HTTP Version Not Supported"),
                ("HTTP/3.0", Array("GET /healthz HTTP/3.0\r\nHost: x\r\n\r\n".utf8), "HTTP/1.1 505 HTTP Version Not Supported"),
                ("Content-Length: abc", Array("PUT /exports/disk/data HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".utf8), "HTTP/1.1 400 Bad Request"),
                ("a chunk size that is not hex", Array("PUT /exports/disk/data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n".utf8), "HTTP/1.1 400 Bad Request"),
                ("a 70 KB request target", Array("GET /\(String(repeating: "a", count: 70_000)) HTTP/1.1\r\nHost: x\r\n\r\n".utf8), "HTTP/1.1 414 URI Too Long"),
                ("a 70 KB header", Array("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "b", count: 70_000))\r\n\r\n".utf8), "HTTP/1.1 431 Request Header Fields Too Large"),
            ]
            for (what, request, expected) in cases {
                let answer = try await RawHTTP.sendRaw(request, port: gateway.port, readTimeoutSeconds: 5)
                #expect(Self.statusLine(answer) == expected, "\(what): \(String(decoding: answer.prefix(200), as: UTF8.self))")
                let text = String(decoding: answer, as: UTF8.self).lowercased()
                #expect(text.contains("connection: close"), "\(what): not closed")
                try await gateway.expectServing("disk")
            }
            // Below the library's memory pool the gateway decides, in JSON: 16 KiB of headers.
            let large = try await gateway.get("/healthz", headers: [("X-Big", String(repeating: "b", count: 20_000))])
            #expect(large.status == 431 && large.errorCode == "request_header_too_large")
            // An HTTP/1.1 request without Host: the gateway's 400, in JSON (RFC 9112 §3.2).
            let noHost = try await RawHTTP.sendRaw(Array("GET /healthz HTTP/1.1\r\n\r\n".utf8), port: gateway.port, readTimeoutSeconds: 5)
            let noHostText = String(decoding: noHost, as: UTF8.self)
            #expect(Self.statusLine(noHost) == "HTTP/1.1 400 Bad Request" && noHostText.contains(#""code":"bad_request""#) && noHostText.contains("X-Request-Id"), "\(noHostText.prefix(300))")
            // HTTP/1.0 needs no Host.
            let old = try await RawHTTP.sendRaw(Array("GET /healthz HTTP/1.0\r\n\r\n".utf8), port: gateway.port, readTimeoutSeconds: 5)
            #expect(Self.statusLine(old) == "HTTP/1.1 200 OK")
        }
    }
}
