import Foundation
import NBDTestSupport
import Testing

/// `nbd copy` and `nbd checksum` with gateway URLs: over HTTPS with a token, from and to
/// standard streams, resumed after a cut, and incremental from a qcow2 dirty bitmap. Data is
/// checked with `cmp` against nbdcopy's copy of the source; bytes moved are counted by the
/// gateway's access log (`bytes_in` of each PUT) and by the tool's summary.
@Suite("nbd copy and nbd checksum through the gateway", .timeLimit(.minutes(3)))
struct CopyThroughGatewayTests {
    static let size = 32 << 20
    /// About a quarter data, in runs of about 256 KiB: every 4 MiB chunk has some of each.
    static let sparseRandom = ["sparse-random", "size=\(size)", "percent=25", "runlength=262144", "seed=5"]

    @discardableResult
    func run(_ arguments: [String], check: Bool = true) async throws -> ProcessResult {
        try await runProcess(try Paths.toolBinary(), arguments, timeout: .seconds(120), check: check)
    }

    /// Runs a shell line (for `<` and `>`), the tool's path in `$NBD`.
    @discardableResult
    func shell(_ line: String, check: Bool = true) async throws -> ProcessResult {
        try await runProcess("sh", ["-c", line], timeout: .seconds(120), check: check, environment: ["NBD": try Paths.toolBinary()])
    }

    func expectSame(_ first: URL, _ second: URL, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let comparison = try await runProcess("cmp", [first.path, second.path], check: false)
        #expect(comparison.status == 0, "\(comparison.stdoutText)\(comparison.stderrText)", sourceLocation: sourceLocation)
    }

    /// Bytes of data (not zero) in an NBD export, as `nbdinfo --map --totals` counts them.
    func dataBytes(_ uri: String) async throws -> Int {
        let totals = try await runProcess("nbdinfo", ["--map", "--totals", uri]).stdoutText
        return totals.split(separator: "\n").compactMap { line -> Int? in
            let fields = line.split(separator: " ")
            return fields.last == "data" ? Int(fields[0]) : nil
        }.reduce(0, +)
    }

