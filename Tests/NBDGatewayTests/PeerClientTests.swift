import Foundation
import NBDTestSupport
import Testing

/// HTTP clients nobody here wrote: curl, qemu-img's curl driver, nbdkit's curl plugin.
@Suite("Real clients: curl, qemu-img, nbdkit's curl plugin with nbdcopy", .timeLimit(.minutes(3)))
struct PeerClientTests {
    @Test("curl: -r ranges, multi-range, -T uploads with ?offset, HEAD")
    func curl() async throws {
        try await withNBDKitGateway(["memory", "size=4M"]) { gateway, server in
            let directory = try Tools.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: directory) }
            let upload = directory.appendingPathComponent("upload.bin")
            let download = directory.appendingPathComponent("download.bin")
            let data = randomBytes(1_500_000, seed: 19)
            try Data(data).write(to: upload)
            let url = "\(gateway.baseURL)/exports/disk/data"

            let put = try await runProcess("curl", ["-sS", "-T", upload.path, "-w", "\n%{http_code}", "\(url)?offset=4096"], timeout: .seconds(30))
            let putLines = put.stdoutText.split(separator: "\n")
            #expect(putLines.last == "200")
            #expect(putLines.first == #"{"operation":"write","offset":4096,"length":1500000}"#)

            let ranged = try await runProcess("curl", ["-sS", "-r", "4096-1504095", "-o", download.path, "-w", "%{http_code}", url], timeout: .seconds(30))
            #expect(ranged.stdoutText == "206")
            #expect(try Data(contentsOf: download) == Data(data))

            let partial = try await runProcess("curl", ["-sS", "-r", "5000-5099", "-o", download.path, "-w", "%{http_code} %{size_download}", url], timeout: .seconds(30))
            #expect(partial.stdoutText == "206 100")
            #expect(try Data(contentsOf: download) == Data(data[904..<1004]))

            let multi = try await runProcess("curl", ["-sS", "-r", "0-9,4096-4105", "-D", "-", "-o", "/dev/null", url], timeout: .seconds(30))
            #expect(multi.stdoutText.contains("206"))
            #expect(multi.stdoutText.lowercased().contains("content-type: multipart/byteranges; boundary="))

            let whole = try await runProcess("curl", ["-sS", "-o", download.path, "-w", "%{http_code} %{size_download}", url], timeout: .seconds(30))
            #expect(whole.stdoutText == "200 \(4 << 20)")

            let head = try await runProcess("curl", ["-sS", "-I", url], timeout: .seconds(30))
            #expect(head.stdoutText.contains("Accept-Ranges: bytes\r\n"))
            #expect(head.stdoutText.contains("Content-Length: \(4 << 20)\r\n"))

