import Foundation
import NBDTestSupport
import Testing

/// HTTPS, connection limits, the base path, the Unix socket, socket activation and TLS to NBD
/// servers, through the real binary.
@Suite("Operators: HTTPS, limits, base path, Unix socket, socket activation, nbds://", .timeLimit(.minutes(3)))
struct OperatorListenerTests {
    @Test("HTTPS: curl reads and writes byte-exact; plain HTTP gets a closed connection; SIGHUP serves a new certificate to new connections, a bad one is refused")
    func https() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let first = directory.appendingPathComponent("first"), second = directory.appendingPathComponent("second")
        for folder in [first, second] {
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            try await Certificates.make(in: folder)
        }
        let certificate = directory.appendingPathComponent("cert.pem"), key = directory.appendingPathComponent("key.pem")
        try FileManager.default.copyItem(at: first.appendingPathComponent("server-cert.pem"), to: certificate)
        try FileManager.default.copyItem(at: first.appendingPathComponent("server-key.pem"), to: key)
        try await withNBDKitGateway(["memory", "size=4M"], gatewayArguments: ["--https-cert", certificate.path, "--https-key", key.path]) { gateway, server in
            #expect(gateway.scheme == "https")
            let url = "https://localhost:\(gateway.port)/exports/disk/data"
            let upload = directory.appendingPathComponent("upload.bin")
            let pattern = (0..<(1 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            try Data(pattern).write(to: upload)
            func curl(_ ca: URL, _ arguments: [String]) async throws -> ProcessResult {
                try await runProcess("curl", ["-sS", "--fail-with-body", "--cacert", ca.appendingPathComponent("ca-cert.pem").path] + arguments, check: false)
            }
            let put = try await curl(first, ["-X", "PUT", "--data-binary", "@\(upload.path)", "\(url)?offset=4096"])
            #expect(put.status == 0, "\(put.stderrText)")
            #expect(try await readBackend(server.uri, offset: 4096, length: pattern.count) == pattern)
            let read = try await curl(first, ["-r", "4096-\(4095 + pattern.count)", url])
            #expect(read.status == 0 && Array(read.stdout) == pattern)

            // Plain HTTP to the HTTPS port: no answer, the connection closed; others carry on.
            let plain = try await RawHTTP.sendRaw(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8), port: gateway.port, readTimeoutSeconds: 5)
            #expect(plain.isEmpty, "plain HTTP got \(plain.count) bytes back")
            #expect(try await curl(first, ["https://localhost:\(gateway.port)/healthz"]).status == 0)

            // New credentials: new connections see them (the old CA no longer verifies them).
            try FileManager.default.removeItem(at: certificate)
            try FileManager.default.removeItem(at: key)
            try FileManager.default.copyItem(at: second.appendingPathComponent("server-cert.pem"), to: certificate)
            try FileManager.default.copyItem(at: second.appendingPathComponent("server-key.pem"), to: key)
            kill(gateway.process.pid, SIGHUP)
            try await waitUntil("the new certificate is served") { try await curl(second, ["https://localhost:\(gateway.port)/healthz"]).status == 0 }
            #expect(try await curl(first, ["https://localhost:\(gateway.port)/healthz"]).status != 0)
            #expect(try await curl(second, ["-r", "4096-4099", url]).stdout == Data(pattern.prefix(4)))

            // A key that does not match: refused, the certificate in force stays.
            try FileManager.default.removeItem(at: key)
            try FileManager.default.copyItem(at: first.appendingPathComponent("server-key.pem"), to: key)
            kill(gateway.process.pid, SIGHUP)
            try await waitUntil("the refused reload is logged") { gateway.process.stderrText.contains("kept the old HTTPS certificate and key") }
            #expect(try await curl(second, ["https://localhost:\(gateway.port)/healthz"]).status == 0)
        }
    }