    /// The access log's PUT lines from line `from` on: how many, and the body bytes they carried.
    func puts(_ log: URL, from: Int = 0) throws -> (count: Int, bytes: Int, lines: Int) {
        let lines = (try String(contentsOf: log, encoding: .utf8)).split(separator: "\n")
        var count = 0, bytes = 0
        for line in lines.dropFirst(from) {
            guard let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], object["method"] as? String == "PUT" else { continue }
            count += 1
            bytes += (object["bytes_in"] as? NSNumber)?.intValue ?? 0
        }
        return (count, bytes, lines.count)
    }

    /// The figures of the tool's `wrote N bytes of data, zeroed Z, skipped S already there` line.
    func summary(_ result: ProcessResult) throws -> (wrote: Int, zeroed: Int, skipped: Int) {
        guard let line = result.stderrText.split(separator: "\n").first(where: { $0.hasPrefix("nbd copy: wrote ") }) else {
            throw TestFailure("no summary in: \(result.stderrText)")
        }
        let numbers = line.split(whereSeparator: { !$0.isNumber }).compactMap { Int($0) }
        guard numbers.count == 3 else { throw TestFailure("summary: \(line)") }
        return (numbers[0], numbers[1], numbers[2])
    }

    @Test("HTTPS with a token: NBD → gateway (--verify), gateway → file byte-exact with holes; nbd checksum of the URL, --local, the export and the file agree; no token is 401")
    func httpsWithToken() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await Certificates.make(in: directory)
        let tokens = directory.appendingPathComponent("tokens")
        try "s3cret-token rw *\n".write(to: tokens, atomically: true, encoding: .utf8)
        let accessLog = directory.appendingPathComponent("access.log")
        let reference = directory.appendingPathComponent("reference.img")
        try await withServer({ try await Servers.nbdkit(Self.sparseRandom) }) { source in
            try await runProcess("nbdcopy", [source.uri, reference.path])
            let sourceData = try await dataBytes(source.uri)
            try await withNBDKitGateway(
                ["memory", "size=\(Self.size)"],
                gatewayArguments: ["--https-cert", directory.appendingPathComponent("server-cert.pem").path,
                                   "--https-key", directory.appendingPathComponent("server-key.pem").path,
                                   "--auth-file", tokens.path, "--access-log", accessLog.path]
            ) { gateway, backend in
                let url = "https://localhost:\(gateway.port)/exports/disk/data"
                let access = ["--token", "s3cret-token", "--cacert", directory.appendingPathComponent("ca-cert.pem").path]
                let copied = try await run(["copy", "--verify"] + access + [source.uri, url])
                #expect(copied.stderrText.contains("verified: blake2b block checksum"))
                let backendCopy = directory.appendingPathComponent("backend.img")
                try await runProcess("nbdcopy", [backend.uri, backendCopy.path])
                try await expectSame(reference, backendCopy)
                // Only the data crossed HTTP: zero extents went as /zero.
                let sent = try puts(accessLog)
                #expect(sent.bytes == sourceData, "PUT bodies: \(sent.bytes) bytes; data in the source: \(sourceData)")

                let file = directory.appendingPathComponent("copy.img")
                try await run(["copy"] + access + [url, file.path])
                try await expectSame(reference, file)
                let allocated = try Tools.allocatedBytes(file)
                #expect(allocated < Self.size / 2, "\(allocated) bytes allocated of \(Self.size)")

                let sums = [
                    try await run(["checksum"] + access + [url]).stdoutText,
                    try await run(["checksum", "--local"] + access + [url]).stdoutText,
                    try await run(["checksum", source.uri]).stdoutText,
                    try await run(["checksum", file.path]).stdoutText,
                ].map { $0.split(separator: " ").first.map(String.init) ?? "" }
                #expect(Set(sums).count == 1 && sums[0].count == 64, "\(sums)")

                let refused = try await run(["copy", "--cacert", directory.appendingPathComponent("ca-cert.pem").path, url, file.path], check: false)
                #expect(refused.status == 1)
                #expect(refused.stderrText.contains("HTTP 401 unauthorized"), "\(refused.stderrText)")
                let untrusted = try await run(["checksum", "--token", "s3cret-token", url], check: false)
                #expect(untrusted.status == 1 && untrusted.stderrText.contains("TLS certificate not trusted"), "\(untrusted.stderrText)")
            }
        }
    }

    @Test("standard streams: - → gateway, gateway → -, - → a sparse file; a stream longer than the export is refused")
    func streams() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let reference = directory.appendingPathComponent("reference.img")
        _ = try await withServer({ try await Servers.nbdkit(Self.sparseRandom) }) { source in
            try await runProcess("nbdcopy", [source.uri, reference.path])
        }
        try await withNBDKitGateway(["memory", "size=\(Self.size)"]) { gateway, backend in
            let url = "\(gateway.baseURL)/exports/disk/data"
            try await shell("\"$NBD\" copy - '\(url)' < '\(reference.path)'")
            let backendCopy = directory.appendingPathComponent("backend.img")
            try await runProcess("nbdcopy", [backend.uri, backendCopy.path])
            try await expectSame(reference, backendCopy)

            let downloaded = directory.appendingPathComponent("downloaded.img")
            try await shell("\"$NBD\" copy '\(url)' - > '\(downloaded.path)'")
            try await expectSame(reference, downloaded)

            let sparse = directory.appendingPathComponent("sparse.img")
            try await shell("cat '\(reference.path)' | \"$NBD\" copy - '\(sparse.path)'")
            try await expectSame(reference, sparse)
            let allocated = try Tools.allocatedBytes(sparse)
            #expect(allocated < Self.size * 3 / 4, "\(allocated) bytes allocated of \(Self.size)")

            let tooLong = try await shell("cat '\(reference.path)' '\(reference.path)' | \"$NBD\" copy - '\(url)'", check: false)
            #expect(tooLong.status == 1)
            #expect(tooLong.stderrText.contains("longer than the destination"), "\(tooLong.stderrText)")
        }
    }

    /// Sends one command to nbdkit's pause filter and waits for its echo ('P' once requests
    /// received before it are done, 'R').
    func pauseControl(_ socket: URL, _ command: String) async throws {
        let script = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send(sys.argv[2].encode()); print(s.recv(1).decode())"
        let answer = try await runProcess("/usr/bin/python3", ["-c", script, socket.path, command]).stdoutText
        #expect(answer.trimmingCharacters(in: .whitespacesAndNewlines) == command.uppercased())
    }

    @Test("a gateway source written to during the copy: the copy fails (412 on the next read) instead of mixing two states")
    func sourceChangedDuringCopy() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let control = directory.appendingPathComponent("pause.sock")
        // The pause filter holds the copy's reads while a write is admitted. Reads take 0.2 s
        // each (longer under a sanitizer, where this test sees the progress line late), so the
        // pause lands with about 30 of the 32 still to come.
        let delay = "delay-read=\(200 * TestTiming.scale)ms"
        try await withNBDKitGateway(["--filter=pause", "--filter=delay", "memory", "size=32M", "pause-control=\(control.path)", delay]) { gateway, _ in
            let url = "\(gateway.baseURL)/exports/disk/data"
            _ = try await withServer({ try await Servers.nbdkit(["pattern", "size=32M"]) }) { pattern in
                try await run(["copy", pattern.uri, url])
            }
            let before = try #require(try await gateway.get("/exports/disk").header("ETag"))
            let copy = directory.appendingPathComponent("copy.img")
            let tool = try Paths.toolBinary()
            let line = "'\(tool)' copy --requests 1 --progress-json '\(url)' '\(copy.path)' 2>&1 >/dev/null"
            let process = try BackgroundProcess(try Tools.path("sh"), ["-c", line], stderrPath: directory.appendingPathComponent("stderr").path)
            let failure: String
            do {
                _ = try await process.waitForLine(containing: "{\"copied\":1048576,", timeout: .seconds(60))
                try await pauseControl(control, "p")
                async let written = gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=31457280", body: [UInt8](repeating: 1, count: 4096)))
                try await waitUntil("the write admitted") { try await gateway.get("/exports/disk").header("ETag") != before }
                try await pauseControl(control, "r")
                #expect(try await written.status == 200)
                failure = try await process.waitForLine(containing: "nbd: ", timeout: .seconds(60))
            } catch {
                try? await pauseControl(control, "r")
                await process.stop()
                throw error
            }
            await process.stop()
            #expect(failure.contains("the source changed during the copy"), "\(failure)")
        }
    }

    @Test("--resume after a cut: only the part not there is sent (PUT bytes counted); a file destination is written in place, not truncated")
    func resume() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let reference = directory.appendingPathComponent("reference.img")
        let accessLog = directory.appendingPathComponent("access.log")
        _ = try await withServer({ try await Servers.nbdkit(Self.sparseRandom) }) { source in
            try await runProcess("nbdcopy", [source.uri, reference.path])
        }
        let half = Self.size / 2
        let data = try Data(contentsOf: reference)
        let chunk = 1 << 20
        // What --resume may send: the second half's data (4 KiB blocks not all zero), and the
        // part of one piece across the middle that lies in the first half.
        let secondHalfData = stride(from: half, to: Self.size, by: 4096).filter { start in
            data[start..<(start + 4096)].contains { $0 != 0 }
        }.count * 4096
        try await withNBDKitGateway(["memory", "size=\(Self.size)"], gatewayArguments: ["--access-log", accessLog.path]) { gateway, backend in
            let url = "\(gateway.baseURL)/exports/disk/data"
            try await run(["copy", "--chunk-size", String(chunk), reference.path, url])
            let full = try puts(accessLog)
            // The cut: the second half never arrived.
            let zeroed = try await gateway.send(HTTPRequest("POST", "/exports/disk/zero?offset=\(half)&length=\(half)"))
            #expect(zeroed.status == 200)
            try await waitUntil("the first copy's PUTs in the access log") { (try? puts(accessLog).count) ?? 0 >= full.count }
            let before = try puts(accessLog)

            let resumed = try await run(["copy", "--resume", "--chunk-size", String(chunk), reference.path, url])
            let figures = try summary(resumed)
            let after = try puts(accessLog, from: before.lines)
            #expect(figures.wrote == after.bytes, "the summary says \(figures.wrote), the gateway received \(after.bytes)")
            #expect(after.bytes <= secondHalfData + chunk, "sent \(after.bytes) bytes; the second half has \(secondHalfData) of data")
            #expect(after.bytes > 0 && after.bytes < full.bytes, "sent \(after.bytes) of \(full.bytes)")
            #expect(figures.skipped > 0)
            let backendCopy = directory.appendingPathComponent("backend.img")
            try await runProcess("nbdcopy", [backend.uri, backendCopy.path])
            try await expectSame(reference, backendCopy)
        }

        // A file: 4 KiB spoiled; --resume rewrites the one piece holding them (data pieces are
        // 1 MiB, zero runs here a few MiB at most), in place.
        let file = directory.appendingPathComponent("copy.img")
        try await run(["copy", reference.path, file.path])
        let handle = try FileHandle(forWritingTo: file)
        try handle.seek(toOffset: UInt64(5 * chunk))
        handle.write(Data(repeating: 0xA5, count: 4096))
        try handle.close()
        let resumed = try await run(["copy", "--resume", "--chunk-size", String(chunk), reference.path, file.path])
        let figures = try summary(resumed)
        let redone = figures.wrote + figures.zeroed
        #expect(redone > 0 && redone <= 4 * chunk, "\(resumed.stderrText)")
        #expect(figures.skipped == Self.size - redone)
        try await expectSame(reference, file)
    }

    /// A 64 MiB qcow2 backed up whole, then written to while the bitmap b0 records: 64 KiB at
    /// 4 MiB and 128 KiB at 10 MiB of data, and 64 KiB of zeroes over data at 20 MiB.
    @Test("--dirty-bitmap: from qemu-nbd and from the gateway, only the dirty blocks move, and the backup then equals the disk")
    func dirtyBitmap() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let image = directory.appendingPathComponent("disk.qcow2").path
        try await runProcess("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"])
        try await runProcess("qemu-io", ["-c", "write -P 7 0 1M", "-c", "write -P 5 20M 2M", image])
        let backup = directory.appendingPathComponent("backup.img")
        _ = try await withServer({ try await Servers.qemuNBD(image: image, readOnly: true, format: "qcow2") }) { server in
            try await run(["copy", server.uri, backup.path])
        }
        let backupForGateway = directory.appendingPathComponent("backup-gateway.img")
        try FileManager.default.copyItem(at: backup, to: backupForGateway)
        try await runProcess("qemu-img", ["bitmap", "--add", image, "b0"])
        try await runProcess("qemu-io", ["-c", "write -P 9 4M 64k", "-c", "write -P 9 10M 128k", "-c", "write -z 20M 64k", image])

        try await withServer({ try await Servers.qemuNBD(image: image, readOnly: true, format: "qcow2", extraArguments: ["-B", "b0"]) }) { server in
            let current = directory.appendingPathComponent("current.img")
            try await runProcess("nbdcopy", [server.uri, current.path])
            let direct = try await run(["copy", "--dirty-bitmap", "b0", server.uri, backup.path])
            let figures = try summary(direct)
            #expect(figures.wrote == 192 << 10 && figures.zeroed == 64 << 10, "\(direct.stderrText)")
            try await expectSame(current, backup)

            try await withGateway(["--export", "disk=\(server.uri)"]) { gateway in
                let viaGateway = try await run(["copy", "--dirty-bitmap", "b0", "\(gateway.baseURL)/exports/disk/data", backupForGateway.path])
                let figures = try summary(viaGateway)
                #expect(figures.wrote == 192 << 10 && figures.zeroed == 64 << 10, "\(viaGateway.stderrText)")
                try await expectSame(current, backupForGateway)
            }
            let unknown = try await run(["copy", "--dirty-bitmap", "nope", server.uri, backup.path], check: false)
            #expect(unknown.status == 1)
        }
    }
}
