import Foundation
import NBDTestSupport
import Testing

/// deploy/nginx-reverse-proxy.conf run for real: nginx in front of three gateway replicas under
/// --base-path, and its HTTPS-upstream variant in front of a gateway serving HTTPS.
@Suite("Behind nginx: the deployed configuration, three replicas, an HTTPS upstream", .serialized, .timeLimit(.minutes(5)))
struct ReverseProxyTests {
    /// An nginx running the repository's site file with its placeholders replaced.
    final class Proxy: Sendable {
        let process: BackgroundProcess
        let port: Int
        let directory: URL

        init(upstreams: [Int], tlsCA: String? = nil) async throws {
            directory = try Tools.temporaryDirectory()
            port = try await Tools.freePort()
            var site = try String(contentsOf: Paths.repository.appendingPathComponent("deploy/nginx-reverse-proxy.conf"), encoding: .utf8)
            func replaceLine(_ placeholder: String, with text: String) throws {
                let lines = site.split(separator: "\n", omittingEmptySubsequences: false)
                guard lines.filter({ $0.trimmingCharacters(in: .whitespaces) == placeholder }).count == 1 else {
                    throw TestFailure("the placeholder line \"\(placeholder)\" is not in the site file exactly once")
                }
                site = lines.map { $0.trimmingCharacters(in: .whitespaces) == placeholder ? Substring(text) : $0 }.joined(separator: "\n")
            }
            try replaceLine("listen 8081;", with: "    listen 127.0.0.1:\(port);")
            var upstreamBlock = ""
            if let tlsCA {
                // The variant the file describes: its #tls# lines instead of the plain proxy_pass.
                try replaceLine("server 127.0.0.1:8080;", with: "    server 127.0.0.1:1;")
                try replaceLine("proxy_pass http://nbd_gateway;", with: "")
                site = site.replacingOccurrences(of: "#tls# ", with: "")
                site = site.replacingOccurrences(of: "/etc/nginx/nbd-gateway-ca.pem", with: tlsCA)
                site = site.replacingOccurrences(of: "proxy_ssl_name gateway.internal;", with: "proxy_ssl_name localhost;")
                upstreamBlock = "upstream nbd_gateway_tls { server 127.0.0.1:\(upstreams[0]); keepalive 32; }"
            } else {
                try replaceLine("server 127.0.0.1:8080;", with: upstreams.map { "    server 127.0.0.1:\($0);" }.joined(separator: "\n"))
            }
            let prefix = directory.path
            try site.write(to: directory.appendingPathComponent("site.conf"), atomically: true, encoding: .utf8)
            try """
                daemon off;
                worker_processes 1;
                \(getuid() == 0 ? "user root;" : "")
                pid \(prefix)/nginx.pid;
                error_log \(prefix)/error.log;
                events { worker_connections 256; }
                http {
                    access_log \(prefix)/access.log;
                    client_body_temp_path \(prefix)/client_body;
                    proxy_temp_path \(prefix)/proxy;
                    \(upstreamBlock)
                    include \(prefix)/site.conf;
                }
                """.write(to: directory.appendingPathComponent("nginx.conf"), atomically: true, encoding: .utf8)
            process = try BackgroundProcess(try Tools.path("nginx"), ["-p", prefix + "/", "-e", prefix + "/error.log", "-c", prefix + "/nginx.conf"], stderrPath: prefix + "/stderr")
            let url = "http://127.0.0.1:\(port)/nbd/healthz"
            try await waitUntil("nginx answers") { (try? await runProcess("curl", ["-sf", url], timeout: .seconds(5), check: false))?.status == 0 }
        }

        var baseURL: String { "http://127.0.0.1:\(port)/nbd" }

        func stop() async {
            _ = await process.stop()
            try? FileManager.default.removeItem(at: directory)
        }
    }

    func curl(_ arguments: [String]) async throws -> ProcessResult {
        try await runProcess("curl", ["-sS", "--fail-with-body"] + arguments, timeout: .seconds(120))
    }

