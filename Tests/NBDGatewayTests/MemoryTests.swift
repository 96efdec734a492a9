import Foundation
import NBDTestSupport
import Testing

/// Bodies stream in bounded memory: the gateway's peak resident set (VmHWM, which the kernel
/// keeps for us, so nothing needs sampling) stays under 64 MiB through a 4 GiB GET and a
/// 1 GiB PUT. curl moves the bytes, to /dev/null and from a sparse file.
@Suite("Memory")
struct MemoryTests {
    private func peakResidentMiB(_ pid: pid_t) throws -> Int {
        try processStatusKiB(pid, "VmHWM") / 1024
    }

    @Test("a 4 GiB GET and a 1 GiB PUT keep the gateway under 64 MiB resident")
    func boundedMemory() async throws {
        try await withNBDKitGateway(["memory", "size=4G"]) { gateway, _ in
            let url = "http://127.0.0.1:\(gateway.port)/exports/disk/data"
            let get = try await runProcess("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", url], timeout: .seconds(120))
            #expect(get.stdoutText == "200 \(4 << 30)")
            let afterGet = try peakResidentMiB(gateway.process.pid)
            #expect(afterGet < 64, "peak RSS \(afterGet) MiB after a 4 GiB GET")

            let directory = try Tools.temporaryDirectory()
            defer { try? FileManager.default.removeItem(at: directory) }
            let upload = directory.appendingPathComponent("upload.bin")
            guard FileManager.default.createFile(atPath: upload.path, contents: nil) else { throw TestFailure("cannot create \(upload.path)") }
            let handle = try FileHandle(forWritingTo: upload)
            try handle.truncate(atOffset: 1 << 30)  // Sparse: reads as zeroes, costs no disk.
            try handle.close()
            let put = try await runProcess("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "-T", upload.path, url], timeout: .seconds(120))
            #expect(put.stdoutText == "200 \(1 << 30)")
            let afterPut = try peakResidentMiB(gateway.process.pid)
            #expect(afterPut < 64, "peak RSS \(afterPut) MiB after a 1 GiB PUT as well")
        }
    }

    private func residentMiB(_ pid: pid_t) throws -> Int {
        try processStatusKiB(pid, "VmRSS") / 1024
    }

    /// Without the budget each export's connection kept its whole pool of receive buffers:
    /// 406 MiB resident here after the same reads, and still while idle.
    @Test("16 MiB reads from 200 exports, 20 at a time: the receive-buffer budget keeps the gateway under 200 MiB, and idle connections give their buffers back")
    func manyExports() async throws {
        try await withServer({ try await Servers.nbdkit(["pattern", "size=1G"]) }) { server in
            let exports = (1...200).flatMap { ["--export", "e\($0)=\(server.uri)"] }
            try await withGateway(exports) { gateway in
                for batch in stride(from: 1, through: 200, by: 20) {
                    try await withThrowingTaskGroup(of: ProcessResult.self) { group in
                        for index in batch..<(batch + 20) {
                            group.addTask {
                                try await runProcess("curl", ["-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-r", "0-16777215",
                                                              "\(gateway.baseURL)/exports/e\(index)/data"], timeout: .seconds(60))
                            }
                        }
                        for try await result in group { #expect(result.stdoutText == "206 16777216") }
                    }
                }
                let peak = try peakResidentMiB(gateway.process.pid)
                #expect(peak < 200, "peak RSS \(peak) MiB")
                // A second after its last reply each connection gives back what it borrowed.
                var last = ""
                try await waitUntil("the borrowed receive buffers given back (\(last))") {
                    let metrics = try await gateway.send(HTTPRequest("GET", "/metrics"), record: false).text
                    last = metrics.split(separator: "\n").first { $0.hasPrefix("nbd_gateway_receive_buffer_bytes ") }.map(String.init) ?? "no such series"
                    return Double(last.dropFirst("nbd_gateway_receive_buffer_bytes ".count)) == 0
                }
                let resident = try residentMiB(gateway.process.pid)
                #expect(resident < 160, "resident \(resident) MiB when idle")
            }
        }
    }
}
