import Foundation
import NBDTestSupport
import Testing

/// An NBD reply that does not come within --request-timeout: that read fails, its connection
/// is replaced, and the read is retried on the new one; when every attempt times out, 504.
@Suite("NBD replies that never come", .timeLimit(.minutes(3)))
struct TimeoutTests {
    @Test("the first read hangs: after --request-timeout it is retried on a new connection and answered, long before the hung reply")
    func hungReadRetried() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let hung = directory.appendingPathComponent("hung").path
        // nbdkit's eval plugin: the first pread ever sleeps 20 s, every later one answers at once.
        let plugin = [
            "eval", "thread_model=echo parallel", "get_size=echo 1048576", "can_multi_conn=exit 0",
            "pread=if mkdir '\(hung)' 2>/dev/null; then sleep 20; fi; head -c $3 /dev/zero",
        ]
        try await withNBDKitGateway(plugin, gatewayArguments: ["--request-timeout", "1", "--read-retries", "2"]) { gateway, _ in
            let started = ContinuousClock.now
            let answer = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=4096-8191")])
            let took = ContinuousClock.now - started
            #expect(answer.status == 206 && answer.body == [UInt8](repeating: 0, count: 4096), "\(answer.summary)")
            #expect(FileManager.default.fileExists(atPath: hung), "the first read did not hang")
            // Under a sanitizer the bound stretches, but stays under the 20 s the hung read takes.
            #expect(took < min(TestTiming.stretched(.seconds(10)), .seconds(18)), "answered after \(took): it waited for the hung reply")
            try await gateway.expectServing("disk")
        }
    }

    @Test("every read hangs: 504 gateway_timeout as JSON after the retries; other requests are served meanwhile")
    func everyReadTimesOut() async throws {
        try await withNBDKitGateway(["--filter=delay", "memory", "size=1M", "delay-read=30"], gatewayArguments: ["--request-timeout", "1", "--read-retries", "1"]) { gateway, _ in
            async let slow = gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-511")])
            #expect(try await gateway.get("/healthz").status == 200)
            let answer = try await slow
            let error = try answer.errorObject()
            #expect(answer.status == 504 && error["code"] as? String == "gateway_timeout", "\(answer.summary)")
            #expect(try await gateway.get("/exports/disk").status == 200, "metadata needs no read")
        }
    }
}
