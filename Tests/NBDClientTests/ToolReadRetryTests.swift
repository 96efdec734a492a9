import Foundation
import NBDTestSupport
import Testing

/// `nbd read` (and `readStream` under it) rides over transient failures: EIO replies are read
/// again on the same connection; a lost connection is replaced and the read goes on from the
/// first byte not yet written out.
@Suite("nbd read: retries after EIO and after a lost connection", .timeLimit(.minutes(3)))
struct ToolReadRetryTests {
    static let size = 256 << 20

    /// Compares a file with what nbdcopy reads from a plain pattern server of the same size.
    func expectPattern(_ file: URL, length: Int) async throws {
        try await withServer({ try await Servers.nbdkit(["pattern", "size=\(length)"]) }) { reference in
            let expected = reference.directory.appendingPathComponent("expected.bin")
            try await Tools.run("nbdcopy", [reference.uri, expected.path])
            let comparison = try await Tools.run("cmp", [expected.path, file.path], check: false)
            #expect(comparison.status == 0, "\(String(decoding: comparison.stdout + comparison.stderr, as: UTF8.self))")
        }
    }

    @Test("EIO on 20% of reads: every failed chunk is read again, byte-exact; with --read-retries 0 the read fails with EIO")
    func eioReplies() async throws {
        let arguments = ["--filter=error", "pattern", "size=\(Self.size)", "error-pread=EIO", "error-pread-rate=20%"]
        try await withServer({ try await Servers.nbdkit(arguments) }) { server in
            let tool = try nbdToolPath()
            let output = server.directory.appendingPathComponent("out.bin")
            // 64 chunks of 4 MiB: a chunk failing 9 times running has odds of 5e-7.
            let result = try await Tools.run(tool, ["read", "--read-retries", "8", server.uri, "-o", output.path], check: false)
            #expect(result.status == 0, "\(String(decoding: result.stderr, as: UTF8.self))")
            try await expectPattern(output, length: Self.size)
            // The same server without retries: some chunk meets an EIO (odds of none: 6e-7).
            let failure = try await Tools.run(tool, ["read", "--read-retries", "0", server.uri, "-o", "/dev/null"], check: false)
            #expect(failure.status == 1)
            #expect(String(decoding: failure.stderr, as: UTF8.self).contains("EIO"))
        }
    }

    @Test("the server killed in the middle of a read and started again: the read goes on on a new connection, byte-exact")
    func lostConnection() async throws {
        // 1 s a read, 8 in flight, 64 chunks: the read takes at least 8 s (slow builds too), and
        // longer under a sanitizer, where this test itself may notice the first bytes late.
        let delay = "delay-read=\(1000 * TestTiming.scale)ms"
        let server = try await RestartableNBDKit { _ in ["--filter=delay", "pattern", "size=\(Self.size)", delay] }
        defer { server.stop() }
        let tool = try nbdToolPath()
        let output = server.directory.appendingPathComponent("out.bin")
        let uri = server.uri
        // 30 attempts wait about 40 s in all: a restart on a loaded machine can take several seconds.
        let read = Task { try await Tools.run(tool, ["read", "--read-retries", "30", uri, "-o", output.path], check: false) }
        func written() -> Int {
            ((try? FileManager.default.attributesOfItem(atPath: output.path)[.size]) as? NSNumber)?.intValue ?? 0
        }
        try await waitUntil("nbd read has written its first bytes", seconds: 60) { written() > 0 }
        try await server.crash()
        let writtenAtCrash = written()
        #expect(writtenAtCrash < Self.size, "the read ended before the server was killed: nothing was proved")
        try await server.start()
        let result = try await read.value
        #expect(result.status == 0, "\(String(decoding: result.stderr, as: UTF8.self))")
        try await expectPattern(output, length: Self.size)
    }
}
