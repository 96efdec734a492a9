import Foundation
import NBDTestSupport
import Testing

/// How the pool places requests on connections, counted by nbdkit's log filter: requests stay
/// on one connection until it carries `--requests-per-connection` of them, then spread.
@Suite("Pool: one connection under light load, several when it is busy", .timeLimit(.minutes(1)))
struct PoolSpreadTests {
    /// `count` GETs of `length` bytes at once, each read held a second by the delay filter so
    /// that all overlap; returns how many connections nbdkit saw.
    static func connectionsUsed(
        requestsPerConnection: Int, count: Int = 8, length: Int = 4096, filters: [String] = [], parameters: [String] = []
    ) async throws -> Int {
        let logDirectory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: logDirectory) }
        let log = logDirectory.appendingPathComponent("nbdkit.log")
        return try await withServer({
            try await Servers.nbdkit(["--filter=log", "--filter=delay"] + filters + ["memory", "size=4M", "delay-read=1", "logfile=\(log.path)"] + parameters)
        }) { server in
            try await withGateway(["--export", "disk=\(server.uri)", "--pool-size", "4", "--requests-per-connection", String(requestsPerConnection)]) { gateway in
                let port = gateway.port
                try await withThrowingTaskGroup(of: Int.self) { group in
                    for index in 0..<count {
                        group.addTask {
                            let range = "bytes=\(index * length)-\(index * length + length - 1)"
                            return try await RawHTTP.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", range)]), port: port).status
                        }
                    }
                    for try await status in group { #expect(status == 206) }
                }
            }
            let lines = try String(contentsOf: log, encoding: .utf8).split(separator: "\n")
            return lines.filter { $0.contains(" Connect ") }.count
        }
    }

    @Test("eight requests at once, 32 per connection allowed: one connection")
    func lightLoadStaysOnOne() async throws {
        #expect(try await Self.connectionsUsed(requestsPerConnection: 32) == 1)
    }

    @Test("eight requests at once, 2 per connection: the pool opens up to --pool-size")
    func busyConnectionsSpread() async throws {
        #expect(try await Self.connectionsUsed(requestsPerConnection: 2) == 4)
    }

    @Test("a server that refuses more connections: every request is still served on the one it took")
    func refusedConnectionsFallBack() async throws {
        // nbdkit's limit filter drops a second client at once; the 206s are checked inside.
        #expect(try await Self.connectionsUsed(requestsPerConnection: 2, filters: ["--filter=limit"], parameters: ["limit=1"]) == 1)
    }

    @Test("three streamed GETs at once: two share a connection, the third gets another")
    func streamsTakeHalfAConnection() async throws {
        // 300 000 bytes is past the size answered at once, so each GET streams.
        #expect(try await Self.connectionsUsed(requestsPerConnection: 32, count: 3, length: 300_000) == 2)
    }
}
