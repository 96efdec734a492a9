import Foundation
import NBDTestSupport
import Testing

/// Faults injected by real servers (nbdkit's error filter) at rates.
@Suite("Faults at a rate", .timeLimit(.minutes(3)))
struct FaultTests {
    @Test("a 1 GiB download through EIO on 0.1% of reads arrives whole and byte-exact (sha256 against the same disk read directly)")
    func gibibyteThroughEIO() async throws {
        try await withNBDKitGateway(["--filter=error", "pattern", "size=1G", "error=EIO", "error-pread-rate=0.1%"]) { gateway, _ in
            try await withServer({ try await Servers.nbdkit(["pattern", "size=1G"]) }) { direct in
                // About 4 of the 4,096 reads of a download fail; a download that met none (1.6%
                // of them) proves nothing, so it goes again, up to 4 times in all.
                var injected = false
                for _ in 0..<4 where !injected {
                    let sums = try await runProcess("sh", ["-c", """
                        set -e
                        curl -sS --fail '\(gateway.baseURL)/exports/disk/data' | sha256sum
                        nbdcopy '\(direct.uri)' - | sha256sum
                        """], timeout: .seconds(150))
                    let lines = sums.stdoutText.split(separator: "\n")
                    #expect(lines.count == 2 && lines[0] == lines[1], "through the gateway and direct differ: \(sums.stdoutText) \(sums.stderrText)")
                    let metrics = try await gateway.get("/metrics").text
                    injected = metrics.contains(#"nbd_gateway_nbd_errors_total{export="disk",error="EIO"}"#)
                }
                #expect(injected, "no EIO was injected in 4 downloads: the test proves nothing")
            }
        }
    }

    @Test("writes failing with ENOSPC at 20%: each answer is 200 or 507 insufficient_storage; every acknowledged block reads back")
    func writesThroughENOSPC() async throws {
        try await withNBDKitGateway(["--filter=error", "memory", "size=4M", "error=ENOSPC", "error-pwrite-rate=20%"]) { gateway, server in
            var acknowledged: [Int: [UInt8]] = [:]
            var refused = 0
            for round in 0..<60 {
                let block = round % 32
                let bytes = [UInt8](repeating: UInt8(truncatingIfNeeded: round &* 7 &+ 1), count: 65536)
                let answer = try await gateway.put("/exports/disk/data?offset=\(block * 65536)", bytes)
                if answer.status == 200 {
                    acknowledged[block] = bytes
                } else {
                    let code = answer.errorCode
                    #expect(answer.status == 507 && code == "insufficient_storage", "\(answer.summary)")
                    acknowledged[block] = nil  // Unknown now: part of it may have been written.
                    refused += 1
                }
            }
            #expect(refused > 0, "no ENOSPC was injected: the test proves nothing")
            let backend = try await readBackend(server.uri, offset: 0, length: 32 * 65536)
            for (block, bytes) in acknowledged {
                #expect(Array(backend[(block * 65536)..<((block + 1) * 65536)]) == bytes, "block \(block)")
            }
            try await gateway.expectServing("disk")
        }
    }
}
