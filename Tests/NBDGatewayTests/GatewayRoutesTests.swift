import Logging
import NBDClient
@testable import NBDGateway
import NIOCore
import Testing

/// The routes in process, against an in-memory catalog: every route and its errors, with no
/// socket, no libmicrohttpd and no NBD server (those are the spawned-binary tests' part).
@Suite("GatewayRoutes in process (memory catalog)")
struct GatewayRoutesTests {
    let disk = MemoryDisk()
    let readOnlyDisk = MemoryDisk(name: "ro", flags: [.hasFlags, .readOnly])
    let routes: GatewayRoutes<MemoryCatalog>

    init() {
        let catalog = MemoryCatalog(["disk": disk, "ro": readOnlyDisk], unreachable: ["gone"])
        routes = GatewayRoutes(
            catalog: catalog, settings: GatewayRouteSettings(openAPIDocument: "openapi: 3.1.0\n", metricsText: { "# metrics\n" }),
            spawn: { job in Task { await job() } }, logger: Logger(label: "test")
        )
    }

    func request(_ method: String, _ path: String, query: [(name: String, value: String)] = [], headers: [(name: String, value: String)] = []) -> GatewayRequest {
        GatewayRequest(method: method, rawPath: path, query: query, headers: headers, requestID: "r1")
    }

    /// The whole body of a response, streamed ones included.
    func body(_ response: GatewayResponse) async -> [UInt8] {
        switch response.body {
        case .empty:
            return []
        case .bytes(let buffer):
            return Array(buffer.readableBytesView)
        case .slices(let buffers):
            return buffers.flatMap { Array($0.readableBytesView) }
        case .stream(_, let stream):
            let (wakes, wake) = AsyncStream.makeStream(of: Void.self)
            let producer = Task { await stream.run(wake: { wake.yield() }) }
            var out: [UInt8] = []
            var chunk = [UInt8](repeating: 0, count: 65536)
            var iterator = wakes.makeAsyncIterator()
            reading: while true {
                switch chunk.withUnsafeMutableBytes({ stream.read(into: $0, suspend: {}) }) {
                case .bytes(let count): out += chunk[..<count]
                case .pending: _ = await iterator.next()  // The producer wakes us when it has more.
                case .end, .failed: break reading
                }
            }
            await producer.value
            return out
        }
    }

    func errorCode(_ response: GatewayResponse) async -> String? {
        let text = String(decoding: await body(response), as: UTF8.self)
        return text.firstMatch(of: /"code":"([a-z_]+)"/).map { String($0.1) }
    }

    /// Sends a PUT body through the upload the route accepts; returns the answer.
    func put(_ path: String, _ bytes: [UInt8], query: [(name: String, value: String)] = [], headers: [(name: String, value: String)] = []) async -> GatewayResponse {
        let headers = headers + [("Content-Length", String(bytes.count))]
        switch await routes.beginUpload(request("PUT", path, query: query, headers: headers)) {
        case .reject(let response):
            return response
        case .accept(let session, let respond):
            session.setWake {}
            bytes.withUnsafeBytes { session.offer($0, suspend: {}) }
            return respond(await session.finish())
        }
    }

    @Test("service routes: health, readiness, metrics, the contract; unknown paths and methods")
    func serviceRoutes() async {
        #expect(await routes.respond(to: request("GET", "/healthz")).status == 200)
        #expect(await routes.respond(to: request("GET", "/readyz")).status == 200)
        let metrics = await routes.respond(to: request("GET", "/metrics"))
        let metricsBody = await body(metrics)
        #expect(metrics.status == 200 && metricsBody == Array("# metrics\n".utf8))
        #expect(await routes.respond(to: request("GET", "/openapi.yaml")).header("Content-Type") == "application/yaml")
        let missing = await routes.respond(to: request("GET", "/nope"))
        let missingCode = await errorCode(missing)
        #expect(missing.status == 404 && missingCode == "not_found")
        let wrongMethod = await routes.respond(to: request("DELETE", "/exports/disk/data"))
        #expect(wrongMethod.status == 405 && wrongMethod.header("Allow")?.contains("GET") == true)
    }

