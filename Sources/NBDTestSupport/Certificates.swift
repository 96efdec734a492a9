import Foundation

/// Test certificates made with openssl.
public enum Certificates {
    /// A CA (`ca-cert.pem`, `ca-key.pem`) and a server certificate for localhost and 127.0.0.1
    /// signed by it (`server-cert.pem`, `server-key.pem`): nbdkit's and libnbd's directory layout.
    public static func make(in directory: URL) async throws {
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
}
