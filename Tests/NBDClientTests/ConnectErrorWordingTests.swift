import Foundation
import NBDTestSupport
import Testing

/// The `nbd` tool's errors say what happened in a person's words, not SwiftNIO's type names.
@Suite("Connect errors in plain words")
struct ConnectErrorWordingTests {
    /// Runs `nbd info URI`, which must fail; returns its stderr.
    func failingInfo(_ uri: String, _ extra: [String] = []) async throws -> String {
        let result = try await Tools.run(try nbdToolPath(), ["info"] + extra + [uri], check: false)
        #expect(result.status == 1, "nbd info \(uri) exited \(result.status)")
        let text = String(decoding: result.stderr, as: UTF8.self)
        for word in ["SingleConnectionFailure", "NIOConnectionError", "IOError", "errno:", "BoringSSL", "NIOSSL"] {
            #expect(!text.contains(word), "\(uri): \(text)")
        }
        return text
    }

    @Test("connection refused, no such socket, TLS certificate not trusted")
    func plainWords() async throws {
        let port = try await Tools.freePort()  // Nothing listens there.
        let refused = try await failingInfo("nbd://127.0.0.1:\(port)/x")
        #expect(refused.contains("cannot connect to nbd://127.0.0.1:\(port)/x: connection refused"), "\(refused)")

        let noSocket = try await failingInfo("nbd+unix:///x?socket=/nonexistent/nbd.sock")
        #expect(noSocket.contains(": no such socket"), "\(noSocket)")

        // A TLS server whose certificate no CA we trust signed.
        let certificates = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: certificates) }
        func path(_ name: String) -> String { certificates.appendingPathComponent(name).path }
        try await Tools.run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
                                        "-keyout", path("server-key.pem"), "-out", path("server-cert.pem")])
        // nbdkit wants a CA file beside its certificate: the self-signed certificate is its own.
        try FileManager.default.copyItem(atPath: path("server-cert.pem"), toPath: path("ca-cert.pem"))
        let options = ["--tls=require", "--tls-certificates=\(certificates.path)"]
        try await withServer({ try await Servers.nbdkit(["memory", "size=1M"], tcp: true, extraOptions: options) }) { server in
            let tcpPort = try #require(server.uri.split(separator: ":").last?.split(separator: "/").first)
            let untrusted = try await failingInfo("nbds://localhost:\(tcpPort)/")
            #expect(untrusted.contains("TLS certificate not trusted"), "\(untrusted)")
        }
    }
}
