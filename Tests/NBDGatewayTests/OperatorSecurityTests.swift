import Foundation
import NBDTestSupport
import Testing

/// Tokens, the access log and trusted proxies through the real binary, over nbdkit.
@Suite("Operators: tokens, reloads, access log, trusted proxies", .timeLimit(.minutes(3)))
struct OperatorSecurityTests {
    static let reader = "reader-7f3a-0001"
    static let writer = "writer-2c1d-0002"

    func bearer(_ token: String) -> [(name: String, value: String)] { [("Authorization", "Bearer \(token)")] }

    @Test("a token file: refusals through the binary, qemu-img reading with a token, SIGHUP reload (good and bad file), tokens never logged")
    func tokensAndReload() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let tokens = directory.appendingPathComponent("tokens")
        let accessLog = directory.appendingPathComponent("access.log")
        try "\(Self.reader) ro disk\n\(Self.writer) rw *\n".write(to: tokens, atomically: true, encoding: .utf8)
        try await withNBDKitGateway(["memory", "size=4M"], gatewayArguments: ["--auth-file", tokens.path, "--access-log", accessLog.path]) { gateway, server in
            let none = try await gateway.get("/exports/disk")
            let noneCode = try none.errorObject()["code"] as? String
            #expect(none.status == 401 && noneCode == "unauthorized")
            #expect(none.headers.filter { $0.name.lowercased() == "www-authenticate" }.count == 2)
            let denied = try await gateway.put("/exports/disk/data?offset=0", [1, 2, 3], headers: bearer(Self.reader))
            let deniedCode = try denied.errorObject()["code"] as? String
            #expect(denied.status == 403 && deniedCode == "access_denied")
            #expect(try await readBackend(server.uri, offset: 0, length: 3) == [0, 0, 0], "a refused write reached the disk")
            let pattern = (0..<65536).map { UInt8(truncatingIfNeeded: $0 &* 13) }
            #expect(try await gateway.put("/exports/disk/data?offset=0", pattern, headers: bearer(Self.writer)).status == 200)
            #expect(try await gateway.get("/metrics", headers: bearer(Self.reader)).status == 403)
            #expect(try await gateway.get("/healthz").status == 200)

            // qemu-img's http driver has only username/password-secret: Basic with the token as password.
            try await Tools.requireQemuDriver("http")
            let copy = directory.appendingPathComponent("copy.raw").path
            try await runProcess("qemu-img", [
                "convert", "-m", "1", "--object", "secret,id=token,data=\(Self.reader)",
                "--image-opts", "driver=raw,file.driver=http,file.url=\(gateway.baseURL)/exports/disk/data,file.username=qemu,file.password-secret=token",
                "-O", "raw", copy,
            ], timeout: .seconds(45))
            let copied = try Data(contentsOf: URL(fileURLWithPath: copy))
            #expect(copied.count == 4 << 20 && Array(copied.prefix(65536)) == pattern)

            // Reload: the reader loses its token, a new one appears; connections stay.
            try "\(Self.writer) rw *\nfresh-token-0003 ro disk\n".write(to: tokens, atomically: true, encoding: .utf8)
            kill(gateway.process.pid, SIGHUP)
            try await waitUntil("the reload took effect") { try await gateway.get("/exports/disk", headers: bearer("fresh-token-0003")).status == 200 }
            #expect(try await gateway.get("/exports/disk", headers: bearer(Self.reader)).status == 401)

            // A file that does not parse keeps the old tokens and says why.
            try "fresh-token-0003 maybe disk\n".write(to: tokens, atomically: true, encoding: .utf8)
            kill(gateway.process.pid, SIGHUP)
            try await waitUntil("the bad reload was logged") { gateway.process.stderrText.contains("kept the old tokens") }
            #expect(gateway.process.stderrText.contains(#"line 1: access must be ro or rw, not "maybe""#))
            #expect(try await gateway.get("/exports/disk", headers: bearer("fresh-token-0003")).status == 200)

            let log = try String(contentsOf: accessLog, encoding: .utf8)
            for secret in [Self.reader, Self.writer, "fresh-token-0003"] {
                #expect(!log.contains(secret) && !gateway.process.stderrText.contains(secret), "a token was logged")
            }
            let lines = log.split(separator: "\n")
            #expect(lines.count >= 8)
            let put = try #require(lines.first { $0.contains(#""method":"PUT""#) && $0.contains(#""status":200"#) })
            let entry = try #require(try JSONSerialization.jsonObject(with: Data(put.utf8)) as? [String: Any])
            #expect(entry["bytes_in"] as? Int == 65536 && entry["export"] as? String == "disk" && entry["client"] as? String == "127.0.0.1")
            #expect((entry["token"] as? String)?.count == 8 && entry["path"] as? String == "/exports/disk/data")
            let qemuRead = try #require(lines.last { $0.contains(#""status":206"#) })
            #expect(qemuRead.contains(#""bytes_out":"#) && !qemuRead.contains(#""bytes_out":0,"#))

            // logrotate: the file moved away, SIGHUP opens a new one at the same path.
            let rotated = directory.appendingPathComponent("access.log.1")
            try FileManager.default.moveItem(at: accessLog, to: rotated)
            kill(gateway.process.pid, SIGHUP)
            try await waitUntil("requests are logged to a new file") {
                try await gateway.get("/healthz", headers: [("X-Request-Id", "after-rotation")])
                return ((try? String(contentsOf: accessLog, encoding: .utf8)) ?? "").contains(#""request_id":"after-rotation""#)
            }
            try await gateway.get("/healthz", headers: [("X-Request-Id", "after-reopen")])
            try await waitUntil("the next request is logged to the new file") { (try String(contentsOf: accessLog, encoding: .utf8)).contains("after-reopen") }
            #expect(!(try String(contentsOf: rotated, encoding: .utf8)).contains("after-reopen"))
        }
    }

