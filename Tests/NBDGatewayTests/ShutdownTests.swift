import Foundation
import NBDTestSupport
import Testing

/// SIGTERM while requests wait on a slow backend: the gateway gives them its grace period,
/// then answers them as the contract says (503 before the status line), closes their NBD
/// connections without waiting for replies, and exits 0 (libmicrohttpd aborts the process if
/// its daemon is stopped while a connection is suspended: it must never be).
@Suite("Shutdown: SIGTERM with requests suspended on a slow backend", .timeLimit(.minutes(3)))
struct ShutdownTests {
    @Test("32 reads held 30 s by the backend: 503 each after the grace period, exit 0 within grace + 2 s")
    func sigtermWithSuspendedRequests() async throws {
        let logDirectory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: logDirectory) }
        let log = logDirectory.appendingPathComponent("nbdkit.log")
        let count = 32
        let grace = 2.0
        try await withServer({
            // The log filter sits in front of the delay, so a read is logged when it arrives.
            // More threads than requests: nbdkit reads a request off the socket only when a
            // thread is free for it.
            try await Servers.nbdkit(["--filter=log", "--filter=delay", "memory", "size=1M", "delay-read=30", "logfile=\(log.path)"],
                                     extraOptions: ["--threads=64"])
        }) { server in
            let gateway = try await Gateway.start(["--export", "disk=\(server.uri)", "--shutdown-grace", String(grace)])
            let port = gateway.port
            // A failure before the stop below must not leave the gateway running.
            do {
                try await withThrowingTaskGroup(of: HTTPResponse.self) { group in
                    for index in 0..<count {
                        group.addTask {
                            let range = "bytes=\(index * 4096)-\(index * 4096 + 4095)"
                            return try await RawHTTP.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", range)]), port: port)
                        }
                    }
                    // Every request is suspended once nbdkit has received all its reads.
                    let deadline = ContinuousClock.now + .seconds(20)
                    var reads = 0
                    while ContinuousClock.now < deadline {
                        let text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
                        reads = text.split(separator: "\n").filter { $0.contains(" Read ") && !$0.contains("return=") }.count
                        if reads >= count { break }
                        try await Task.sleep(for: .milliseconds(50))
                    }
                    try #require(reads == count, "nbdkit received \(reads) of the \(count) reads")
                    // The backend holds each read 30 s: stretched under a sanitizer, the bound on `took` stays under it.
                    let (status, timedOut, exitTime) = await gateway.process.stopTimed(timeout: .seconds(grace) + TestTiming.stretched(.seconds(8)))
                    let took = exitTime ?? .seconds(3600)
                    #expect(!timedOut && status == 0, "exit \(status); stderr: \(gateway.process.stderrText.suffix(2000))")
                    #expect(took < .seconds(grace) + TestTiming.stretched(.seconds(2)), "took \(took); stderr: \(gateway.process.stderrText.split(separator: "\n").filter { !$0.contains("request failed") }.joined(separator: "\n"))")
                    var statuses: [Int] = []
                    for try await response in group {
                        statuses.append(response.status)
                        #expect(response.status == 503 && response.errorCode == "service_unavailable", "\(response.summary)")
                        #expect(response.header("Retry-After") != nil)
                    }
                    #expect(statuses.count == count)
                }
            } catch {
                await gateway.stop()
                throw error
            }
            await gateway.stop()
        }
    }
}
