import ArgumentParser
import AsyncHTTPClient
import Crypto
import Foundation
import NBDClient
import NBDProtocol
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL

/// How to reach a gateway: its token and the CA that signed its certificate.
struct GatewayOptions: ParsableArguments {
    @Option(help: "Bearer token for a gateway URL (or NBD_GATEWAY_TOKEN).")
    var token: String?

    @Option(help: "PEM file of CA certificates to trust for an https:// gateway URL.")
    var cacert: String?

    var resolvedToken: String? { token ?? ProcessInfo.processInfo.environment["NBD_GATEWAY_TOKEN"] }
}

/// One export of an nbd-gateway, reached through its data URL
/// (`http(s)://HOST[:PORT][/BASE]/exports/NAME/data`).
final class GatewayClient: Sendable {
    /// The export's URL without `/data`: the metadata, and the base of its other routes.
    let exportURL: String
    let dataURL: String
    private let http: HTTPClient
    private let authorization: String?

    /// Whether `location` names a gateway data URL (anything else over HTTP is refused, not guessed).
    static func isURL(_ location: String) -> Bool {
        location.hasPrefix("http://") || location.hasPrefix("https://")
    }

    init(_ location: String, options: GatewayOptions, connections: Int) throws {
        guard let url = URL(string: location), url.query == nil, url.path.hasSuffix("/data"),
            url.path.contains("/exports/")
        else {
            throw NBDError(.invalidURI, "\(location) is not a gateway data URL (http(s)://HOST[:PORT]/exports/NAME/data)")
        }
        dataURL = location
        exportURL = String(location.dropLast("/data".count))
        var configuration = HTTPClient.Configuration()
        configuration.httpVersion = .http1Only
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(1, connections))
        configuration.redirectConfiguration = .disallow
        // A refused connection or an untrusted certificate fails the command at once instead
        // of being retried until the connect timeout.
        configuration.connectionPool.retryConnectionEstablishment = false
        if let cacert = options.cacert {
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.trustRoots = .file(cacert)
            configuration.tlsConfiguration = tls
        }
        http = HTTPClient(eventLoopGroup: MultiThreadedEventLoopGroup.singleton, configuration: configuration)
        authorization = options.resolvedToken.map { "Bearer \($0)" }
    }

    func shutdown() async {
        try? await http.shutdown()
    }

    // MARK: - Routes

    /// The export's metadata (`GET /exports/NAME`: the fields of `nbd info --json`, and more
    /// that are not needed here) and its entity tag.
    func metadata() async throws -> (NBDExportMetadata, etag: String?) {
        let response = try await send(.GET, exportURL)
        let body = try await expect(response, [.ok], limit: 1 << 20)
        return (try decode(NBDExportMetadata.self, body), response.headers.first(name: "ETag"))
    }

    /// The extents of `context` from `offset`, following the gateway's partial answers to the end.
    func extents(at offset: UInt64, length: UInt64, context: String) async throws -> [NBDExtent] {
        var extents: [NBDExtent] = []
        var position = offset
        let end = offset + length
        while position < end {
            let query = "offset=\(position)&length=\(end - position)&context=\(Self.queryEscaped(context))"
            let body = try await expect(try await send(.GET, "\(exportURL)/extents?\(query)"), [.ok], limit: 64 << 20)
            let answer = try decode(GatewayExtents.self, body)
            guard answer.length > 0 else { throw NBDError(.protocolViolation, "the gateway described no bytes at \(position)") }
            for extent in answer.extents {
                // Flag bits as NBD has them: base:allocation HOLE 1, ZERO 2; a bitmap's DIRTY 1.
                let flags: UInt32 = (extent.hole == true ? 1 : 0) | (extent.zero == true ? 2 : 0) | (extent.dirty == true ? 1 : 0)
                    | UInt32(extent.depth ?? extent.flags ?? 0)
                extents.append(NBDExtent(offset: extent.offset, length: extent.length, flags: flags))
            }
            position += answer.length
        }
        return extents
    }

    /// `length` bytes at `offset`, as the pieces they arrived in (never joined: a copy
    /// writes them with one pwritev); with `ifMatch`, 412 when the disk changed since that tag.
    func read(at offset: UInt64, length: Int, ifMatch: String?) async throws -> [ByteBuffer] {
        var headers = [("Range", "bytes=\(offset)-\(offset + UInt64(length) - 1)")]
        if let ifMatch { headers.append(("If-Match", ifMatch)) }
        let response = try await send(.GET, dataURL, headers: headers)
        guard response.status == .partialContent else {
            _ = try await expect(response, [.partialContent], limit: 1 << 20)
            return []
        }
        var pieces: [ByteBuffer] = []
        var received = 0
        do {
            for try await piece in response.body {
                received += piece.readableBytes
                guard received <= length else { break }
                pieces.append(piece)
            }
        } catch {
            throw NBDError(.connectionLost, "the gateway's answer was cut: \(NBDClient.plainDescription(of: error))")
        }
        guard received == length else {
            throw NBDError(.protocolViolation, "the gateway sent \(received) bytes where \(length) were asked at \(offset)")
        }
        return pieces
    }

    /// A PUT of `buffers` at `offset`, with its SHA-256 `Content-Digest` checked by the gateway.
    func write(at offset: UInt64, _ buffers: [ByteBuffer]) async throws {
        var hash = SHA256()
        var length = 0
        for buffer in buffers {
            buffer.withUnsafeReadableBytes { hash.update(bufferPointer: $0) }
            length += buffer.readableBytes
        }
        let digest = Data(hash.finalize()).base64EncodedString()
        let body = HTTPClientRequest.Body.stream(BufferSequence(buffers: buffers), length: .known(Int64(length)))
        let response = try await send(.PUT, "\(dataURL)?offset=\(offset)", headers: [("Content-Digest", "sha-256=:\(digest):")], body: body)
        _ = try await expect(response, [.ok, .noContent], limit: 1 << 20)
    }

    /// `POST /zero`: fast first where the export offers it (a 501 means "not fast here").
    func zero(at offset: UInt64, length: UInt64, fast: Bool) async throws {
        if fast {
            let response = try await send(.POST, "\(exportURL)/zero?offset=\(offset)&length=\(length)&fast=1")
            if response.status != .notImplemented {
                _ = try await expect(response, [.ok], limit: 1 << 20)
                return
            }
            _ = try? await response.body.collect(upTo: 1 << 20)
        }
        _ = try await expect(try await send(.POST, "\(exportURL)/zero?offset=\(offset)&length=\(length)"), [.ok], limit: 1 << 20)
    }

    func flush() async throws {
        _ = try await expect(try await send(.POST, "\(exportURL)/flush"), [.ok], limit: 1 << 20)
    }

    /// The gateway's block checksum of a range (`GET /checksum`).
    func checksum(offset: UInt64, length: UInt64, algorithm: String, blockSize: Int) async throws -> GatewayChecksum {
        let query = "algorithm=\(algorithm)&block_size=\(blockSize)&offset=\(offset)&length=\(length)"
        let body = try await expect(try await send(.GET, "\(exportURL)/checksum?\(query)"), [.ok], limit: 1 << 20)
        return try decode(GatewayChecksum.self, body)
    }

    // MARK: - Plumbing

    private func send(_ method: HTTPMethod, _ url: String, headers: [(String, String)] = [], body: HTTPClientRequest.Body? = nil) async throws -> HTTPClientResponse {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let authorization { request.headers.add(name: "Authorization", value: authorization) }
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        request.body = body
        do {
            return try await http.execute(request, deadline: .distantFuture)
        } catch let error as NBDError {
            throw error
        } catch {
            throw NBDError(.connectionFailed, "\(method) \(url): \(NBDClient.plainDescription(of: error))")
        }
    }

    /// The body of an answer with one of `statuses`; any other status becomes a `GatewayFailure`
    /// carrying the gateway's JSON error.
    private func expect(_ response: HTTPClientResponse, _ statuses: [HTTPResponseStatus], limit: Int) async throws -> ByteBuffer {
        let body: ByteBuffer
        do {
            body = try await response.body.collect(upTo: max(limit, 1 << 20))
        } catch {
            throw NBDError(.connectionLost, "the gateway's answer was cut: \(error)")
        }
        guard statuses.contains(response.status) else { throw GatewayFailure(status: response.status, body: body) }
        return body
    }

    private func decode<T: Decodable>(_ type: T.Type, _ body: ByteBuffer) throws -> T {
        do {
            return try JSONDecoder().decode(type, from: Data(body.readableBytesView))
        } catch {
            throw NBDError(.protocolViolation, "the gateway's answer is not the JSON expected: \(error)")
        }
    }

    private static func queryEscaped(_ value: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~:")
        return value.addingPercentEncoding(withAllowedCharacters: allowed) ?? value
    }
}

