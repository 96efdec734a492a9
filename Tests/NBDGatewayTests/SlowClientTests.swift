import Foundation
import NBDTestSupport
import Testing

/// Clients that hold connections without finishing a request.
@Suite("Slow and stuck clients", .timeLimit(.minutes(1)))
struct SlowClientTests {
    @Test("--header-timeout: 100 connections stuck in their request line are closed after it; an idle keep-alive connection stays")
    func headerTimeout() async throws {
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--header-timeout", "1", "--keep-alive-timeout", "30"]) { gateway, _ in
            let port = gateway.port
            let keepAlive = HTTPRequest("GET", "/healthz", headers: [("Connection", "keep-alive")])
            try await blockingPool.runIfActive {
                let kept = try RawHTTP.Connection(port: port)
                defer { kept.close() }
                #expect(try kept.exchange(keepAlive, port: port).status == 200)
                var stuck: [RawHTTP.Connection] = []
                for _ in 0..<100 {
                    let connection = try RawHTTP.Connection(port: port, timeoutSeconds: 8)
                    _ = connection.write(Array("GET /heal".utf8))
                    stuck.append(connection)
                }
                let started = ContinuousClock.now
                for connection in stuck {
                    #expect(connection.readToEnd().isEmpty, "a stuck connection got an answer")
                    connection.close()
                }
                let took = ContinuousClock.now - started
                // Closed by the header timeout (1 s, checked about every second), not by the
                // 30 s keep-alive timeout (the reads would give up at 8 s).
                #expect(took < .seconds(6), "the stuck connections stayed open \(took)")
                // Longer than the header timeout has passed: the completed connection still serves.
                #expect(try kept.exchange(keepAlive, port: port).status == 200)
            }
            try await gateway.expectServing("disk")
        }
    }
}
