import Foundation
import NBDTestSupport
import Testing

@Suite("Service endpoints: /healthz, /readyz, /metrics, /openapi.yaml; the CLI", .timeLimit(.minutes(3)))
struct ServiceEndpointsTests {
    @Test("/healthz and /readyz answer 200 with their JSON")
    func healthAndReadiness() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let health = try await gateway.get("/healthz")
            #expect(health.status == 200)
            #expect(health.header("Content-Type") == "application/json")
            #expect(health.text == #"{"status":"ok"}"#)
            let ready = try await gateway.get("/readyz")
            #expect(ready.status == 200)
            #expect(ready.text == #"{"status":"ready"}"#)
            // An absolute-form target, as a proxy sends it (RFC 9112 §3.2.2).
            var absolute = HTTPRequest("GET", "http://127.0.0.1:\(gateway.port)/healthz")
            absolute.headers = [("Host", "127.0.0.1")]
            let viaProxy = try await gateway.send(absolute, record: false)
            #expect(viaProxy.status == 200 && viaProxy.text == #"{"status":"ok"}"#, "\(viaProxy.summary)")
            let ranged = try await gateway.send(HTTPRequest("GET", "http://127.0.0.1/exports/disk/data?x=1", headers: [("Range", "bytes=0-3")]), record: false)
            #expect(ranged.status == 206 && ranged.body.count == 4, "\(ranged.summary)")
            // HEAD of a GET resource: the headers, no body.
            let head = try await gateway.head("/healthz")
            #expect(head.status == 200)
            #expect(head.body.isEmpty)
        }
    }

    @Test("/readyz with a --backend server: 200 while it answers, 503 not_ready once it is gone")
    func readinessOfBackends() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=1M"]) }) { server in
            try await withGateway(["--backend", server.uri]) { gateway in
                #expect(try await gateway.get("/readyz").status == 200)
                #expect(try await gateway.head("/exports//data").status == 200)
                kill(server.pid, SIGTERM)
                // With the socket file gone, the listing readiness makes fails at once: no wait needed.
                try FileManager.default.removeItem(at: server.directory.appendingPathComponent("nbd.sock"))
                let notReady = try await gateway.get("/readyz")
                #expect(notReady.status == 503)
                #expect(notReady.errorCode == "not_ready")
                #expect(notReady.header("Retry-After") != nil)
                let listing = try await gateway.get("/exports")
                #expect(listing.status == 502)
                #expect(listing.errorCode == "backend_unreachable")
                try await gateway.expectServing()
            }
        }
    }

    @Test("/metrics: Prometheus text format 0.0.4 that counts requests")
    func metrics() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            try await gateway.get("/healthz")
            try await gateway.get("/nope")
            let response = try await gateway.get("/metrics")
            #expect(response.status == 200)
            #expect(response.header("Content-Type") == "text/plain; version=0.0.4; charset=utf-8")
            let lines = response.text.split(separator: "\n").map(String.init)
            #expect(lines.contains { $0.hasPrefix("nbd_gateway_requests_total{") && $0.contains("status=\"404\"") })
            // Every sample line: name{labels} value; every comment: # HELP or # TYPE.
            let sample = try Regex(#"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*",?)*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)( -?[0-9]+)?$"#)
            for line in lines where !line.isEmpty {
                if line.hasPrefix("#") {
                    #expect(line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE "), "\(line)")
                } else {
                    #expect(line.wholeMatch(of: sample) != nil, "not a Prometheus sample: \(line)")
                }
            }
        }
    }

    @Test("/metrics: per-export NBD connections, bytes read and written, NBD errors by name")
    func nbdMetrics() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let trigger = directory.appendingPathComponent("fail-writes")
        // Writes fail with EIO while the trigger file exists.
        try await withNBDKitGateway(["--filter=error", "memory", "size=1M", "error-pwrite=EIO", "error-pwrite-rate=100%", "error-pwrite-file=\(trigger.path)"]) { gateway, _ in
            #expect(try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-4095")]).status == 206)  // Read at once.
            #expect(try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=0-307199")]).status == 206)  // Streamed.
            #expect(try await gateway.put("/exports/disk/data?offset=0", [UInt8](repeating: 7, count: 100)).status == 200)
            try Data().write(to: trigger)
            let failed = try await gateway.put("/exports/disk/data?offset=0", [UInt8](repeating: 8, count: 100))
            #expect(failed.status == 502)
            #expect(try failed.errorObject()["nbd_error"] as? String == "EIO")
            let lines = try await gateway.get("/metrics").text.split(separator: "\n").map(String.init)
            #expect(lines.contains(#"nbd_gateway_nbd_connections{export="disk"} 1.0"#), "\(lines.filter { $0.contains("nbd_") })")
            #expect(lines.contains(#"nbd_gateway_nbd_read_bytes_total{export="disk"} 311296"#))
            #expect(lines.contains(#"nbd_gateway_nbd_written_bytes_total{export="disk"} 100"#))
            #expect(lines.contains(#"nbd_gateway_nbd_errors_total{export="disk",error="EIO"} 1"#))
            #expect(lines.contains(#"nbd_gateway_nbd_connect_failures_total{export="disk"} 0"#))
            // No series for a name nobody serves.
            #expect(try await gateway.get("/exports/nosuch").status == 404)
            #expect(!(try await gateway.get("/metrics").text.contains("nosuch")))
        }
    }

    @Test("/openapi.yaml serves the repository's openapi.yaml byte for byte, with a servers entry naming the URL asked")
    func openAPIDocument() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let response = try await gateway.get("/openapi.yaml")
            #expect(response.status == 200)
            #expect(response.header("Content-Type") == "application/yaml")
            let file = try String(contentsOf: Paths.openAPI, encoding: .utf8)
            let expected = file.replacingOccurrences(of: "\npaths:\n", with: "\nservers:\n  - url: \"http://127.0.0.1:\(gateway.port)\"\npaths:\n")
            #expect(expected != file && response.text == expected)
        }
    }

    @Test("without a backend the CLI starts an embedded nbdkit memory disk as export disk0, the only one listed")
    func embeddedDisk() async throws {
        try await withGateway([]) { gateway in
            let head = try await gateway.head("/exports/disk0/data")
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == String(1 << 30))
            let data = randomBytes(4096, seed: 18)
            try await gateway.write("disk0", offset: 1 << 29, data)
            #expect(try await gateway.read("disk0", offset: 1 << 29, length: 4096) == data)
            let list = try await gateway.get("/exports")
            #expect(try list.json()["exports"] as? [[String: String]] == [["name": "disk0", "description": "embedded nbdkit memory disk"]])
            // Other names are not served (nbdkit's memory plugin alone would take any).
            #expect(try await gateway.head("/exports/disk1/data").status == 404)
        }
    }

    @Test("--keep-alive-timeout: an idle keep-alive connection is closed after it")
    func keepAliveTimeout() async throws {
        try await withGateway(["--export", "disk=nbd+unix:///?socket=/nonexistent", "--keep-alive-timeout", "1"]) { gateway in
            let port = gateway.port
            let (status, idle) = try await blockingPool.runIfActive { () throws -> (Int, Duration) in
                let connection = try RawHTTP.Connection(port: port, timeoutSeconds: 10)
                defer { connection.close() }
                let response = try connection.exchange(HTTPRequest("GET", "/healthz", headers: [("Connection", "keep-alive")]), port: port)
                let answered = ContinuousClock.now
                _ = connection.readToEnd()  // Until the server closes it (or 10 s pass).
                return (response.status, ContinuousClock.now - answered)
            }
            #expect(status == 200)
            #expect(idle >= .milliseconds(900) && idle < .seconds(5), "closed after \(idle)")
        }
    }

    @Test("the CLI refuses bad options before listening")
    func badOptions() async throws {
        let binary = try Paths.gatewayBinary()
        for arguments in [["--port", "70000"], ["--keep-alive-timeout", "0"], ["--max-body-size", "-1"], ["--read-retries", "-1"], ["--shutdown-grace", "-1"], ["--pool-size", "0"], ["--requests-per-connection", "0"], ["--request-timeout", "0"], ["--export", "noequals"],
                          ["--export", "d=http://not-nbd"], ["--backend", "nbd+unix:///"], ["--host", "not-an-address", "--port", "0", "--export", "d=nbd+unix:///?socket=/nonexistent"]] {
            let result = try await runProcess(binary, arguments, timeout: .seconds(20), check: false)
            #expect(result.status != 0, "\(arguments)")
            #expect(!result.stdoutText.contains("listening on"), "\(arguments)")
        }
    }
}