    @Test("exports: the listing, metadata, an unknown export, an unreachable backend")
    func exportRoutes() async {
        let listing = String(decoding: await body(await routes.respond(to: request("GET", "/exports"))), as: UTF8.self)
        #expect(listing == #"{"exports":[{"name":"disk","description":"memory"},{"name":"ro","description":"memory"}]}"#)
        let metadata = String(decoding: await body(await routes.respond(to: request("GET", "/exports/disk"))), as: UTF8.self)
        #expect(metadata.contains(#""name":"disk""#) && metadata.contains(#""size":1048576"#) && metadata.contains(#""can_flush":true"#))
        let unknown = await routes.respond(to: request("GET", "/exports/other"))
        let unknownCode = await errorCode(unknown)
        #expect(unknown.status == 404 && unknownCode == "unknown_export")
        let gone = await routes.respond(to: request("GET", "/exports/gone/data"))
        let goneCode = await errorCode(gone)
        #expect(gone.status == 502 && goneCode == "backend_unreachable")
    }

    @Test("data: ranges, whole streams, multipart, HEAD, OPTIONS, unsatisfiable ranges")
    func reads() async throws {
        let written = (0..<200_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        #expect(await put("/exports/disk/data", written, query: [("offset", "1000")]).status == 200)
        let ranged = await routes.respond(to: request("GET", "/exports/disk/data", headers: [("Range", "bytes=1000-1009")]))
        #expect(ranged.status == 206 && ranged.header("Content-Range") == "bytes 1000-1009/1048576")
        #expect(await body(ranged) == Array(written[0..<10]))
        let large = await routes.respond(to: request("GET", "/exports/disk/data", headers: [("Range", "bytes=1000-200999")]))
        #expect(await body(large) == written)
        // A range up to the inline limit is sent as the slices it was read in (the memory disk
        // cuts reads at 64 KiB); the whole disk streams.
        if case .slices(let pieces) = large.body {
            #expect(pieces.map(\.readableBytes) == [65536, 65536, 65536, 3392])
        } else {
            Issue.record("a 200,000-byte range was not answered from its slices: \(large.body)")
        }
        let whole = await routes.respond(to: request("GET", "/exports/disk/data"))
        if case .stream = whole.body {} else { Issue.record("the whole disk was not streamed: \(whole.body)") }
        let wholeBody = await body(whole)
        #expect(whole.status == 200 && wholeBody.count == 1 << 20)
        let multipart = await routes.respond(to: request("GET", "/exports/disk/data", headers: [("Range", "bytes=0-1,1000-1001")]))
        #expect(multipart.status == 206 && multipart.header("Content-Type")?.hasPrefix("multipart/byteranges") == true)
        let head = await routes.respond(to: request("HEAD", "/exports/disk/data"))
        #expect(head.status == 200 && head.headLength == 1 << 20)
        let options = await routes.respond(to: request("OPTIONS", "/exports/disk/data"))
        #expect(options.status == 200 && options.header("Allow")?.contains("PUT") == true)
        let outside = await routes.respond(to: request("GET", "/exports/disk/data", headers: [("Range", "bytes=2000000-")]))
        #expect(outside.status == 416 && outside.header("Content-Range") == "bytes */1048576")
    }

    @Test("writes: accepted and stored; refused past the end, read-only, malformed, before the body")
    func writes() async {
        #expect(await put("/exports/disk/data", [1, 2, 3], headers: [("Content-Range", "bytes 10-12/*")]).status == 200)
        #expect(disk.bytes(10..<13) == [1, 2, 3])
        let past = await put("/exports/disk/data", [1, 2, 3], query: [("offset", "1048575")])
        let pastCode = await errorCode(past)
        #expect(past.status == 416 && pastCode == "range_not_satisfiable")
        let readOnly = await put("/exports/ro/data", [1])
        let readOnlyCode = await errorCode(readOnly)
        #expect(readOnly.status == 403 && readOnlyCode == "read_only")
        let malformed = await put("/exports/disk/data", [1], headers: [("Content-Range", "bytes=0-0")])
        let malformedCode = await errorCode(malformed)
        #expect(malformed.status == 400 && malformedCode == "invalid_range")
        #expect(disk.bytes(1_048_575..<1_048_576) == [0])
    }

    @Test("--max-body-size: a declared length over it is refused before the body (413); an undeclared one once it passes it")
    func maximumBodySize() async {
        let limited = GatewayRoutes(
            catalog: MemoryCatalog(["disk": disk]), settings: GatewayRouteSettings(maximumBodySize: 1000),
            spawn: { job in Task { await job() } }, logger: Logger(label: "test")
        )
        let declared = await limited.beginUpload(request("PUT", "/exports/disk/data", headers: [("Content-Length", "1001")]))
        guard case .reject(let refusal) = declared else {
            Issue.record("a declared 1001 bytes should be refused from the headers")
            return
        }
        let refusalCode = await errorCode(refusal)
        #expect(refusal.status == 413 && refusalCode == "payload_too_large")
        guard case .accept(let session, let respond) = await limited.beginUpload(request("PUT", "/exports/disk/data", headers: [("Transfer-Encoding", "chunked")])) else {
            Issue.record("a body of unknown length is accepted until it passes the limit")
            return
        }
        session.setWake {}
        [UInt8](repeating: 7, count: 1001).withUnsafeBytes { session.offer($0, suspend: {}) }
        let answer = respond(await session.finish())
        let answerCode = await errorCode(answer)
        #expect(answer.status == 413 && answerCode == "payload_too_large")
        #expect(disk.bytes(0..<1001) == [UInt8](repeating: 0, count: 1001), "nothing written")
        let within = await limited.beginUpload(request("PUT", "/exports/disk/data", headers: [("Content-Length", "1000")]))
        guard case .accept = within else {
            Issue.record("1000 bytes are within the limit")
            return
        }
    }

    @Test("commands: extents, flush, trim, zero; what the export cannot do; bad parameters")
    func commands() async {
        #expect(await put("/exports/disk/data", [9], query: [("offset", "70000")]).status == 200)
        let extents = String(decoding: await body(await routes.respond(to: request("GET", "/exports/disk/extents", query: [("length", "196608")]))), as: UTF8.self)
        #expect(extents == #"{"context":"base:allocation","offset":0,"length":196608,"extents":[{"offset":0,"length":65536,"hole":true,"zero":true},{"offset":65536,"length":65536,"hole":false,"zero":false},{"offset":131072,"length":65536,"hole":true,"zero":true}]}"#)
        #expect(await routes.respond(to: request("POST", "/exports/disk/flush")).status == 200)
        #expect(await routes.respond(to: request("POST", "/exports/disk/zero", query: [("offset", "65536"), ("length", "65536")])).status == 200)
        #expect(disk.bytes(70000..<70001) == [0])
        #expect(await routes.respond(to: request("POST", "/exports/disk/trim", query: [("length", "4096")])).status == 200)
        let noLength = await routes.respond(to: request("POST", "/exports/disk/zero"))
        #expect(noLength.status == 400)
        let noFlush = await routes.respond(to: request("POST", "/exports/ro/flush"))
        let noFlushCode = await errorCode(noFlush)
        #expect(noFlush.status == 501 && noFlushCode == "not_implemented")
        let badFlag = await routes.respond(to: request("POST", "/exports/disk/zero", query: [("length", "1"), ("fua", "yes")]))
        let badFlagCode = await errorCode(badFlag)
        #expect(badFlag.status == 400 && badFlagCode == "bad_request")
    }

    @Test("NBD errors answer as the contract's table says", arguments: [
        (MemoryDisk.Command.read, NBDError(.serverError, errno: .EIO), 502, "backend_error"),
        (MemoryDisk.Command.read, NBDError(.timeout, "no reply"), 504, "gateway_timeout"),
        (MemoryDisk.Command.read, NBDError(.connectionLost), 502, "backend_unreachable"),
        (MemoryDisk.Command.write, NBDError(.serverError, errno: .ENOSPC), 507, "insufficient_storage"),
        (MemoryDisk.Command.write, NBDError(.serverError, errno: .ESHUTDOWN), 503, "service_unavailable"),
        (MemoryDisk.Command.flush, NBDError(.serverError, errno: .EIO), 502, "backend_error"),
        (MemoryDisk.Command.blockStatus, NBDError(.serverError, errno: .EINVAL), 400, "invalid_argument"),
    ] as [(MemoryDisk.Command, NBDError, Int, String)])
    func nbdErrors(_ command: MemoryDisk.Command, _ error: NBDError, _ status: Int, _ code: String) async {
        disk.fail(command, with: error)
        let response: GatewayResponse
        switch command {
        case .read: response = await routes.respond(to: request("GET", "/exports/disk/data", headers: [("Range", "bytes=0-9")]))
        case .write: response = await put("/exports/disk/data", [1, 2, 3])
        case .flush: response = await routes.respond(to: request("POST", "/exports/disk/flush"))
        case .blockStatus: response = await routes.respond(to: request("GET", "/exports/disk/extents"))
        case .trim, .zero: response = await routes.respond(to: request("POST", "/exports/disk/zero", query: [("length", "1")]))
        }
        #expect(response.status == status, "\(error)")
        #expect(await errorCode(response) == code)
        if status == 503 { #expect(response.header("Retry-After") == "1") }
    }
}
