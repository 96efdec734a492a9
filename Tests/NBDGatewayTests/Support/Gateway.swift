import Foundation
import NBDTestSupport
import Synchronization
import Testing

/// What one response looked like, for the contract check (see `OpenAPIChecker`).
struct RecordedResponse: Sendable {
    var method: String
    var path: String
    var status: Int
    var headers: [(name: String, value: String)]
    /// The body when it is text (JSON, YAML, Prometheus); nil for binary bodies.
    var bodyText: String?
    var bodyLength: Int

    var jsonObject: [String: Any] {
        [
            "method": method, "path": path, "status": status,
            "headers": headers.map { [$0.name, $0.value] },
            "body": bodyText as Any? ?? NSNull(), "body_length": bodyLength,
        ]
    }
}

/// A running `nbd-gateway` process (the built binary), on 127.0.0.1 and a port it chose.
/// Every response the tests get through it is recorded and, when the test ends, checked
/// against openapi.yaml.
final class Gateway: Sendable {
    let process: BackgroundProcess
    let port: Int
    let arguments: [String]
    /// `--base-path`, stripped from recorded paths for the contract check.
    let basePath: String
    /// "http" or "https".
    let scheme: String
    let directory: URL
    private let recorded = Mutex<[RecordedResponse]>([])

    private init(process: BackgroundProcess, port: Int, arguments: [String], directory: URL, scheme: String, basePath: String) {
        self.process = process
        self.port = port
        self.arguments = arguments
        self.directory = directory
        self.scheme = scheme
        self.basePath = basePath
    }

    var baseURL: String { "\(scheme)://127.0.0.1:\(port)\(basePath)" }

    /// Starts the gateway with `arguments` (plus `--host 127.0.0.1 --port 0`) and waits for its
    /// `listening on` line.
    static func start(_ arguments: [String]) async throws -> Gateway {
        let directory = try Tools.temporaryDirectory()
        // A short grace period unless the test sets one: `stop()` allows 10 s, and a client
        // that vanished mid-body can hold its request open until the grace ends (libmicrohttpd
        // 0.9.75 sometimes misses the FIN of a connection resumed during its body).
        let grace = arguments.contains("--shutdown-grace") ? [] : ["--shutdown-grace", "3"]
        let fullArguments = ["--host", "127.0.0.1", "--port", "0"] + grace + arguments
        let process = try BackgroundProcess(try Paths.gatewayBinary(), fullArguments, stderrPath: directory.appendingPathComponent("stderr").path)
        do {
            let line = try await process.waitForLine(containing: "listening on http", timeout: .seconds(20))
            guard let match = line.firstMatch(of: /listening on (https?):\/\/[^ ]*:(\d+)(\/[^ ]*)?$/), let port = Int(match.2) else {
                throw TestFailure("cannot read the port from \"\(line)\"")
            }
            return Gateway(process: process, port: port, arguments: fullArguments, directory: directory, scheme: String(match.1), basePath: match.3.map(String.init) ?? "")
        } catch {
            await process.stop()
            let log = process.stderrText
            try? FileManager.default.removeItem(at: directory)
            throw TestFailure("nbd-gateway \(fullArguments.joined(separator: " ")) did not start: \(error); stderr: \(log)")
        }
    }

    /// Stops the process (SIGTERM, then SIGKILL after a while) and removes its files.
    func stop() async {
        let (_, timedOut) = await process.stop()
        if timedOut { Issue.record("nbd-gateway did not stop within 10 s of SIGTERM; stderr: \(process.stderrText.suffix(2000))") }
        try? FileManager.default.removeItem(at: directory)
    }

    // MARK: - Requests

    /// Sends a request on a new connection; the answer is recorded for the contract check
    /// unless `record` is false (answers libmicrohttpd writes itself are not the gateway's).
    @discardableResult
    func send(_ request: HTTPRequest, record: Bool = true) async throws -> HTTPResponse {
        let response = try await RawHTTP.send(request, port: port)
        if record && request.truncateBodyAt == nil { self.record(request, response) }
        return response
    }

    func record(_ request: HTTPRequest, _ response: HTTPResponse) {
        let contentType = response.header("Content-Type")?.lowercased() ?? ""
        let isText = contentType.hasPrefix("application/json") || contentType.hasPrefix("text/") || contentType.hasPrefix("application/yaml")
        let path = !basePath.isEmpty && request.path.hasPrefix(basePath + "/") ? String(request.path.dropFirst(basePath.count)) : request.path
        let entry = RecordedResponse(
            method: request.method, path: path, status: response.status, headers: response.headers,
            bodyText: isText ? response.text : nil, bodyLength: response.body.count
        )
        recorded.withLock { $0.append(entry) }
    }

    @discardableResult
    func get(_ target: String, headers: [(name: String, value: String)] = []) async throws -> HTTPResponse {
        try await send(HTTPRequest("GET", target, headers: headers))
    }

    @discardableResult
    func head(_ target: String, headers: [(name: String, value: String)] = []) async throws -> HTTPResponse {
        try await send(HTTPRequest("HEAD", target, headers: headers))
    }

