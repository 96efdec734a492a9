import Foundation
import NBDTestSupport
import Testing

/// The disk browser in a real headless Chromium (Tests/browser/ui_check.py, Playwright), over a
/// real nbdkit disk, under --base-path with a token, and CORS from a page on another origin.
@Suite("The disk browser in Chromium", .timeLimit(.minutes(5)))
struct BrowserTests {
    @Test("list and metadata equal the API's; the map shows written data exactly there and holes elsewhere; the hex view shows the bytes; CORS from another origin")
    func diskBrowser() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let token = "browser-token-0123"
        let tokens = directory.appendingPathComponent("tokens")
        try "\(token) rw *\n".write(to: tokens, atomically: true, encoding: .utf8)
        let allowedOriginPort = try await Tools.freePort()
        // Kept after the run, as the test's artifacts.
        let screenshots = Paths.repository.appendingPathComponent(".build/test-artifacts/disk-browser")
        try? FileManager.default.removeItem(at: screenshots)
        try await withNBDKitGateway(["memory", "size=64M"], gatewayArguments: [
            "--base-path", "/nbd", "--auth-file", tokens.path, "--cors-origin", "http://127.0.0.1:\(allowedOriginPort)",
        ]) { gateway, _ in
            let written: [(offset: UInt64, bytes: [UInt8])] = [
                (1 << 20, Array("hello, disk browser".utf8)),
                (40 << 20 | 4096, (0..<512).map { UInt8(truncatingIfNeeded: $0 &* 37) }),
            ]
            for (offset, bytes) in written {
                let answer = try await gateway.put("/nbd/exports/disk/data?offset=\(offset)", bytes, headers: [("Authorization", "Bearer \(token)")])
                #expect(answer.status == 200)
            }
            var arguments = [
                Paths.repository.appendingPathComponent("Tests/browser/ui_check.py").path,
                "--url", "http://127.0.0.1:\(gateway.port)/nbd/", "--export", "disk", "--token", token,
                "--hole-at", "\(8 << 20)", "--hole-at", "\(60 << 20)",
                "--screenshots", screenshots.path, "--allowed-origin-port", String(allowedOriginPort),
            ]
            for (offset, bytes) in written {
                arguments += ["--expect-data", "\(offset):" + bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()]
            }
            let result = try await runProcess("python3", arguments, timeout: .seconds(280), check: false)
            for line in result.stdoutText.split(separator: "\n") where line.hasPrefix("screenshot: ") { print(line) }
            #expect(result.status == 0, "ui_check.py failed:\n\(result.stdoutText.suffix(4000))\n\(result.stderrText.suffix(4000))")
            #expect(result.stdoutText.contains("screenshot: "), "no screenshot was kept")
        }
    }
}