    @Test("a bad auth file, certificate or proxy address is refused at start, with the reason, before listening")
    func refusedAtStart() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let badTokens = directory.appendingPathComponent("tokens")
        try "reader-7f3a-0001 ro disk\nshort rw *\n".write(to: badTokens, atomically: true, encoding: .utf8)
        let notPEM = directory.appendingPathComponent("cert.pem")
        try "not a certificate\n".write(to: notPEM, atomically: true, encoding: .utf8)
        let cases: [([String], String)] = [
            (["--auth-file", badTokens.path], "line 2: a token must be at least 8 characters"),
            (["--auth-file", directory.appendingPathComponent("missing").path], "cannot read the auth file"),
            (["--https-cert", notPEM.path, "--https-key", notPEM.path], "holds no PEM certificate"),
            (["--https-cert", notPEM.path], "--https-cert and --https-key go together"),
            (["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy takes an address or ADDRESS/BITS"),
            (["--cors-origin", "dash.example"], "--cors-origin takes * or an origin"),
            (["--base-path", "nbd/"], "--base-path must start with /"),
        ]
        for (arguments, reason) in cases {
            let result = try await runProcess(try Paths.gatewayBinary(), ["--port", "0", "--export", "disk=nbd://127.0.0.1:9/"] + arguments, timeout: .seconds(20), check: false)
            #expect(result.status != 0 && result.stderrText.contains(reason), "\(arguments): \(result.status) \(result.stderrText)")
            #expect(!result.stdoutText.contains("listening on"), "\(arguments) started listening")
        }
    }

    @Test("the client address: from a trusted proxy the rightmost untrusted X-Forwarded-For hop; from anyone else the socket's")
    func trustedProxies() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let accessLog = directory.appendingPathComponent("access.log")
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--access-log", accessLog.path, "--trusted-proxy", "127.0.0.1/32", "--trusted-proxy", "10.0.0.0/8"]) { gateway, _ in
            // From a trusted proxy (127.0.0.1): the spoofed left entry is ignored, 10.x hops are proxies.
            try await gateway.get("/healthz", headers: [("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.1.2.3"), ("X-Request-Id", "trusted")])
            // From 127.0.0.2, not trusted: the header counts for nothing.
            try await runProcess("curl", ["-sS", "--interface", "127.0.0.2", "-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Request-Id: untrusted", "\(gateway.baseURL)/healthz"])
            try await gateway.get("/healthz", headers: [("X-Forwarded-For", "not-an-address, 10.9.9.9"), ("X-Request-Id", "garbled")])
            try await waitUntil("three access-log lines") { ((try? String(contentsOf: accessLog, encoding: .utf8)) ?? "").split(separator: "\n").count >= 3 }
            let log = try String(contentsOf: accessLog, encoding: .utf8)
            func client(_ id: String) -> String? {
                log.split(separator: "\n").first { $0.contains(#""request_id":"\#(id)""#) }?.firstMatch(of: /"client":"([^"]+)"/).map { String($0.1) }
            }
            #expect(client("trusted") == "203.0.113.7")
            #expect(client("untrusted") == "127.0.0.2")
            #expect(client("garbled") == "10.9.9.9")
        }
    }
}
