import Foundation
import NBDTestSupport
import Testing

/// Reads that fail now and then (nbdkit's error filter: EIO on 3% of reads) are read again
/// from the first byte not yet sent: downloads complete byte-exact; with `--read-retries 0`
/// the same disk cuts them short.
@Suite("Read retries over a flaky backend", .timeLimit(.minutes(3)))
struct ReadRetryTests {
    static let size = 64 << 20
    static let flaky = ["--filter=error", "pattern", "size=64M", "error=EIO", "error-pread-rate=3%"]

    /// Whether `body` is nbdkit's pattern from `offset`: each 8-byte word holds its own offset.
    static func isPattern(_ body: [UInt8], from offset: UInt64 = 0) -> Bool {
        body.withUnsafeBytes { raw in
            var position = 0
            while position + 8 <= raw.count {
                let word = raw.loadUnaligned(fromByteOffset: position, as: UInt64.self).bigEndian
                if word != offset + UInt64(position) { return false }
                position += 8
            }
            return true
        }
    }

    @Test("three 64 MiB downloads and 200 small ranges through 3% EIO: all whole and exact")
    func retriedReadsComplete() async throws {
        try await withNBDKitGateway(Self.flaky) { gateway, _ in
            for _ in 0..<3 {
                let whole = try await gateway.get("/exports/disk/data")
                #expect(whole.status == 200 && whole.complete && whole.body.count == Self.size, "\(whole.status) \(whole.body.count) bytes")
                #expect(Self.isPattern(whole.body))
            }
            for index in 0..<200 {
                let offset = UInt64(index) * 65536
                let small = try await gateway.get("/exports/disk/data", headers: [("Range", "bytes=\(offset)-\(offset + 4095)")])
                #expect(small.status == 206 && Self.isPattern(small.body, from: offset), "\(small.summary)")
            }
        }
    }

    @Test("--read-retries 0: the same flaky disk cuts downloads short (the body is cut, never wrong)")
    func withoutRetriesDownloadsAreCut() async throws {
        try await withNBDKitGateway(Self.flaky, gatewayArguments: ["--read-retries", "0"]) { gateway, _ in
            var cut = 0
            for _ in 0..<3 {
                let whole = try await gateway.get("/exports/disk/data")
                if !whole.complete { cut += 1 }
                #expect(Self.isPattern(whole.body), "what arrived is right")
            }
            #expect(cut >= 1, "3% of 256 reads failing never cut a download")
        }
    }
}
