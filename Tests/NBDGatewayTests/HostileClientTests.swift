import Foundation
import NBDTestSupport
import Testing

/// Clients that hold the gateway's resources without playing along.
@Suite("Hostile clients", .timeLimit(.minutes(3)))
struct HostileClientTests {
    @Test("8 clients that ask for a 256 MiB disk and never read: memory stays bounded, others are served at once, all is released when they go")
    func clientsThatNeverRead() async throws {
        try await withNBDKitGateway(["pattern", "size=256M"]) { gateway, _ in
            let port = gateway.port
            let pid = gateway.process.pid
            let before = try SoakTests.resources(pid)
            try await blockingPool.runIfActive {
                let stalled = try (0..<8).map { _ in try RawHTTP.Connection(port: port, timeoutSeconds: 5) }
                for connection in stalled { _ = connection.write(Array("GET /exports/disk/data HTTP/1.1\r\nHost: x\r\n\r\n".utf8)) }
                // Resident memory over 2 s while the gateway fills what it may (its body window,
                // the socket buffers): a measurement window, sampled every 100 ms.
                var peak = 0
                let window = ContinuousClock.now + .seconds(2)
                while ContinuousClock.now < window {
                    peak = max(peak, try SoakTests.resources(pid).residentKiB)
                    Thread.sleep(forTimeInterval: 0.1)
                }
                #expect(peak - before.residentKiB < 128 * 1024, "resident memory grew from \(before.residentKiB) to \(peak) KiB")
                // Others are served meanwhile, promptly.
                let started = ContinuousClock.now
                let other = try RawHTTP.Connection(port: port)
                let range = try other.exchange(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=4096-8191")]), port: port)
                other.close()
                #expect(range.status == 206 && ContinuousClock.now - started < .seconds(2))
                for connection in stalled { connection.close() }
            }
            try await waitUntil("the stalled downloads are released") {
                try SoakTests.resources(pid).descriptors <= before.descriptors + 4
            }
            try await gateway.expectServing("disk")
        }
    }

    @Test("a half-closed client (request sent, then SHUT_WR) still gets its whole answer")
    func halfClosed() async throws {
        try await withNBDKitGateway(["pattern", "size=1M"]) { gateway, _ in
            let port = gateway.port
            let body = try await blockingPool.runIfActive { () -> [UInt8] in
                let connection = try RawHTTP.Connection(port: port)
                defer { connection.close() }
                _ = connection.write(Array("GET /exports/disk/data HTTP/1.1\r\nHost: x\r\nRange: bytes=0-65535\r\nConnection: close\r\n\r\n".utf8))
                connection.shutdownWrite()
                return connection.readToEnd()
            }
            let text = String(decoding: body.prefix(200), as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 206"), "\(text)")
            #expect(body.count > 65536, "the answer was cut: \(body.count) bytes")
            try await gateway.expectServing("disk")
        }
    }
}
