import Foundation
import NBDTestSupport
import Testing

/// An outage must not become a log flood: failures are logged once per cause and export, then
/// counted, and the count is written when its window ends (or at shutdown).
@Suite("Failure log: one line per cause, with a count", .timeLimit(.minutes(3)))
struct LogFloodTests {
    @Test("300 requests refused while the backend is down: one warning and one count, not 300 lines")
    func outageIsCounted() async throws {
        let server = try await Servers.nbdkit(["memory", "size=1M"])
        defer { server.stop() }
        let gateway = try await Gateway.start(["--export", "disk=\(server.uri)"])
        #expect(try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-9")]).status == 206)
        kill(server.pid, SIGKILL)
        var statuses: [Int: Int] = [:]
        let started = ContinuousClock.now
        for _ in 0..<300 {
            let response = try await gateway.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=0-9")]), record: false)
            statuses[response.status, default: 0] += 1
        }
        #expect(statuses == [502: 300], "\(statuses)")
        // Windows of 5 s: one warning each at most (the requests take well under one when the
        // machine is quiet, several when it is busy).
        let windows = Int((ContinuousClock.now - started).components.seconds / 5) + 2
        let (status, _) = await gateway.process.stop()
        #expect(status == 0)
        let log = gateway.process.stderrText.split(separator: "\n")
        let firsts = log.filter { $0.contains("warning") && $0.contains("request failed") }
        let counts = log.filter { $0.contains("more requests failed the same way") }
        #expect(firsts.count >= 1 && firsts.count <= windows, "\(firsts.count) warnings in \(windows - 1) windows")
        let counted = counts.compactMap { $0.firstMatch(of: /count=(\d+)/).flatMap { Int($0.1) } }.reduce(0, +)
        #expect(counted + firsts.count == 300, "\(counts)")
        #expect(firsts.count + counts.count <= 2 * windows, "\(firsts.count + counts.count) request-failure lines in \(windows - 1) windows")
        // Everything else is per connection attempt (backed off), not per request: far under 300.
        #expect(log.count < 100, "\(log.count) lines")
        await gateway.stop()
    }
}
