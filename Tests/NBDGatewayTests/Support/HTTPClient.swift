import Foundation
import NBDTestSupport

/// An HTTP/1.1 request as the raw client sends it; anything may be malformed on purpose.
struct HTTPRequest: Sendable {
    var method: String
    /// Path and query, sent verbatim.
    var target: String
    /// Sent in order, names as given. `Host`, `Content-Length` and `Connection: close` are
    /// added unless present (or unless `automaticHeaders` is false).
    var headers: [(name: String, value: String)] = []
    var body: [UInt8]?
    /// Send the body with `Transfer-Encoding: chunked`, in chunks of `chunkSize`.
    var chunked = false
    var chunkSize = 65536
    /// Send `Expect: 100-continue` and hold the body back until `100 Continue` arrives; a final
    /// answer instead means the body is never sent (see `HTTPResponse.bodyBytesSent`).
    var expectContinue = false
    /// Send only this many body bytes, then close the connection without reading an answer.
    var truncateBodyAt: Int?
    /// Declare the body in the headers but never send it, even after `100 Continue`: the
    /// answer must come from the headers alone.
    var withholdBody = false
    var automaticHeaders = true

    init(_ method: String, _ target: String, headers: [(name: String, value: String)] = [], body: [UInt8]? = nil) {
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
    }

    /// The path without the query.
    var path: String { String(target.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false)[0]) }
}

/// A response as read off the wire; header names keep their case.
struct HTTPResponse: Sendable {
    var status: Int
    var reason: String
    var headers: [(name: String, value: String)]
    var body: [UInt8]
    /// Whether the body arrived whole per its framing (false: the server cut the connection).
    var complete: Bool
    /// Interim (1xx) statuses received before the final one.
    var interim: [Int]
    /// Body bytes the client actually sent.
    var bodyBytesSent: Int

    /// The first value of a header, matched case-insensitively.
    func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name.lowercased() == wanted }?.value
    }

    /// Whether a header is present with exactly this spelling of its name.
    func hasHeader(exactly name: String) -> Bool { headers.contains { $0.name == name } }

    var text: String { String(decoding: body, as: UTF8.self) }

    /// The body as a JSON object.
    func json() throws -> [String: Any] {
        guard let object = try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any] else {
            throw TestFailure("not a JSON object: \(text)")
        }
        return object
    }

    /// The `error` object of an error answer.
    func errorObject() throws -> [String: Any] {
        guard let error = try json()["error"] as? [String: Any] else { throw TestFailure("no error object in \(text)") }
        return error
    }

    /// `error.code` of an error answer, or nil.
    var errorCode: String? { (try? errorObject())?["code"] as? String }

    var summary: String { "\(status) \(headers.map { "\($0.name): \($0.value)" }.joined(separator: "; ")) \(text.prefix(400))" }
}

/// A minimal blocking HTTP/1.1 client over a TCP socket, run on `blockingPool`. Blocking
/// sockets with send/receive timeouts keep every exchange bounded in time.
enum RawHTTP {
    static let ioTimeoutSeconds = 30

    /// One request on a fresh connection.
    static func send(_ request: HTTPRequest, port: Int, timeoutSeconds: Int = ioTimeoutSeconds) async throws -> HTTPResponse {
        try await blockingPool.runIfActive {
            let connection = try Connection(port: port, timeoutSeconds: timeoutSeconds)
            defer { connection.close() }
            return try connection.exchange(request, port: port)
        }
    }

    /// Several requests, one after the other, on one keep-alive connection.
    static func sendSequence(_ requests: [HTTPRequest], port: Int) async throws -> [HTTPResponse] {
        try await blockingPool.runIfActive {
            let connection = try Connection(port: port)
            defer { connection.close() }
            return try requests.map { try connection.exchange($0, port: port) }
        }
    }

    /// Sends raw bytes, then reads until the server closes (or the timeout); returns what came back.
    static func sendRaw(_ bytes: [UInt8], port: Int, readTimeoutSeconds: Int = 10) async throws -> [UInt8] {
        try await blockingPool.runIfActive {
            let connection = try Connection(port: port, timeoutSeconds: readTimeoutSeconds)
            defer { connection.close() }
            _ = connection.write(bytes)
            return connection.readToEnd()
        }
    }

    /// One TCP connection (used by a single thread at a time; it may be handed from one to
    /// the next, hence the unchecked Sendable).
    final class Connection: @unchecked Sendable {
        private let fd: Int32
        private var buffer: [UInt8] = []
        private var closed = false

