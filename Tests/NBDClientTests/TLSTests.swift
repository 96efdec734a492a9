import NBDTestSupport
import Foundation
import NBDClient
import Testing

@Suite("TLS")
struct TLSTests {
    private func makeCertificates(in directory: URL) async throws {
        try await Certificates.make(in: directory)
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
