import NBDTestSupport
import NBDClient
import NBDProtocol
import NIOCore
import Testing

/// The client against a scripted server that misbehaves after a correct handshake.
@Suite("Hostile servers")
struct HostileServerTests {
    typealias Request = FakeNBDServer.Request
    typealias Action = FakeNBDServer.Action

    /// A generous request timeout, so that a client that wrongly waits fails instead of hanging.
    static let configuration = NBDClientConfiguration(requestTimeout: .seconds(20))

    static let simpleExport = FakeNBDServer.Export(structuredReplies: false)

    /// A script answering only the newest request.
    static func eachRequest(_ reply: @escaping @Sendable (Request) -> [Action]) -> FakeNBDServer.Script {
        { requests in reply(requests[requests.count - 1]) }
    }

    /// A correct reply to any request, simple or structured.
    static func correctReply(_ request: Request, structured: Bool) -> [UInt8] {
        guard request.command == 0 else { return FakeReply.simple(cookie: request.cookie) }
        let data = fakeData(offset: request.offset, length: Int(request.length))
        if structured {
            return FakeReply.offsetData(cookie: request.cookie, offset: request.offset, data: data, done: true)
        }
        return FakeReply.simple(cookie: request.cookie, data: data)
    }

    /// Connects, reads 4096 bytes at 0 (which the script answers), expects one of `codes`, then
    /// checks that the connection is unusable: a second read fails without reaching the server.
    @discardableResult
    static func expectHostileRead(
        export: FakeNBDServer.Export = FakeNBDServer.Export(),
        _ codes: [NBDError.Code] = [.protocolViolation],
        sourceLocation: SourceLocation = #_sourceLocation,
        reply: @escaping @Sendable (Request) -> [Action]
    ) async throws -> NBDError? {
        var thrown: NBDError?
        try await withFakeServer(export: export, script: eachRequest(reply), sourceLocation: sourceLocation) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: configuration)
            thrown = await expectNBDFailure(codes, sourceLocation: sourceLocation) {
                _ = try await client.read(at: 0, length: 4096)
            }
            await expectNBDFailure([.protocolViolation, .connectionLost, .disconnected], sourceLocation: sourceLocation) {
                _ = try await client.read(at: 0, length: 512)
            }
            #expect(server.requests.count == 1, "a request was sent on a broken connection", sourceLocation: sourceLocation)
            await client.disconnect()
        }
        return thrown
    }

    // MARK: - The fake server itself

    @Test func fakeServerNegotiatesAndServesStructuredReads() async throws {
        let script = Self.eachRequest { [.send(Self.correctReply($0, structured: true))] }
        try await withFakeServer(script: script) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: Self.configuration)
            #expect(server.options == [8, 10, 7])
            #expect(client.size == 1 << 20)
            #expect(client.info.structuredReplies)
            #expect(client.info.canBlockStatus)
            #expect(client.info.canFlush)
            let data = try await client.read(at: 4096, length: 8192)
            #expect(Array(data.readableBytesView) == fakeData(offset: 4096, length: 8192))
            let request = try #require(server.requests.first)
            #expect(request.command == 0 && request.offset == 4096 && request.length == 8192 && request.flags == 0)
            try await client.flush()
            #expect(server.requests.map(\.command) == [0, 3])
            await client.disconnect()
        }
    }

    @Test func fakeServerServesSimpleReads() async throws {
        let script = Self.eachRequest { [.send(Self.correctReply($0, structured: false))] }
        try await withFakeServer(export: Self.simpleExport, script: script) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: Self.configuration)
            #expect(server.options == [8, 7])  // no SET_META_CONTEXT without structured replies
            #expect(!client.info.structuredReplies)
            #expect(!client.info.canBlockStatus)
            let data = try await client.read(at: 100, length: 1000)
            #expect(Array(data.readableBytesView) == fakeData(offset: 100, length: 1000))
            await client.disconnect()
        }
    }

    @Test func unknownExportIsATypedError() async throws {
        try await withFakeServer(export: FakeNBDServer.Export(name: "disk"), script: { _ in [] }) { server in
            let error = await expectNBDFailure([.unknownExport]) {
                _ = try await NBDClient.connect(to: "nbd+unix:///nope?socket=\(server.socketPath)", configuration: Self.configuration)
            }
            #expect(error?.optionError == .unknown)
            #expect(error?.exportName == "nope")
            #expect(server.requests.isEmpty)
        }
    }

    // MARK: - Broken replies

    @Test func badReplyMagic() async throws {
        try await Self.expectHostileRead { request in
            var reply = FakeReply.simple(cookie: request.cookie, data: fakeData(offset: 0, length: 4096))
            reply[3] = 0x99
            return [.send(reply)]
        }
    }

    @Test func unknownCookie() async throws {
        try await Self.expectHostileRead { request in
            [.send(FakeReply.simple(cookie: request.cookie &+ 1000, data: fakeData(offset: 0, length: 4096)))]
        }
    }

    @Test func unknownCookieInAStructuredChunk() async throws {
        try await Self.expectHostileRead { request in
            [.send(FakeReply.none(cookie: request.cookie ^ 0xFFFF_0000_0000_0000))]
        }
    }

    @Test func oversizedMetadataChunkLength() async throws {
        // A 4 GiB error chunk: only its header is sent and the connection stays open, so a
        // client that waited for the payload would hit the 20-second request timeout.
        try await Self.expectHostileRead { request in
            [.send(FakeReply.chunkHeader(flags: 1, type: 0x8001, cookie: request.cookie, length: 0xFFFF_FFFF))]
        }
    }

    @Test func oversizedDataChunkLength() async throws {
        try await Self.expectHostileRead { request in
            [.send(FakeReply.chunkHeader(flags: 1, type: 1, cookie: request.cookie, length: 0xFFFF_FFF0) + FakeBE.u64(0))]
        }
    }

    @Test func truncatedReplyHeaderThenClose() async throws {
        try await Self.expectHostileRead([.connectionLost, .protocolViolation]) { request in
            [.send(Array(FakeReply.simple(cookie: request.cookie).prefix(10))), .close]
        }
    }

    @Test func truncatedReadDataThenClose() async throws {
        try await Self.expectHostileRead(export: Self.simpleExport, [.connectionLost, .protocolViolation]) { request in
            [.send(FakeReply.simple(cookie: request.cookie, data: fakeData(offset: 0, length: 1000))), .close]
        }
    }

    @Test func truncatedDataChunkThenClose() async throws {
        try await Self.expectHostileRead([.connectionLost, .protocolViolation]) { request in
            let chunk = FakeReply.offsetData(cookie: request.cookie, offset: 0, data: fakeData(offset: 0, length: 4096), done: true)
            return [.send(Array(chunk.prefix(2000))), .close]
        }
    }

    @Test func garbageBytes() async throws {
        try await Self.expectHostileRead { _ in
            [.send(Array("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n".utf8))]
        }
    }

    @Test func structuredChunkWithoutStructuredReplies() async throws {
        try await Self.expectHostileRead(export: Self.simpleExport) { request in
            [.send(FakeReply.offsetData(cookie: request.cookie, offset: 0, data: fakeData(offset: 0, length: 4096), done: true))]
        }
    }

    @Test func dataChunkOutsideTheRequest() async throws {
        try await Self.expectHostileRead { request in
            [.send(FakeReply.offsetData(cookie: request.cookie, offset: 4096, data: fakeData(offset: 4096, length: 4096), done: true))]
        }
    }

    @Test func unknownNonErrorChunkType() async throws {
        try await Self.expectHostileRead { request in
            [.send(FakeReply.chunk(flags: 1, type: 42, cookie: request.cookie, payload: [1, 2, 3, 4]))]
        }
    }

    // MARK: - Incomplete structured reads

    @Test func structuredReadWithAGap() async throws {
        // Half the range, then NONE with DONE: the other half was never sent.
        let error = try await Self.expectHostileRead { request in
            [
                .send(FakeReply.offsetData(cookie: request.cookie, offset: 0, data: fakeData(offset: 0, length: 2048))),
                .send(FakeReply.none(cookie: request.cookie)),
            ]
        }
        #expect(error?.message.contains("2048") == true)
    }

    @Test func structuredReadEndingEarlyWithDone() async throws {
        try await Self.expectHostileRead { request in
            [
                .send(FakeReply.hole(cookie: request.cookie, offset: 0, length: 1024)),
                .send(FakeReply.offsetData(cookie: request.cookie, offset: 2048, data: fakeData(offset: 2048, length: 2048), done: true)),
            ]
        }
    }

    @Test func overlappingChunksAreRefused() async throws {
        try await Self.expectHostileRead { request in
            [
                .send(FakeReply.offsetData(cookie: request.cookie, offset: 0, data: fakeData(offset: 0, length: 3000))),
                .send(FakeReply.offsetData(cookie: request.cookie, offset: 2000, data: fakeData(offset: 2000, length: 2096), done: true)),
            ]
        }
    }

    /// Chunks 1024..<2048, 0..<1024, then 1024..<3072: the last one continues the previous
    /// range, so its overlap with the first goes unnoticed, and the byte count adds up to 4096
    /// although nothing was sent for 3072..<4096 (the client returns whatever its freshly
    /// allocated, uninitialised buffer held there).
    @Test func overlappingChunksCannotHideAGap() async throws {
        let script = Self.eachRequest { request in
            [
                .send(FakeReply.offsetData(cookie: request.cookie, offset: 1024, data: fakeData(offset: 1024, length: 1024))),
                .send(FakeReply.offsetData(cookie: request.cookie, offset: 0, data: fakeData(offset: 0, length: 1024))),
                .send(FakeReply.offsetData(cookie: request.cookie, offset: 1024, data: fakeData(offset: 1024, length: 2048), done: true)),
            ]
        }
        try await withFakeServer(script: script) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: Self.configuration)
            await expectNBDFailure([.protocolViolation]) {
                _ = try await client.read(at: 0, length: 4096)
            }
            await client.disconnect()
        }
    }

    // MARK: - Timeouts

    @Test func replyThatNeverComesTimesOut() async throws {
        let configuration = NBDClientConfiguration(requestTimeout: .milliseconds(300))
        try await withFakeServer(script: { _ in [] }) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: configuration)
            let clock = ContinuousClock()
            let start = clock.now
            let error = await expectNBDFailure([.timeout]) {
                _ = try await client.read(at: 0, length: 4096)
            }
            let elapsed = clock.now - start
            #expect(elapsed >= .milliseconds(290), "timed out after \(elapsed)")
            #expect(elapsed < TestTiming.stretched(.seconds(10)), "timed out after \(elapsed)")
            #expect(error?.message.contains("300 ms") == true)
            #expect(server.requests.count == 1)
            // The connection was closed by the timeout: nothing more is sent.
            await expectNBDFailure([.timeout, .disconnected, .connectionLost]) {
                _ = try await client.read(at: 0, length: 512)
            }
            #expect(server.requests.count == 1)
            await client.disconnect()
        }
    }

    // MARK: - Errors that leave the connection usable

    /// Waits until two requests are in flight, then fails the one at offset 0 and answers
    /// the other; later requests are answered correctly.
    static func failFirstOfTwo(structured: Bool) -> FakeNBDServer.Script {
        { requests in
            switch requests.count {
            case 1:
                return []  // hold the reply until the second request arrives
            case 2:
                return requests.reversed().map { request in
                    guard request.offset == 0 else { return .send(correctReply(request, structured: structured)) }
                    if structured {
                        return .send(FakeReply.error(cookie: request.cookie, error: 5, message: "media error"))
                    }
                    return .send(FakeReply.simple(cookie: request.cookie, error: 5))
                }
            default:
                return [.send(correctReply(requests[requests.count - 1], structured: structured))]
            }
        }
    }

    @Test(arguments: [false, true])
    func serverErrorOnOneRequestLeavesOthersUsable(structured: Bool) async throws {
        let export = FakeNBDServer.Export(structuredReplies: structured)
        try await withFakeServer(export: export, script: Self.failFirstOfTwo(structured: structured)) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: Self.configuration)
            #expect(client.info.structuredReplies == structured)
            let failing = Task { try await client.read(at: 0, length: 4096) }
            let succeeding = Task { try await client.read(at: 4096, length: 4096) }
            let data = try await succeeding.value
            #expect(Array(data.readableBytesView) == fakeData(offset: 4096, length: 4096))
            let error = await expectNBDFailure([.serverError]) { _ = try await failing.value }
            #expect(error?.errno == .EIO)
            if structured { #expect(error?.message.contains("media error") == true) }

            // Still usable, including at the offset that failed.
            let later = try await client.read(at: 8192, length: 512)
            #expect(Array(later.readableBytesView) == fakeData(offset: 8192, length: 512))
            let again = try await client.read(at: 0, length: 4096)
            #expect(Array(again.readableBytesView) == fakeData(offset: 0, length: 4096))
            #expect(client.isActive)
            #expect(server.requests.count == 4)
            #expect(Set(server.requests.map(\.cookie)).count == 4)
            await client.disconnect()
        }
    }

    @Test func unknownErrorChunkTypeLeavesTheConnectionUsable() async throws {
        let script: FakeNBDServer.Script = { requests in
            let request = requests[requests.count - 1]
            if requests.count == 1 {
                return [.send(FakeReply.error(cookie: request.cookie, error: 1, message: "strange", type: 0x8123))]
            }
            return [.send(Self.correctReply(request, structured: true))]
        }
        try await withFakeServer(script: script) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: Self.configuration)
            let error = await expectNBDFailure([.serverError]) { _ = try await client.read(at: 0, length: 4096) }
            #expect(error?.errno == .EPERM)
            let data = try await client.read(at: 0, length: 4096)
            #expect(Array(data.readableBytesView) == fakeData(offset: 0, length: 4096))
            await client.disconnect()
        }
    }

    @Test(arguments: [
        (UInt32(1), NBDErrno.EPERM),
        (12, .ENOMEM),
        (22, .EINVAL),
        (28, .ENOSPC),
        (75, .EOVERFLOW),
        (95, .ENOTSUP),
        (108, .ESHUTDOWN),
        (9999, NBDErrno(rawValue: 9999)),
    ] as [(UInt32, NBDErrno)])
    func serverErrnoIsReported(value: UInt32, errno: NBDErrno) async throws {
        let script = Self.eachRequest { [.send(FakeReply.simple(cookie: $0.cookie, error: value))] }
        try await withFakeServer(export: Self.simpleExport, script: script) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: Self.configuration)
            let error = await expectNBDFailure([.serverError]) { _ = try await client.read(at: 0, length: 512) }
            #expect(error?.errno == errno)
            #expect(error?.nbdErrorNumber == value)
            #expect(error?.exportName == "")
            await client.disconnect()
        }
    }
}

/// Runs `body`, expecting an `NBDError` with one of `codes`; returns it.
@discardableResult
func expectNBDFailure(
    _ codes: [NBDError.Code],
    sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async -> NBDError? {
    do {
        try await body()
        Issue.record("expected an NBDError (\(codes)), but nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch let error as NBDError {
        #expect(codes.contains(error.code), "unexpected error: \(error.debugDescription)", sourceLocation: sourceLocation)
        return error
    } catch {
        Issue.record("expected an NBDError (\(codes)), got \(error)", sourceLocation: sourceLocation)
        return nil
    }
}