    @Test("--max-connections and --max-connections-per-client: the extra connection is closed unanswered, counted in /metrics; others are served")
    func connectionLimits() async throws {
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--max-connections", "3", "--max-connections-per-client", "2"]) { gateway, _ in
            let port = gateway.port
            let keepAlive = HTTPRequest("GET", "/healthz", headers: [("Connection", "keep-alive")])
            try await blockingPool.runIfActive {
                // Two from 127.0.0.1, answered and kept open: that client's limit.
                let first = try RawHTTP.Connection(port: port), second = try RawHTTP.Connection(port: port)
                defer { first.close(); second.close() }
                #expect(try first.exchange(keepAlive, port: port).status == 200)
                #expect(try second.exchange(keepAlive, port: port).status == 200)
                let third = try RawHTTP.Connection(port: port, timeoutSeconds: 5)
                _ = third.write(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                #expect(third.readToEnd().isEmpty, "a third connection from one client was answered")
                third.close()
                // Another client is served: the third connection in all.
                let other = try RawHTTP.Connection(port: port, source: "127.0.0.2")
                defer { other.close() }
                #expect(try other.exchange(keepAlive, port: port).status == 200)
                // A fourth, from a third client: over the total.
                let fourth = try RawHTTP.Connection(port: port, timeoutSeconds: 5, source: "127.0.0.3")
                _ = fourth.write(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                #expect(fourth.readToEnd().isEmpty, "a connection over --max-connections was answered")
                fourth.close()
                // The metrics, on a kept connection (a new one would be refused).
                let metrics = try other.exchange(HTTPRequest("GET", "/metrics", headers: [("Connection", "keep-alive")]), port: port).text
                #expect(metrics.contains(#"nbd_gateway_connections_refused_total{limit="max_connections_per_client"} 1"#))
                #expect(metrics.contains(#"nbd_gateway_connections_refused_total{limit="max_connections"} 1"#))
                #expect(metrics.contains("nbd_gateway_http_connections 3"))
            }
            // Closed connections are counted out: a new one is served.
            try await waitUntil("a new connection is served") { (try? await gateway.get("/healthz"))?.status == 200 }
        }
    }

    @Test("--base-path and --unix-socket: routes only under the prefix, on both listeners; the served contract names the public URL")
    func basePathAndUnixSocket() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let socket = directory.appendingPathComponent("gw.sock").path
        try await withNBDKitGateway(["memory", "size=1M"], gatewayArguments: ["--base-path", "/nbd", "--unix-socket", socket, "--trusted-proxy", "127.0.0.1"]) { gateway, _ in
            #expect(gateway.basePath == "/nbd")
            #expect(try await gateway.get("/nbd/exports").status == 200)
            #expect(try await gateway.get("/nbd/healthz").status == 200)
            for outside in ["/exports", "/healthz", "/nbdexports", "/"] {
                let answer = try await gateway.send(HTTPRequest("GET", outside), record: false)
                let code = try answer.errorObject()["code"] as? String
                #expect(answer.status == 404 && code == "not_found", "\(outside)")
            }
            let direct = try await gateway.get("/nbd/openapi.yaml", headers: [("Host", "gw.internal:8080")])
            #expect(direct.text.contains("servers:\n  - url: \"http://gw.internal:8080/nbd\"\n"))
            let proxied = try await gateway.get("/nbd/openapi.yaml", headers: [("Host", "gw.internal:8080"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "disks.example.org")])
            #expect(proxied.text.contains("servers:\n  - url: \"https://disks.example.org/nbd\"\n"))
            let hostile = try await gateway.get("/nbd/openapi.yaml", headers: [("Host", "x\" evil: {1}")])
            #expect(hostile.text.contains("servers:\n  - url: \"/nbd\"\n"))

            let viaSocket = try await runProcess("curl", ["-sS", "--unix-socket", socket, "http://localhost/nbd/exports/disk"])
            #expect(viaSocket.stdoutText.contains(#""name":"disk""#))
            let outsideSocket = try await runProcess("curl", ["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", socket, "http://localhost/exports"])
            #expect(outsideSocket.stdoutText == "404")
        }
    }

    @Test("systemd socket activation: served on the socket it is given (LISTEN_FDS), not on --host/--port")
    func socketActivation() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=1M"]) }) { server in
            let port = try await Tools.freePort()
            let activator = try BackgroundProcess(
                try Tools.path("systemd-socket-activate"),
                ["-l", "127.0.0.1:\(port)", try Paths.gatewayBinary(), "--port", "1", "--export", "disk=\(server.uri)"],
                stderrPath: try Tools.temporaryDirectory().appendingPathComponent("stderr").path
            )
            defer { Task { await activator.stop() } }
            // The activator listens at once and starts the gateway on the first connection.
            let answer = try await runProcess("curl", ["-sS", "--retry", "20", "--retry-connrefused", "--retry-delay", "0", "http://127.0.0.1:\(port)/exports/disk"])
            #expect(answer.stdoutText.contains(#""name":"disk""#))
            let line = try await activator.waitForLine(containing: "listening on", timeout: .seconds(10))
            #expect(line == "listening on 1 socket from systemd (LISTEN_FDS)")
            let (status, timedOut) = await activator.stop()
            #expect(!timedOut && status == 0, "the gateway did not stop cleanly on SIGTERM")
        }
    }

    @Test("nbds:// backends with --nbd-tls-ca: served; a certificate that does not verify is 502 backend_unreachable, named")
    func tlsBackends() async throws {
        let certificates = try Tools.temporaryDirectory(), otherCA = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: certificates); try? FileManager.default.removeItem(at: otherCA) }
        try await Certificates.make(in: certificates)
        try await Certificates.make(in: otherCA)
        let options = ["--tls=require", "--tls-certificates=\(certificates.path)"]
        try await withServer({ try await Servers.nbdkit(["memory", "size=1M"], tcp: true, extraOptions: options) }) { server in
            let port = try #require(server.uri.split(separator: ":").last?.split(separator: "/").first)
            let backend = "disk=nbds://localhost:\(port)/"
            try await withGateway(["--export", backend, "--nbd-tls-ca", certificates.appendingPathComponent("ca-cert.pem").path]) { gateway in
                try await gateway.write("disk", offset: 512, [1, 2, 3, 4])
                #expect(try await gateway.read("disk", offset: 511, length: 6) == [0, 1, 2, 3, 4, 0])
            }
            try await withGateway(["--export", backend, "--nbd-tls-ca", otherCA.appendingPathComponent("ca-cert.pem").path]) { gateway in
                let refused = try await gateway.get("/exports/disk")
                let error = try refused.errorObject()
                #expect(refused.status == 502 && error["code"] as? String == "backend_unreachable")
                #expect((error["message"] as? String)?.contains("certificate") == true, "\(error)")
                try await gateway.expectServing()
            }
            // Plain nbd:// to a TLS-only server: refused by the server, named.
            try await withGateway(["--export", "disk=nbd://localhost:\(port)/"]) { gateway in
                let refused = try await gateway.get("/exports/disk")
                let error = try refused.errorObject()
                #expect(refused.status == 502 && error["nbd_error"] as? String == "NBD_REP_ERR_TLS_REQD", "\(error)")
            }
        }
    }
}