            // curl's own Content-Range upload form.
            let small = directory.appendingPathComponent("small.bin")
            try Data("hello, disk".utf8).write(to: small)
            let rangedPut = try await runProcess("curl", ["-sS", "-T", small.path, "-H", "Content-Range: bytes 100-110/*", "-w", "\n%{http_code}", url], timeout: .seconds(30))
            #expect(rangedPut.stdoutText.hasSuffix("\n200"))
            #expect(try await readBackend(server.uri, offset: 100, length: 11) == Array("hello, disk".utf8))
        }
    }

    @Test("curl with Expect: 100-continue to a read-only export gets 403 read_only and uploads nothing")
    func curlExpectContinueReadOnly() async throws {
        try await withNBDKitGateway(["memory", "size=4M"], gatewayArguments: ["--read-only"]) { gateway, server in
            let directory = try Tools.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: directory) }
            let upload = directory.appendingPathComponent("upload.bin")
            try Data(randomBytes(2_000_000, seed: 20)).write(to: upload)
            let url = "\(gateway.baseURL)/exports/disk/data?offset=0"
            func curlPut() async throws -> (status: String, uploaded: Int) {
                let result = try await runProcess("curl", ["-sS", "-o", "/dev/null", "-H", "Expect: 100-continue", "-T", upload.path,
                                                           "-w", "%{http_code} %{size_upload}", url], timeout: .seconds(30))
                let fields = result.stdoutText.split(separator: " ")
                return (String(fields.first ?? ""), Int(fields.last ?? "") ?? -1)
            }
            // The first PUT to the export is decided by a job while the connection is suspended.
            let first = try await curlPut()
            #expect(first.status == "403")
            #expect(first.uploaded == 0)
            // Later PUTs are decided at once from the pooled export info.
            let second = try await curlPut()
            #expect(second.status == "403")
            #expect(second.uploaded == 0)
            #expect(try await readBackend(server.uri, offset: 0, length: 4096) == [UInt8](repeating: 0, count: 4096))
            try await gateway.expectServing("disk")
        }
    }

    @Test("qemu-img convert -m 1 over HTTP (its curl driver) copies the disk byte-exact")
    func qemuImg() async throws {
        try await withNBDKitGateway(["memory", "size=8M"]) { gateway, _ in
            let directory = try Tools.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: directory) }
            var model = [UInt8](repeating: 0, count: 8 << 20)
            for (offset, seed) in [(0, 21), (3 << 20, 22), ((8 << 20) - 100_000, 23)] as [(Int, UInt64)] {
                let bytes = randomBytes(100_000, seed: seed)
                try await gateway.write("disk", offset: UInt64(offset), bytes)
                model.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
            }
            let url = "\(gateway.baseURL)/exports/disk/data"
            try await Tools.requireQemuDriver("http")
            let viaJSON = directory.appendingPathComponent("json.img")
            try await runProcess("qemu-img", ["convert", "-m", "1", "-f", "raw", "-O", "raw",
                                              #"json:{"file.driver":"http","file.url":"\#(url)"}"#, viaJSON.path], timeout: .seconds(45))
            #expect(try Data(contentsOf: viaJSON) == Data(model))
            let viaURL = directory.appendingPathComponent("url.img")
            try await runProcess("qemu-img", ["convert", "-m", "1", "-f", "raw", "-O", "raw", url, viaURL.path], timeout: .seconds(45))
            #expect(try Data(contentsOf: viaURL) == Data(model))
        }
    }

    @Test("nbdkit's curl plugin serves the gateway's export as NBD: nbdcopy reads it byte-exact")
    func nbdkitCurlPluginReads() async throws {
        try await withNBDKitGateway(["pattern", "size=3M"]) { gateway, _ in
            try await withServer({ try await Servers.nbdkit(["curl", "url=\(gateway.baseURL)/exports/disk/data"]) }) { curl in
                let file = curl.directory.appendingPathComponent("copy.bin")
                try await runProcess("nbdcopy", [curl.uri, file.path], timeout: .seconds(45))
                #expect(try Data(contentsOf: file) == Data(patternBytes(offset: 0, length: 3 << 20)))
            }
        }
    }

    @Test("nbdkit's curl plugin: nbdcopy writes a random file through the gateway and reads it back; the backend has it")
    func nbdkitCurlPluginWrites() async throws {
        try await withNBDKitGateway(["memory", "size=2M"]) { gateway, backend in
            try await withServer({ try await Servers.nbdkit(["curl", "url=\(gateway.baseURL)/exports/disk/data"]) }) { curl in
                let source = curl.directory.appendingPathComponent("source.bin")
                let back = curl.directory.appendingPathComponent("back.bin")
                let data = randomBytes(2 << 20, seed: 24)
                try Data(data).write(to: source)
                try await runProcess("nbdcopy", [source.path, curl.uri], timeout: .seconds(45))
                try await runProcess("nbdcopy", [curl.uri, back.path], timeout: .seconds(45))
                #expect(try Data(contentsOf: back) == Data(data))
                #expect(try await readBackend(backend.uri, offset: 0, length: data.count) == data)
                // Whatever became of the plugin, the gateway still serves.
                try await gateway.expectServing("disk")
            }
        }
    }
}
