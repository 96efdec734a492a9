import Foundation
import NBDTestSupport
import Testing

/// A PUT the headers already condemn is answered from its headers, whatever the export's pool
/// is doing, even when the client withholds its body: no 100 Continue, no body awaited,
/// `Connection: close` since the body was never read, and nothing written.
@Suite("PUT refusals answered before the body, in every pool state")
struct RefusalBeforeBodyTests {
    static let size: UInt64 = 1 << 20
    static let memory = ["memory", "size=1M"]

    enum Framing: String, CaseIterable, Sendable {
        case contentLength = "Content-Length"
        case chunked
    }

    struct Refusal: Sendable {
        var readOnly: Bool
        var target: String
        var headers: [(name: String, value: String)]
        var status: Int
        var code: String
        var framings: [Framing]
    }

    /// Every refusal the headers decide, for an export NAME (read-write) and RO (read-only).
    static func refusals(rw: String, ro: String) -> [Refusal] {
        [
            Refusal(readOnly: false, target: "/exports/\(rw)/data", headers: [("Content-Range", "bytes 1047576-1049575/*")],
                    status: 416, code: "range_not_satisfiable", framings: Framing.allCases),
            Refusal(readOnly: false, target: "/exports/\(rw)/data", headers: [("Content-Range", "bytes=0-1999")],
                    status: 400, code: "invalid_range", framings: Framing.allCases),
            Refusal(readOnly: false, target: "/exports/\(rw)/data?offset=x", headers: [],
                    status: 400, code: "invalid_range", framings: Framing.allCases),
            // Content-Length above the range's length: only a declared length can say so.
            Refusal(readOnly: false, target: "/exports/\(rw)/data", headers: [("Content-Range", "bytes 0-99/*")],
                    status: 413, code: "payload_too_large", framings: [.contentLength]),
            // Over the gateway's --max-body-size (the tests' gateways run with 512 KiB).
            Refusal(readOnly: false, target: "/exports/\(rw)/data", headers: [("Content-Length", "600000")],
                    status: 413, code: "payload_too_large", framings: [.contentLength]),
            Refusal(readOnly: true, target: "/exports/\(ro)/data?offset=0", headers: [],
                    status: 403, code: "read_only", framings: Framing.allCases),
        ]
    }

    /// Sends each refusal in each framing, with and without Expect: 100-continue, its body
    /// withheld; `names` gives the (rw, ro) exports to use for the n-th request.
    func expectAnsweredFromHeaders(_ gateway: Gateway, state: String, names: (Int) async throws -> (rw: String, ro: String)) async throws {
        var index = 0
        for expectContinue in [false, true] {
            for framing in Framing.allCases {
                let (rw, ro) = try await names(index)
                for refusal in Self.refusals(rw: rw, ro: ro) where refusal.framings.contains(framing) {
                    var request = HTTPRequest("PUT", refusal.target, headers: refusal.headers, body: randomBytes(2000, seed: 7))
                    request.chunked = framing == .chunked
                    request.expectContinue = expectContinue
                    request.withholdBody = true
                    if expectContinue { request.headers.append(("Expect", "100-continue")) }
                    let label = "\(state), \(framing.rawValue), expect \(expectContinue): PUT \(refusal.target) \(refusal.headers)"
                    // Withheld bodies never come: an answer that waited for one would time out here.
                    let response: HTTPResponse
                    do {
                        response = try await RawHTTP.send(request, port: gateway.port, timeoutSeconds: 5)
                    } catch {
                        Issue.record("\(label): no answer within 5 s (\(error))")
                        continue
                    }
                    gateway.record(request, response)
                    #expect(response.status == refusal.status, "\(label): \(response.summary)")
                    #expect(response.errorCode == refusal.code, "\(label)")
                    #expect(response.interim.isEmpty, "\(label): no 100 Continue before a refusal")
                    #expect(response.header("Connection")?.lowercased() == "close", "\(label): the unread body ends the connection")
                }
                index += 1
            }
        }
    }