    @Test("three replicas: writes read back through other replicas, ranges, multipart, chunked and 1 GiB uploads byte-exact, the public URL and client address carried")
    func threeReplicas() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withServer({ try await Servers.nbdkit(["memory", "size=1G"]) }) { disk in
            try await withServer({ try await Servers.nbdkit(["memory", "size=1M", "multi-conn-mode=disable"], extraOptions: ["--filter=multi-conn"]) }) { single in
                var replicas: [Gateway] = []
                for index in 0..<3 {
                    replicas.append(try await Gateway.start([
                        "--export", "disk=\(disk.uri)", "--export", "single=\(single.uri)", "--base-path", "/nbd",
                        "--trusted-proxy", "127.0.0.1", "--access-log", directory.appendingPathComponent("access-\(index).log").path,
                    ]))
                }
                let proxy = try await Proxy(upstreams: replicas.map(\.port))
                do {
                    try await exercise(proxy, replicas: replicas, directory: directory)
                } catch {
                    Issue.record("\(error)\nnginx: \((try? String(contentsOf: proxy.directory.appendingPathComponent("error.log"), encoding: .utf8)) ?? "")")
                }
                await proxy.stop()
                for replica in replicas { await replica.stop() }
            }
        }
    }

    private func exercise(_ proxy: Proxy, replicas: [Gateway], directory: URL) async throws {
        let base = proxy.baseURL
        let info = try JSONSerialization.jsonObject(with: try await curl(["\(base)/exports/disk"]).stdout) as? [String: Any]
        #expect(info?["consistent_across_gateways"] as? Bool == true)
        let single = try JSONSerialization.jsonObject(with: try await curl(["\(base)/exports/single"]).stdout) as? [String: Any]
        #expect(single?["consistent_across_gateways"] as? Bool == false)

        // Round robin: each read goes to another replica than the write before it.
        let block = directory.appendingPathComponent("block")
        for round in 0..<12 {
            let bytes = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* (round + 3) &+ round) }
            try Data(bytes).write(to: block)
            let offset = round * (1 << 20) + 17
            _ = try await curl(["-X", "PUT", "--data-binary", "@\(block.path)", "\(base)/exports/disk/data?offset=\(offset)"])
            let read = try await curl(["-r", "\(offset)-\(offset + 4095)", "\(base)/exports/disk/data"])
            #expect(Array(read.stdout) == bytes, "round \(round): read back differs")
        }
        for index in replicas.indices {
            let log = try String(contentsOf: directory.appendingPathComponent("access-\(index).log"), encoding: .utf8)
            #expect(log.contains(#""method":"PUT""#) && log.contains(#""status":206"#), "replica \(index) did not take part")
            #expect(log.contains(#""client":"127.0.0.1""#) && log.contains(#""path":"/nbd/exports/disk/data""#))
        }

        // A multipart answer passes through whole.
        let headers = directory.appendingPathComponent("headers")
        let multipart = try await curl(["-D", headers.path, "-r", "17-20,1048593-1048596", "\(base)/exports/disk/data"])
        let headerText = try String(contentsOf: headers, encoding: .utf8)
        let contentType = try #require(headerText.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-type:") })
        let boundary = try #require(Multipart.boundary(of: String(contentType.dropFirst("content-type:".count))))
        let parts = try Multipart.parse(Array(multipart.stdout), boundary: boundary)
        #expect(parts.map(\.data) == [[0, 3, 6, 9], [1, 5, 9, 13]])  // Rounds 0 and 1's first bytes.

        // The served contract names the URL the client used, from nginx's forwarded headers.
        let contract = try await curl(["\(base)/openapi.yaml"]).stdoutText
        #expect(contract.contains("servers:\n  - url: \"http://127.0.0.1:\(proxy.port)/nbd\"\n"))

        // A chunked upload (no length) and a 1 GiB one, read back whole through the proxy.
        let chunked = directory.appendingPathComponent("chunked.bin")
        try await runProcess("sh", ["-c", "head -c 8388608 /dev/urandom > '\(chunked.path)'"])
        _ = try await curl(["-T", chunked.path, "-H", "Transfer-Encoding: chunked", "\(base)/exports/disk/data?offset=65536"])
        let back = try await curl(["-r", "65536-\(65536 + 8388607)", "\(base)/exports/disk/data"])
        #expect(back.stdout == (try Data(contentsOf: chunked)), "the chunked upload did not come back byte-exact")

        let whole = directory.appendingPathComponent("whole.bin")
        try await runProcess("sh", ["-c", "head -c 1073741824 /dev/urandom > '\(whole.path)'"], timeout: .seconds(120))
        _ = try await curl(["-T", whole.path, "\(base)/exports/disk/data?offset=0"])
        let sums = try await runProcess("sh", ["-c", "sha256sum < '\(whole.path)'; curl -sS --fail '\(base)/exports/disk/data' | sha256sum"], timeout: .seconds(180))
        let lines = sums.stdoutText.split(separator: "\n")
        #expect(lines.count == 2 && lines[0] == lines[1], "1 GiB through nginx: \(sums.stdoutText)")
    }

    @Test("the HTTPS-upstream variant: nginx verifies the gateway's certificate; uploads and ranges pass byte-exact")
    func httpsUpstream() async throws {
        let certificates = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: certificates) }
        try await Certificates.make(in: certificates)
        func file(_ name: String) -> String { certificates.appendingPathComponent(name).path }
        try await withNBDKitGateway(["memory", "size=16M"], gatewayArguments: [
            "--base-path", "/nbd", "--https-cert", file("server-cert.pem"), "--https-key", file("server-key.pem"),
        ]) { gateway, server in
            let proxy = try await Proxy(upstreams: [gateway.port], tlsCA: file("ca-cert.pem"))
            do {
                let upload = certificates.appendingPathComponent("upload.bin")
                let bytes = (0..<(3 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ ($0 >> 12)) }
                try Data(bytes).write(to: upload)
                _ = try await curl(["-T", upload.path, "\(proxy.baseURL)/exports/disk/data?offset=4096"])
                #expect(try await readBackend(server.uri, offset: 4096, length: bytes.count) == bytes)
                let range = try await curl(["-r", "5000-5099", "\(proxy.baseURL)/exports/disk/data"])
                #expect(Array(range.stdout) == Array(bytes[904..<1004]))
            } catch {
                Issue.record("\(error)\nnginx: \((try? String(contentsOf: proxy.directory.appendingPathComponent("error.log"), encoding: .utf8)) ?? "")")
            }
            await proxy.stop()
        }
    }
}
