import Foundation
import NBDTestSupport
import Testing

/// The README's promise: `scripts/run` (the gateway with no backend) serves an embedded nbdkit
/// disk as `disk0`, and every `curl` and `qemu-img` line it prints or the README shows works
/// verbatim against it (only the port differs: the test binds a free one).
@Suite("README examples against the embedded default")
struct ReadmeExamplesTests {
    /// The README's shell lines that talk to the default gateway, in order.
    static func readmeCommands() throws -> [String] {
        let readme = try String(contentsOf: Paths.repository.appendingPathComponent("README.md"), encoding: .utf8)
        var commands: [String] = []
        var inShellBlock = false
        for line in readme.components(separatedBy: "\n") {
            if line.hasPrefix("```") {
                inShellBlock = line == "```sh" && !inShellBlock
                continue
            }
            guard inShellBlock else { continue }
            // A block that talks to the default gateway: its curl/qemu-img lines and the
            // lines preparing their files.
            if line.contains("127.0.0.1:8080") || line.hasPrefix("head -c") { commands.append(line) }
        }
        return commands
    }

    /// Runs one shell line in `directory`, the default address replaced by the gateway's.
    func shell(_ line: String, base: String, in directory: URL) async throws -> ProcessResult {
        let command = "cd '\(directory.path)' && " + line.replacingOccurrences(of: "http://127.0.0.1:8080", with: base)
        return try await runProcess("sh", ["-c", command], timeout: .seconds(120), check: false)
    }

    @Test("scripts/run's printed lines and the README's examples work against disk0; SIGTERM stops its nbdkit")
    func readmeExamples() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let stderrPath = directory.appendingPathComponent("stderr").path
        let process = try BackgroundProcess(try Paths.gatewayBinary(), ["--host", "127.0.0.1", "--port", "0"], stderrPath: stderrPath)
        var stopped = false
        defer { if !stopped { kill(process.pid, SIGKILL) } }
        let printed = try await process.lines(through: "curl -s -r 0-10", timeout: .seconds(30))
        let listening = try #require(printed.first { $0.hasPrefix("listening on ") })
        let base = String(listening.dropFirst("listening on ".count))
        #expect(printed.contains("serving an embedded 1 GiB nbdkit memory disk as export \"disk0\"; try:"))

        // What scripts/run prints, verbatim.
        let suggestions = printed.filter { $0.hasPrefix("  curl ") }.map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(suggestions.count == 4)
        var outputs: [String] = []
        for line in suggestions {
            let result = try await shell(line, base: "http://127.0.0.1:8080", in: directory)
            #expect(result.status == 0, "\(line): \(result.stderrText)")
            #expect(!result.stdoutText.contains(#"{"error""#), "\(line): \(result.stdoutText)")
            outputs.append(result.stdoutText)
        }
        #expect(outputs.first?.contains(#""name":"disk0""#) == true, "GET /exports lists disk0: \(outputs.first ?? "")")
        #expect(outputs.last == "hello, disk")

        // The README's examples, in order.
        let commands = try Self.readmeCommands()
        #expect(commands.count >= 8, "README examples found: \(commands)")
        for line in commands {
            let result = try await shell(line, base: base, in: directory)
            #expect(result.status == 0, "\(line): \(result.stderrText)")
            #expect(!result.stdoutText.contains(#"{"error""#), "\(line): \(result.stdoutText)")
            if line.contains("/exports/disk0 ") || line.hasSuffix("/exports/disk0") {
                #expect(result.stdoutText.contains(#""name":"disk0""#), "\(line): \(result.stdoutText)")
            }
            if line.contains("| od") {
                #expect(result.stdoutText.contains("h   e   l   l   o   ,       d   i   s   k"), "\(line): \(result.stdoutText)")
            }
        }
        // qemu-img's copy has the bytes written through the gateway.
        let copy = try FileHandle(forReadingFrom: directory.appendingPathComponent("copy.raw"))
        defer { try? copy.close() }
        let image = try Data(contentsOf: directory.appendingPathComponent("image.raw"))
        try copy.seek(toOffset: 65536)
        #expect(try copy.read(upToCount: image.count - 61440) == image.dropFirst(61440), "copy.raw holds image.raw after the zeroed 64 KiB")
        #expect(try copy.seekToEnd() == 1 << 30)

        // SIGTERM: the gateway exits 0 and its nbdkit is gone.
        let log = process.stderrText
        let startLine = try #require(log.split(separator: "\n").first { $0.contains("started embedded nbdkit memory disk") })
        let nbdkitPID = try #require(startLine.firstMatch(of: /pid=(\d+)/).flatMap { pid_t($0.1) })
        let (status, timedOut) = await process.stop()
        stopped = true
        #expect(status == 0 && !timedOut, "exit \(status); stderr: \(process.stderrText.suffix(1000))")
        #expect(kill(nbdkitPID, 0) == -1 && errno == ESRCH, "nbdkit (pid \(nbdkitPID)) outlived the gateway")
    }
}