    func expectNothingWritten(_ uri: String) async throws {
        #expect(try await readBackend(uri, offset: 0, length: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try await readBackend(uri, offset: Self.size - 4096, length: 4096) == [UInt8](repeating: 0, count: 4096))
    }

    @Test("never opened, open, and broken while reconnecting")
    func neverOpenedOpenAndBroken() async throws {
        try await withServer({ try await Servers.nbdkit(Self.memory) }) { rw in
            try await withServer({ try await Servers.nbdkit(Self.memory, extraOptions: ["-r"]) }) { ro in
                let doomedRW = try await Servers.nbdkit(Self.memory)
                let doomedRO = try await Servers.nbdkit(Self.memory, extraOptions: ["-r"])
                defer {
                    doomedRW.stop()
                    doomedRO.stop()
                }
                let cold = (0..<4).flatMap { ["--export", "cold-rw\($0)=\(rw.uri)", "--export", "cold-ro\($0)=\(ro.uri)"] }
                let arguments = cold + ["--export", "rw=\(rw.uri)", "--export", "ro=\(ro.uri)",
                                        "--export", "broken-rw=\(doomedRW.uri)", "--export", "broken-ro=\(doomedRO.uri)"]
                try await withGateway(arguments + ["--max-body-size", "524288"]) { gateway in
                    // Never opened: each request goes to an export nobody has used yet.
                    try await expectAnsweredFromHeaders(gateway, state: "never opened") { ("cold-rw\($0)", "cold-ro\($0)") }
                    // Open: a GET has opened both pools.
                    #expect(try await gateway.get("/exports/rw/data", headers: [("Range", "bytes=0-10")]).status == 206)
                    #expect(try await gateway.get("/exports/ro/data", headers: [("Range", "bytes=0-10")]).status == 206)
                    try await expectAnsweredFromHeaders(gateway, state: "open") { _ in ("rw", "ro") }
                    // Broken: the backends died after serving; a read found out (502) and the
                    // pools are backing off before they reconnect.
                    #expect(try await gateway.get("/exports/broken-rw/data", headers: [("Range", "bytes=0-10")]).status == 206)
                    #expect(try await gateway.get("/exports/broken-ro/data", headers: [("Range", "bytes=0-10")]).status == 206)
                    // SIGKILL: nbdkit would finish serving its open connections after SIGTERM.
                    kill(doomedRW.pid, SIGKILL)
                    kill(doomedRO.pid, SIGKILL)
                    let afterDeath = try await gateway.get("/exports/broken-rw/data", headers: [("Range", "bytes=0-10")])
                    #expect(afterDeath.status >= 500, "\(afterDeath.summary)")
                    try await expectAnsweredFromHeaders(gateway, state: "broken") { _ in ("broken-rw", "broken-ro") }
                    try await gateway.expectServing("rw")
                    try await gateway.expectServing("ro")
                }
                try await expectNothingWritten(rw.uri)
            }
        }
    }

    @Test("closed as idle")
    func closedAsIdle() async throws {
        try await withServer({ try await Servers.nbdkit(Self.memory) }) { rw in
            try await withServer({ try await Servers.nbdkit(Self.memory, extraOptions: ["-r"]) }) { ro in
                try await withGateway(["--export", "rw=\(rw.uri)", "--export", "ro=\(ro.uri)", "--idle-timeout", "1", "--max-body-size", "524288"]) { gateway in
                    try await expectAnsweredFromHeaders(gateway, state: "closed as idle") { _ in
                        // Open both pools, then wait until the idle closer has closed them.
                        #expect(try await gateway.get("/exports/rw/data", headers: [("Range", "bytes=0-10")]).status == 206)
                        #expect(try await gateway.get("/exports/ro/data", headers: [("Range", "bytes=0-10")]).status == 206)
                        try await gateway.waitForGauge("nbd_gateway_nbd_connections", export: "rw", equals: 0)
                        try await gateway.waitForGauge("nbd_gateway_nbd_connections", export: "ro", equals: 0)
                        return ("rw", "ro")
                    }
                    try await gateway.expectServing("rw")
                }
                try await expectNothingWritten(rw.uri)
            }
        }
    }
}