        /// `source` binds the client end to another loopback address (127.0.0.2, …): another client.
        init(port: Int, timeoutSeconds: Int = RawHTTP.ioTimeoutSeconds, source: String? = nil) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw TestFailure("socket failed: \(errno)") }
            var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            if let source {
                var local = sockaddr_in()
                local.sin_family = sa_family_t(AF_INET)
                local.sin_addr.s_addr = inet_addr(source)
                let bound = withUnsafePointer(to: &local) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
                guard bound == 0 else {
                    Glibc.close(fd)
                    throw TestFailure("cannot bind to \(source): errno \(errno)")
                }
            }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = UInt16(port).bigEndian
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard connected == 0 else {
                let code = errno
                Glibc.close(fd)
                throw TestFailure("cannot connect to 127.0.0.1:\(port): errno \(code)")
            }
        }

        func close() {
            guard !closed else { return }
            closed = true
            Glibc.close(fd)
        }

        /// Half-closes: the server reads end of stream, and can still answer.
        func shutdownWrite() { _ = Glibc.shutdown(fd, Int32(SHUT_WR)) }

        /// Writes everything; false when the peer is gone (no SIGPIPE: MSG_NOSIGNAL).
        @discardableResult
        func write(_ bytes: [UInt8]) -> Bool {
            var offset = 0
            while offset < bytes.count {
                let count = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return false }
                offset += count
            }
            return true
        }

        /// Reads more bytes into the buffer; false at end of stream, error or timeout.
        private func fill() -> Bool {
            var chunk = [UInt8](repeating: 0, count: 65536)
            while true {
                let count = Glibc.recv(fd, &chunk, chunk.count, 0)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { return false }
                buffer += chunk[0..<count]
                return true
            }
        }

        func readToEnd() -> [UInt8] {
            while fill() {}
            defer { buffer.removeAll() }
            return buffer
        }

        private func readLine() -> String? {
            while true {
                if let index = buffer.firstIndex(of: 10) {
                    var line = Array(buffer[..<index])
                    buffer.removeSubrange(...index)
                    if line.last == 13 { line.removeLast() }
                    return String(decoding: line, as: UTF8.self)
                }
                guard fill() else { return nil }
            }
        }

        private func readExactly(_ count: Int) -> (bytes: [UInt8], complete: Bool) {
            while buffer.count < count {
                guard fill() else { break }
            }
            let available = min(count, buffer.count)
            defer { buffer.removeSubrange(..<available) }
            return (Array(buffer[..<available]), available == count)
        }

        /// Status line and headers; nil if the connection ended first.
        private func readHead() throws -> (status: Int, reason: String, headers: [(name: String, value: String)])? {
            guard let statusLine = readLine() else { return nil }
            let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let status = Int(parts[1]) else {
                throw TestFailure("bad status line: \(statusLine)")
            }
            var headers: [(name: String, value: String)] = []
            while let line = readLine(), !line.isEmpty {
                guard let colon = line.firstIndex(of: ":") else { throw TestFailure("bad header line: \(line)") }
                headers.append((String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)))
            }
            return (status, parts.count > 2 ? String(parts[2]) : "", headers)
        }

        private func requestHead(_ request: HTTPRequest, port: Int) -> [UInt8] {
            var headers = request.headers
            func has(_ name: String) -> Bool { headers.contains { $0.name.lowercased() == name.lowercased() } }
            if request.automaticHeaders {
                if !has("Host") { headers.insert(("Host", "127.0.0.1:\(port)"), at: 0) }
                if let body = request.body {
                    if request.chunked {
                        if !has("Transfer-Encoding") { headers.append(("Transfer-Encoding", "chunked")) }
                    } else if !has("Content-Length") {
                        headers.append(("Content-Length", String(body.count)))
                    }
                }
                if request.expectContinue && !has("Expect") { headers.append(("Expect", "100-continue")) }
                if !has("Connection") { headers.append(("Connection", "close")) }
            }
            var text = "\(request.method) \(request.target) HTTP/1.1\r\n"
            for header in headers { text += "\(header.name): \(header.value)\r\n" }
            text += "\r\n"
            return Array(text.utf8)
        }

        private func encodedBody(_ request: HTTPRequest) -> [UInt8] {
            guard let body = request.body else { return [] }
            guard request.chunked else { return body }
            var out: [UInt8] = []
            var offset = 0
            while offset < body.count {
                let count = min(request.chunkSize, body.count - offset)
                out += Array(String(count, radix: 16).utf8) + [13, 10] + body[offset..<(offset + count)] + [13, 10]
                offset += count
            }
            return out + Array("0\r\n\r\n".utf8)
        }

        /// Sends a request and reads its answer (skipping interim 1xx answers).
        func exchange(_ request: HTTPRequest, port: Int) throws -> HTTPResponse {
            guard write(requestHead(request, port: port)) else { throw TestFailure("the server closed before the request was sent") }
            var body = encodedBody(request)
            var sent = 0
            var interim: [Int] = []
            if let cut = request.truncateBodyAt {
                body = Array(body.prefix(cut))
                write(body)
                close()
                return HTTPResponse(status: 0, reason: "", headers: [], body: [], complete: false, interim: [], bodyBytesSent: body.count)
            }
            if !request.expectContinue && !request.withholdBody {
                // The server may answer and close before reading the body: that is fine.
                if write(body) { sent = body.count }
            }
            while true {
                guard let head = try readHead() else { throw TestFailure("the connection closed without an answer to \(request.method) \(request.target)") }
                if (100..<200).contains(head.status) {
                    interim.append(head.status)
                    if head.status == 100 && request.expectContinue && !request.withholdBody && sent == 0 && !body.isEmpty {
                        if write(body) { sent = body.count }
                    }
                    continue
                }
                let isHead = request.method == "HEAD"
                var responseBody: [UInt8] = []
                var complete = true
                let lowered = Dictionary(head.headers.map { ($0.name.lowercased(), $0.value) }, uniquingKeysWith: { first, _ in first })
                if isHead || head.status == 204 || head.status == 304 {
                    // No body.
                } else if lowered["transfer-encoding"]?.lowercased().contains("chunked") == true {
                    complete = false
                    while let sizeLine = readLine(), let size = Int(sizeLine.split(separator: ";")[0].trimmingCharacters(in: .whitespaces), radix: 16) {
                        if size == 0 {
                            while let trailer = readLine(), !trailer.isEmpty {}
                            complete = true
                            break
                        }
                        let (chunk, whole) = readExactly(size)
                        responseBody += chunk
                        guard whole, readLine() != nil else { break }
                    }
                } else if let lengthText = lowered["content-length"], let length = Int(lengthText) {
                    (responseBody, complete) = readExactly(length)
                } else {
                    responseBody = readToEnd()
                }
                return HTTPResponse(status: head.status, reason: head.reason, headers: head.headers, body: responseBody,
                                    complete: complete, interim: interim, bodyBytesSent: sent)
            }
        }
    }
}

