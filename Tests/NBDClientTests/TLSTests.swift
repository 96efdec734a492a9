import NBDTestSupport
import Foundation
import NBDClient
import Testing

@Suite("TLS")
struct TLSTests {
    /// A CA and a server certificate for localhost, in nbdkit's and libnbd's directory layout.
    private func makeCertificates(in directory: URL) async throws {
        func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
        try await Tools.run("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test CA",
                                        "-keyout", path("ca-key.pem"), "-out", path("ca-cert.pem")])
        try await Tools.run("openssl", ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                                        "-keyout", path("server-key.pem"), "-out", path("server.csr")])
        let extensions = directory.appendingPathComponent("ext.cnf")
        try "subjectAltName=DNS:localhost,IP:127.0.0.1\n".write(to: extensions, atomically: true, encoding: .utf8)
        try await Tools.run("openssl", ["x509", "-req", "-in", path("server.csr"), "-CA", path("ca-cert.pem"), "-CAkey", path("ca-key.pem"),
                                        "-CAcreateserial", "-days", "2", "-extfile", extensions.path, "-out", path("server-cert.pem")])
    }

    @Test("nbds:// with STARTTLS: verified server, plain client refused, wrong CA refused")
    func startTLS() async throws {
        let certificates = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: certificates) }
        try await makeCertificates(in: certificates)
        let options = ["--tls=require", "--tls-certificates=\(certificates.path)"]
        try await withServer({ try await Servers.nbdkit(["memory", "size=1M"], tcp: true, extraOptions: options) }) { server in
            let port = try #require(server.uri.split(separator: ":").last?.split(separator: "/").first)
            let secure = "nbds://localhost:\(port)/?tls-certificates=\(certificates.path)"
            let client = try await NBDClient.connect(to: secure)
            try await client.write(at: 10, bytes: [9, 8, 7])
            #expect(Array(buffer: try await client.read(at: 9, length: 5)) == [0, 9, 8, 7, 0])
            await client.disconnect()

            let listed = try await NBDClient.list(secure)
            #expect(listed.count == 1)

            do {
                _ = try await NBDClient.connect(to: server.uri)
                Issue.record("plain connection should be refused")
            } catch let error as NBDError {
                #expect(error.code == .tlsRequired)
                #expect(error.nbdErrorName == "NBD_REP_ERR_TLS_REQD")
            }

            let otherCA = try Tools.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: otherCA) }
            try await makeCertificates(in: otherCA)
            await expectCode(.tlsFailure) {
                _ = try await NBDClient.connect(to: "nbds://localhost:\(port)/?tls-certificates=\(otherCA.path)")
            }
        }
    }
}
