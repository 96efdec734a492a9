import Foundation
import NBDTestSupport
import Synchronization
import Testing

/// Every error the contract lists that a client or a backend can provoke, each followed by a
/// check that the gateway still serves.
@Suite("HTTP errors: routing, syntax, unknown exports, backend failures", .timeLimit(.minutes(3)))
struct HTTPErrorTests {
    static let memory = ["memory", "size=1M"]

    @Test("unknown paths: 404 not_found, whatever the method")
    func notFound() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            for (method, target) in [("GET", "/ui/nope.js"), ("GET", "/nope"), ("GET", "/exports/disk/data/x"), ("GET", "/exports/disk/other"),
                                     ("GET", "/exports/a/b/data"), ("DELETE", "/nope"), ("PUT", "/nope"), ("POST", "/exports/disk/data/"),
                                     ("GET", "/EXPORTS"), ("GET", "/healthz/")] {
                let body: [UInt8]? = method == "PUT" || method == "POST" ? Array("x".utf8) : nil
                let response = try await gateway.send(HTTPRequest(method, target, body: body))
                #expect(response.status == 404, "\(method) \(target)")
                #expect(response.errorCode == "not_found", "\(method) \(target)")
                #expect(try response.errorObject()["export"] is NSNull)
                try await gateway.expectServing("disk")
            }
        }
    }

    @Test("methods a path does not define: 405 method_not_allowed with Allow; checked before the query and the name")
    func methodNotAllowed() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let cases: [(String, String, String)] = [
                ("DELETE", "/exports/disk/data", "GET, HEAD, PUT, OPTIONS"),
                ("POST", "/exports/disk/data", "GET, HEAD, PUT, OPTIONS"),
                ("PATCH", "/exports/disk/data?offset=x", "GET, HEAD, PUT, OPTIONS"),
                ("DELETE", "/exports/%ZZ/data", "GET, HEAD, PUT, OPTIONS"),
                ("GET", "/exports/disk/flush", "POST"),
                ("PUT", "/exports/disk/trim", "POST"),
                ("GET", "/exports/disk/zero?length=x", "POST"),
                ("PUT", "/exports/disk", "GET, HEAD"),
                ("POST", "/healthz", "GET, HEAD"),
                ("PUT", "/openapi.yaml", "GET, HEAD"),
                ("DELETE", "/exports", "GET, HEAD"),
                ("OPTIONS", "/metrics", "GET, HEAD"),
            ]
            for (method, target, allow) in cases {
                let body: [UInt8]? = method == "PUT" || method == "POST" || method == "PATCH" ? Array("body".utf8) : nil
                let response = try await gateway.send(HTTPRequest(method, target, body: body))
                #expect(response.status == 405, "\(method) \(target): \(response.summary)")
                #expect(response.errorCode == "method_not_allowed", "\(method) \(target)")
                #expect(response.header("Allow") == allow, "\(method) \(target)")
                try await gateway.expectServing("disk")
            }
        }
    }

    @Test("a name that is not valid percent-encoded UTF-8, or too long: 400 bad_request")
    func badNames() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            for target in ["/exports/%ZZ/data", "/exports/%C3%28/data", "/exports/abc%/extents", "/exports/%FF",
                           "/exports/" + String(repeating: "n", count: 4097) + "/data"] {
                let response = try await gateway.get(target)
                #expect(response.status == 400, "\(target.prefix(60))")
                #expect(response.errorCode == "bad_request")
                try await gateway.expectServing("disk")
            }
            let put = try await gateway.put("/exports/%ZZ/data", Array("x".utf8))
            #expect(put.status == 400)
            #expect(put.errorCode == "bad_request")
            try await gateway.expectServing("disk")
        }
    }

    @Test("unknown exports: 404 unknown_export (NBD_REP_ERR_UNKNOWN) from a strict backend; named exports like a/b work")
    func unknownExport() async throws {
        let arguments = ["--filter=exportname", "memory", "size=1M", "exportname=a/b", "exportname=other",
                         "exportname-strict=true", "exportname-list=explicit"]
        try await withServer({ try await Servers.nbdkit(arguments) }) { server in
            try await withGateway(["--backend", server.uri]) { gateway in
                let list = try await gateway.get("/exports")
                #expect(list.status == 200)
                let names = try #require(try list.json()["exports"] as? [[String: String]]).compactMap { $0["name"] }
                #expect(Set(names) == ["a/b", "other"])
                let info = try await gateway.get("/exports/a%2Fb")
                #expect(info.status == 200)
                #expect(try info.json()["name"] as? String == "a/b")
                let data = randomBytes(1000, seed: 16)
                try await gateway.write("a%2Fb", offset: 10, data)
                #expect(try await gateway.read("a%2Fb", offset: 10, length: 1000) == data)

                for (method, target) in [("GET", "/exports/nope/data"), ("GET", "/exports/nope"), ("HEAD", "/exports/nope/data"),
                                         ("OPTIONS", "/exports/nope/data"), ("GET", "/exports/nope/extents"), ("POST", "/exports/nope/flush"),
                                         ("PUT", "/exports/nope/data"), ("GET", "/exports//data"), ("GET", "/exports/a%2Fb%2Fc/data"),
                                         ("GET", "/exports/a/data")] {
                    let body: [UInt8]? = method == "PUT" || method == "POST" ? Array("x".utf8) : nil
                    let response = try await gateway.send(HTTPRequest(method, target, body: body))
                    #expect(response.status == 404, "\(method) \(target): \(response.summary)")
                    if method != "HEAD" {
                        let error = try response.errorObject()
                        #expect(error["code"] as? String == "unknown_export", "\(method) \(target)")
                        #expect(error["nbd_error"] as? String == "NBD_REP_ERR_UNKNOWN")
                        #expect(error["nbd_errno"] as? Int == 2_147_483_654)
                    }
                    try await gateway.expectServing("a%2Fb")
                }
            }
        }
        // With --export, a name that is not configured is unknown without asking any backend.
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let response = try await gateway.get("/exports/other/data")
            #expect(response.status == 404)
            #expect(response.errorCode == "unknown_export")
            #expect(try response.errorObject()["export"] as? String == "other")
        }
    }

    @Test("request headers over 16 KiB: 431 request_header_too_large; the gateway goes on")
    func headerTooLarge() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let big = String(repeating: "a", count: 17 * 1024)
            let response = try await gateway.get("/exports/disk/data", headers: [("X-Big", big)])
            #expect(response.status == 431)
            #expect(response.errorCode == "request_header_too_large")
            let split = String(repeating: "b", count: 9 * 1024)
            let several = try await gateway.get("/healthz", headers: [("X-One", split), ("X-Two", split)])
            #expect(several.status == 431)
            // Just under the limit is fine.
            let fits = try await gateway.get("/healthz", headers: [("X-Fits", String(repeating: "c", count: 15 * 1024))])
            #expect(fits.status == 200)
            try await gateway.expectServing("disk")
            // Above libmicrohttpd's per-connection memory (1 MiB) the library answers by itself
            // (431 with an HTML body and no X-Request-Id: outside what the gateway controls, so
            // not recorded for the contract check). The gateway must survive it.
            let huge = try await gateway.send(HTTPRequest("GET", "/healthz", headers: [("X-Huge", String(repeating: "d", count: 2 << 20))]), record: false)
            #expect(huge.status == 431)
            try await gateway.expectServing("disk")
        }
    }

    @Test("malformed requests that libmicrohttpd refuses itself do not hurt the gateway")
    func malformedRequests() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let requests = [
                "GARBAGE\r\n\r\n",
                "GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
                "PUT /exports/disk/data HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                "PUT /exports/disk/data HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                "PUT /exports/disk/data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "GET /healthz HTTP/1.1\r\n\r\n",  // HTTP/1.1 without Host.
                "\r\n\r\n\r\n",
            ]
            for request in requests {
                _ = try await RawHTTP.sendRaw(Array(request.utf8), port: gateway.port, readTimeoutSeconds: 5)
                try await gateway.expectServing("disk")
            }
        }
    }

    @Test("X-Request-Id: echoed when valid (header and error body), generated otherwise, unique")
    func requestID() async throws {
        try await withNBDKitGateway(Self.memory) { gateway, _ in
            let valid = "req-1.A_b:c"
            let ok = try await gateway.get("/healthz", headers: [("X-Request-Id", valid)])
            #expect(ok.header("X-Request-Id") == valid)
            let failed = try await gateway.get("/nope", headers: [("x-request-id", valid)])
            #expect(failed.header("X-Request-Id") == valid)
            #expect(try failed.errorObject()["request_id"] as? String == valid)
            let longest = String(repeating: "z", count: 128)
            #expect(try await gateway.get("/healthz", headers: [("X-Request-Id", longest)]).header("X-Request-Id") == longest)
            var seen = Set<String>()
            for invalid in [String(repeating: "z", count: 129), "a b", "semi;colon", "caf\u{e9}", "slash/x", ""] {
                let response = try await gateway.get("/nope", headers: [("X-Request-Id", invalid)])
                let generated = try #require(response.header("X-Request-Id"))
                #expect(generated != invalid)
                #expect(!generated.isEmpty && generated.count <= 128)
                #expect(generated.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "._:-".contains($0)) })
                #expect(try response.errorObject()["request_id"] as? String == generated)
                seen.insert(generated)
            }
            #expect(seen.count == 6, "generated ids are unique")
        }
    }

    @Test("NBD errors from the backend (nbdkit error filter): EIO 502, ENOSPC 507, ENOMEM/ESHUTDOWN 503, EPERM 403, EINVAL 400")
    func backendErrors() async throws {
        let arguments = ["--filter=error", "memory", "size=1M", "error-pwrite=EIO", "error-pwrite-rate=100%",
                         "error-trim=ENOSPC", "error-trim-rate=100%", "error-zero=ENOMEM", "error-zero-rate=100%",
                         "error-extents=EPERM", "error-extents-rate=100%"]
        try await withNBDKitGateway(arguments) { gateway, _ in
            let expectations: [(HTTPRequest, Int, String, String, Int)] = [
                (HTTPRequest("PUT", "/exports/disk/data?offset=0", body: randomBytes(4096, seed: 1)), 502, "backend_error", "EIO", 5),
                (HTTPRequest("POST", "/exports/disk/trim?length=4096"), 507, "insufficient_storage", "ENOSPC", 28),
                (HTTPRequest("POST", "/exports/disk/zero?length=4096"), 503, "service_unavailable", "ENOMEM", 12),
                (HTTPRequest("GET", "/exports/disk/extents"), 403, "forbidden", "EPERM", 1),
            ]
            for (request, status, code, nbdError, nbdErrno) in expectations {
                let response = try await gateway.send(request)
                #expect(response.status == status, "\(request.method) \(request.target): \(response.summary)")
                let error = try response.errorObject()
                #expect(error["code"] as? String == code)
                #expect(error["nbd_error"] as? String == nbdError)
                #expect(error["nbd_errno"] as? Int == nbdErrno)
                if status == 503 { #expect(response.header("Retry-After") != nil) }
                #expect(error["export"] as? String == "disk")
                try await gateway.expectServing("disk")
            }
            // Reads still work.
            #expect(try await gateway.read("disk", offset: 0, length: 10) == [UInt8](repeating: 0, count: 10))
        }
        let others = ["--filter=error", "memory", "size=1M", "error-trim=ESHUTDOWN", "error-trim-rate=100%",
                      "error-zero=EINVAL", "error-zero-rate=100%"]
        try await withNBDKitGateway(others) { gateway, _ in
            let shutdown = try await gateway.post("/exports/disk/trim?length=1")
            #expect(shutdown.status == 503)
            #expect(shutdown.errorCode == "service_unavailable")
            #expect(try shutdown.errorObject()["nbd_error"] as? String == "ESHUTDOWN")
            #expect(shutdown.header("Retry-After") != nil)
            let invalid = try await gateway.post("/exports/disk/zero?length=1")
            #expect(invalid.status == 400)
            #expect(invalid.errorCode == "invalid_argument")
            #expect(try invalid.errorObject()["nbd_errno"] as? Int == 22)
            try await gateway.expectServing("disk")
        }
    }

    @Test("a read error (EIO): 502 backend_error before the status line, or a cut body after it (the contract's abort); the gateway goes on")
    func readErrorMidBody() async throws {
        let arguments = ["--filter=error", "pattern", "size=4M", "error-pread=EIO", "error-pread-rate=100%"]
        try await withNBDKitGateway(arguments) { gateway, _ in
            for headers in [[], [("Range", "bytes=100-200000")], [("Range", "bytes=0-9,100000-100009")]] as [[(name: String, value: String)]] {
                let response = try await gateway.get("/exports/disk/data", headers: headers)
                if response.status >= 400 {
                    #expect(response.status == 502)
                    #expect(response.errorCode == "backend_error")
                } else {
                    #expect(!response.complete, "a failed read must not look like a whole body")
                }
                try await gateway.expectServing("disk")
            }
        }
    }

    @Test("--request-timeout 1 with a slow backend (delay filter): 504 gateway_timeout, and the export recovers")
    func gatewayTimeout() async throws {
        let arguments = ["--filter=delay", "memory", "size=1M", "delay-write=3", "delay-trim=3", "delay-extents=3"]
        try await withNBDKitGateway(arguments, gatewayArguments: ["--request-timeout", "1"]) { gateway, _ in
            let requests = [
                HTTPRequest("PUT", "/exports/disk/data?offset=0", body: randomBytes(100, seed: 1)),
                HTTPRequest("POST", "/exports/disk/trim?length=512"),
                HTTPRequest("GET", "/exports/disk/extents"),
            ]
            for request in requests {
                let started = ContinuousClock.now
                let response = try await gateway.send(request)
                #expect(response.status == 504, "\(request.method) \(request.target): \(response.summary)")
                #expect(response.errorCode == "gateway_timeout")
                // 504 itself shows the gateway's timeout fired: the backend would answer 200 after 3 s.
                #expect(ContinuousClock.now - started < TestTiming.stretched(.seconds(10)))
                // Reads are not delayed: the export is served again at once.
                #expect(try await gateway.read("disk", offset: 0, length: 16).count == 16)
                try await gateway.expectServing("disk")
            }
        }
        // A slow read: 504 when the gateway reads before answering (small ranges), else the
        // status line is out already and the timeout cuts the body.
        try await withNBDKitGateway(["--filter=delay", "memory", "size=1M", "delay-read=3"], gatewayArguments: ["--request-timeout", "1"]) { gateway, _ in
            for headers in [[("Range", "bytes=0-99")], []] as [[(name: String, value: String)]] {
                let response = try await gateway.get("/exports/disk/data", headers: headers)
                if response.status >= 400 {
                    #expect(response.status == 504)
                    #expect(response.errorCode == "gateway_timeout")
                } else {
                    #expect(!response.complete)
                }
                try await gateway.expectServing()
            }
        }
    }

    /// An nbdkit on a fixed socket path that can be killed and started again.
    final class RestartableBackend: Sendable {
        let directory: URL
        var socket: String { directory.appendingPathComponent("nbd.sock").path }
        var pidFile: String { directory.appendingPathComponent("nbdkit.pid").path }
        var uri: String { "nbd+unix:///?socket=\(socket)" }
        private let pids = Mutex<[pid_t]>([])

        init() throws { directory = try Tools.temporaryDirectory() }

        /// Starts nbdkit (it forks once listening) and returns its PID.
        func start() async throws -> pid_t {
            try? FileManager.default.removeItem(atPath: pidFile)  // Never read the previous server's PID.
            try? FileManager.default.removeItem(atPath: socket)  // A killed server leaves its socket file.
            try await runProcess("nbdkit", ["-P", pidFile, "-U", socket, "memory", "size=1M"])
            let pid = try await Tools.readPID(URL(fileURLWithPath: pidFile))
            pids.withLock { $0.append(pid) }
            return pid
        }

        /// Stops every server this started and removes the files.
        func cleanUp() {
            for pid in pids.withLock({ $0 }) where !processHasExited(pid) { kill(pid, SIGKILL) }
            try? FileManager.default.removeItem(at: directory)
        }
    }

    @Test("backend crash (SIGKILL): 502 backend_unreachable, /readyz 503 not_ready, /healthz 200; back when the backend returns")
    func backendCrash() async throws {
        let backend = try RestartableBackend()
        defer { backend.cleanUp() }
        let pid = try await backend.start()
        try await withGateway(["--export", "disk=\(backend.uri)", "--export", "never=nbd+unix:///?socket=\(backend.directory.path)/none.sock"]) { gateway in
            #expect(try await gateway.head("/exports/disk/data").status == 200)
            let never = try await gateway.get("/exports/never/data")
            #expect(never.status == 502)
            #expect(never.errorCode == "backend_unreachable")
            let notReady = try await gateway.get("/readyz")
            #expect(notReady.status == 503)
            #expect(notReady.errorCode == "not_ready")
            #expect(notReady.header("Retry-After") != nil)
            #expect((try notReady.errorObject()["message"] as? String)?.contains("none.sock") == true)

            kill(pid, SIGKILL)
            #expect(try await waitUntilExited(pid, timeout: .seconds(10)))
            // Everything that needs the backend: 502 backend_unreachable.
            for request in [HTTPRequest("POST", "/exports/disk/flush"), HTTPRequest("GET", "/exports/disk/extents"),
                            HTTPRequest("PUT", "/exports/disk/data", body: [1, 2, 3]),
                            HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=0-9")])] {
                let response = try await gateway.send(request)
                #expect(response.status == 502, "\(request.method) \(request.target): \(response.summary)")
                #expect(response.errorCode == "backend_unreachable", "\(request.method) \(request.target)")
            }
            let whole = try await gateway.get("/exports/disk/data")
            let head = try await gateway.head("/exports/disk/data")
            #expect(whole.status == 502 || !whole.complete, "never a body that looks whole")
            #expect(whole.status == 502)
            #expect(head.status == 502)
            #expect(try await gateway.get("/readyz").status == 503)
            #expect(try await gateway.get("/healthz").status == 200)

            // The backend comes back on the same socket: the pool reconnects after its backoff
            // (at most 5 s). Polling is the only signal there is.
            _ = try await backend.start()
            var recovered = false
            let deadline = ContinuousClock.now + .seconds(15)
            while ContinuousClock.now < deadline {
                if try await gateway.send(HTTPRequest("POST", "/exports/disk/flush"), record: false).status == 200 {
                    recovered = true
                    break
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(recovered)
            // Still not ready, but only because of the export that never had a backend.
            let message = try await gateway.get("/readyz").errorObject()["message"] as? String ?? ""
            #expect(message.contains("none.sock") && !message.contains("nbd.sock"), "\(message)")
            let data = randomBytes(1000, seed: 17)
            try await gateway.write("disk", offset: 0, data)
            #expect(try await gateway.read("disk", offset: 0, length: 1000) == data)
        }
    }

    @Test("backend shutting down (SIGTERM): 503 service_unavailable (ESHUTDOWN); the gateway lets go of it so it can exit")
    func backendShutdown() async throws {
        let backend = try RestartableBackend()
        defer { backend.cleanUp() }
        let pid = try await backend.start()
        try await withGateway(["--export", "disk=\(backend.uri)"]) { gateway in
            #expect(try await gateway.post("/exports/disk/flush").status == 200)
            // nbdkit finishes its clients' work before exiting and answers ESHUTDOWN meanwhile.
            // It handles the signal asynchronously and nothing tells us when: poll, bounded.
            kill(pid, SIGTERM)
            var response = try await gateway.post("/exports/disk/flush")
            let deadline = ContinuousClock.now + .seconds(5)
            while response.status == 200 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
                response = try await gateway.post("/exports/disk/flush")
            }
            #expect(response.status == 503)
            #expect(response.errorCode == "service_unavailable")
            #expect(try response.errorObject()["nbd_error"] as? String == "ESHUTDOWN")
            #expect(try response.errorObject()["nbd_errno"] as? Int == 108)
            #expect(response.header("Retry-After") != nil)
            // "ESHUTDOWN: the server is going away; finish in-flight work and disconnect."
            let exited = try await waitUntilExited(pid, timeout: .seconds(3))
            #expect(exited)
            let after = try await gateway.post("/exports/disk/flush")
            #expect(after.status == 502)
            #expect(after.errorCode == "backend_unreachable")
            try await gateway.expectServing()
        }
    }
}

/// Whether a process is gone or a zombie (daemonised servers are not our children, and the
/// container's init may not reap them, so `kill(pid, 0)` is no test).
func processHasExited(_ pid: pid_t) -> Bool {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return true }
    let state = stat[stat.index(after: close)...].trimmingCharacters(in: .whitespaces).prefix(1)
    return state == "Z" || state == "X"
}

/// Waits until `pid` has exited. Not our child, so nothing signals it: bounded polling.
func waitUntilExited(_ pid: pid_t, timeout: Duration) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if processHasExited(pid) { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return processHasExited(pid)
}