/// One part of a `multipart/byteranges` body.
struct BodyPart: Sendable {
    var headers: [(name: String, value: String)]
    var data: [UInt8]

    func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }
}

enum Multipart {
    /// The boundary parameter of a `multipart/byteranges; boundary=...` content type.
    static func boundary(of contentType: String) -> String? {
        for parameter in contentType.split(separator: ";").dropFirst() {
            let pair = parameter.trimmingCharacters(in: .whitespaces).split(separator: "=", maxSplits: 1)
            if pair.count == 2, pair[0].lowercased() == "boundary" {
                return pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\""))
            }
        }
        return nil
    }

    /// Splits a multipart body (RFC 2046): parts between `--boundary` delimiters, up to `--boundary--`.
    static func parse(_ body: [UInt8], boundary: String) throws -> [BodyPart] {
        let delimiter = Array("\r\n--\(boundary)".utf8)
        // The first delimiter may come without the CRLF before it.
        let data = body.starts(with: Array("--\(boundary)".utf8)) ? [13, 10] + body : body
        var positions: [Int] = []
        var index = 0
        while index + delimiter.count <= data.count {
            if data[index] == delimiter[0] && Array(data[index..<(index + delimiter.count)]) == delimiter {
                positions.append(index)
                index += delimiter.count
            } else {
                index += 1
            }
        }
        guard positions.count >= 2 else { throw TestFailure("no multipart delimiters for boundary \(boundary)") }
        var parts: [BodyPart] = []
        for (number, start) in positions.enumerated() {
            let afterDelimiter = start + delimiter.count
            if data[afterDelimiter...].starts(with: Array("--".utf8)) {
                guard number == positions.count - 1 else { throw TestFailure("close delimiter before the last part") }
                return parts
            }
            guard number + 1 < positions.count else { break }
            let segment = Array(data[afterDelimiter..<positions[number + 1]])
            guard segment.starts(with: [13, 10]) else { throw TestFailure("delimiter not followed by CRLF") }
            let content = Array(segment.dropFirst(2))
            guard let headerEnd = content.firstRange(of: [13, 10, 13, 10]) else { throw TestFailure("part without a header end") }
            let headerText = String(decoding: content[..<headerEnd.lowerBound], as: UTF8.self)
            let headers = headerText.components(separatedBy: "\r\n").filter { !$0.isEmpty }.compactMap { line -> (name: String, value: String)? in
                guard let colon = line.firstIndex(of: ":") else { return nil }
                return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
            }
            parts.append(BodyPart(headers: headers, data: Array(content[headerEnd.upperBound...])))
        }
        throw TestFailure("multipart body without a close delimiter")
    }
}
