import Foundation
import NBDTestSupport
import Testing

/// Clients that hold connections without finishing a request.
@Suite("Slow and stuck clients", .timeLimit(.minutes(3)))
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

    @Test("--header-timeout is a deadline: 300 connections dripping a header byte every 200 ms are closed after it")
    func drippingHeaders() async throws {
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--header-timeout", "2", "--keep-alive-timeout", "30"]) { gateway, _ in
            let port = gateway.port
            try await blockingPool.runIfActive {
                var open = try (0..<300).map { _ in try RawHTTP.Connection(port: port, timeoutSeconds: 1) }
                let started = ContinuousClock.now
                _ = open.map { $0.write(Array("GET /healthz HTTP/1.1\r\nX-Slow: ".utf8)) }
                // Each round every connection sends one more byte; a closed one fails its write.
                while !open.isEmpty && ContinuousClock.now - started < .seconds(10) {
                    Thread.sleep(forTimeInterval: 0.2)  // The drip rate itself, not a wait for the gateway.
                    open = open.filter { connection in
                        if connection.write([UInt8(ascii: "a")]) { return true }
                        connection.close()
                        return false
                    }
                }
                let took = ContinuousClock.now - started
                #expect(open.isEmpty, "\(open.count) dripping connections were still open after \(took)")
                #expect(took < .seconds(6), "closed only after \(took)")
                for connection in open { connection.close() }
            }
            let metrics = try await gateway.get("/metrics").text
            #expect(metrics.contains("nbd_gateway_header_timeouts_total 300"), "\(metrics.split(separator: "\n").filter { $0.contains("header") })")
            try await gateway.expectServing("disk")
        }
    }
}