    @discardableResult
    func put(_ target: String, _ body: [UInt8], headers: [(name: String, value: String)] = []) async throws -> HTTPResponse {
        try await send(HTTPRequest("PUT", target, headers: headers, body: body))
    }

    @discardableResult
    func post(_ target: String, headers: [(name: String, value: String)] = []) async throws -> HTTPResponse {
        try await send(HTTPRequest("POST", target, headers: headers, body: []))
    }

    /// Reads `length` bytes at `offset` of an export's data (206 expected).
    func read(_ export: String, offset: UInt64, length: Int) async throws -> [UInt8] {
        let response = try await get("/exports/\(export)/data", headers: [("Range", "bytes=\(offset)-\(offset + UInt64(length) - 1)")])
        guard response.status == 206, response.complete else { throw TestFailure("read \(offset)+\(length) failed: \(response.summary)") }
        return response.body
    }

    /// Writes `bytes` at `offset` (200 expected).
    func write(_ export: String, offset: UInt64, _ bytes: [UInt8]) async throws {
        let response = try await put("/exports/\(export)/data?offset=\(offset)", bytes)
        guard response.status == 200 else { throw TestFailure("write \(offset)+\(bytes.count) failed: \(response.summary)") }
    }

    /// After a refused or broken request: the gateway still answers, and still reads the export.
    func expectServing(_ export: String? = nil, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let health = try await get("/healthz")
        #expect(health.status == 200, "the gateway stopped serving: \(health.summary)", sourceLocation: sourceLocation)
        if let export {
            let head = try await head("/exports/\(export)/data")
            #expect(head.status == 200, "the export is no longer served: \(head.summary)", sourceLocation: sourceLocation)
        }
    }

    /// Polls /metrics until the gauge `name` of `export` reads `value` (bounded: 15 s). A
    /// condition wait for the gateway's own timers (the idle closer), not a fixed sleep.
    func waitForGauge(_ name: String, export: String, equals value: Double) async throws {
        let prefix = "\(name){export=\"\(export)\"} "
        var last = "no such series"
        try await waitUntil("\(prefix)reads \(value) (last: \(last))", seconds: 15) {
            let metrics = try await send(HTTPRequest("GET", "/metrics"), record: false).text
            guard let line = metrics.split(separator: "\n").first(where: { $0.hasPrefix(prefix) }) else { return false }
            last = String(line)
            return Double(line.dropFirst(prefix.count)) == value
        }
    }

    // MARK: - Contract

    /// Checks every recorded response against openapi.yaml; each mismatch becomes an issue.
    func checkRecordedResponses(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let entries = recorded.withLock { $0 }
        guard !entries.isEmpty else { return }
        let problems = try await OpenAPIChecker.check(entries)
        for problem in problems {
            Issue.record("openapi.yaml mismatch: \(problem)", sourceLocation: sourceLocation)
        }
    }
}

/// Runs `body` with a gateway started with `arguments`; stops it afterwards (also on failure)
/// and checks every response the body got against the contract.
func withGateway<T>(_ arguments: [String], sourceLocation: SourceLocation = #_sourceLocation, _ body: (Gateway) async throws -> T) async throws -> T {
    let gateway = try await Gateway.start(arguments)
    let result: T
    do {
        result = try await body(gateway)
    } catch {
        await gateway.stop()
        throw TestFailure("\(error)\n--- nbd-gateway \(gateway.arguments.joined(separator: " ")) stderr ---\n\(gateway.process.stderrText.suffix(3000))")
    }
    await gateway.stop()
    try await gateway.checkRecordedResponses(sourceLocation: sourceLocation)
    return result
}

/// An nbdkit started with `nbdkitArguments`, served by a gateway as export `name`.
func withNBDKitGateway<T>(
    _ nbdkitArguments: [String], nbdkitOptions: [String] = [], name: String = "disk", gatewayArguments: [String] = [],
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: (Gateway, TestServer) async throws -> T
) async throws -> T {
    try await withServer({ try await Servers.nbdkit(nbdkitArguments, extraOptions: nbdkitOptions) }) { server in
        try await withGateway(["--export", "\(name)=\(server.uri)"] + gatewayArguments, sourceLocation: sourceLocation) { gateway in
            try await body(gateway, server)
        }
    }
}

/// Reads `length` bytes at `offset` straight from an NBD server with nbdcopy (not through the gateway).
func readBackend(_ uri: String, offset: UInt64, length: Int) async throws -> [UInt8] {
    let directory = try Tools.temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: directory) }
    let file = directory.appendingPathComponent("backend.bin").path
    try await runProcess("nbdcopy", [uri, file], timeout: .seconds(60))
    let data = try Data(contentsOf: URL(fileURLWithPath: file))
    guard data.count >= Int(offset) + length else { throw TestFailure("the backend has only \(data.count) bytes") }
    return Array(data[Int(offset)..<(Int(offset) + length)])
}