/// An answer other than the one expected: the status and the gateway's JSON error, if any.
struct GatewayFailure: Error, CustomStringConvertible {
    var status: HTTPResponseStatus
    var code: String?
    var message: String?
    var nbdError: String?

    init(status: HTTPResponseStatus, body: ByteBuffer) {
        self.status = status
        struct Envelope: Decodable {
            struct Detail: Decodable {
                var code: String
                var message: String
                var nbd_error: String?
            }
            var error: Detail
        }
        if let envelope = try? JSONDecoder().decode(Envelope.self, from: Data(body.readableBytesView)) {
            code = envelope.error.code
            message = envelope.error.message
            nbdError = envelope.error.nbd_error
        }
    }

    var description: String {
        var text = "HTTP \(status.code)"
        if let code { text += " \(code)" }
        if let message { text += ": \(message)" }
        if let nbdError { text += " (\(nbdError))" }
        return text
    }
}

/// One page of `/extents`.
struct GatewayExtents: Decodable {
    struct Extent: Decodable {
        var offset: UInt64
        var length: UInt64
        var hole: Bool?
        var zero: Bool?
        var dirty: Bool?
        var depth: UInt64?
        var flags: UInt64?
    }
    var offset: UInt64
    var length: UInt64
    var extents: [Extent]
}

/// The gateway's `/checksum` answer.
struct GatewayChecksum: Codable {
    var algorithm: String
    var blockSize: Int
    var offset: UInt64
    var length: UInt64
    var checksum: String

    enum CodingKeys: String, CodingKey {
        case algorithm
        case blockSize = "block_size"
        case offset, length, checksum
    }
}

/// Buffers handed to a request body one after another, uncopied.
struct BufferSequence: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    let buffers: [ByteBuffer]

    struct AsyncIterator: AsyncIteratorProtocol {
        var remaining: ArraySlice<ByteBuffer>
        mutating func next() async -> ByteBuffer? { remaining.popFirst() }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(remaining: buffers[...]) }
}
