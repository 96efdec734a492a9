import Foundation
import NBDTestSupport
import Synchronization
import Testing

/// Bounded soak: 8 clients write, read back and map their own blocks for 15 s while the NBD server
/// is killed (SIGKILL) and restarted twice; `/readyz` is polled throughout. The long variant:
/// `SOAK_SECONDS=600 swift test --filter SoakTests` (memory and descriptors sampled each minute). Every answer is either right or the contract's JSON
/// error, never wrong bytes; afterwards the gateway serves, every block acknowledged last reads
/// back, and its descriptors and memory are back near where they started.
@Suite("Soak: load through backend crashes", .timeLimit(.minutes(15)))
struct SoakTests {
    static let blockSize = 65536
    static let clients = 8
    static let blocksPerClient = 8

    struct Counts: Sendable {
        var ok = 0
        var contractErrors: [String: Int] = [:]
        var wrong: [String] = []
    }

    final class Tally: Sendable {
        private let counts = Mutex(Counts())
        func withLock<T>(_ body: (inout Counts) -> T) -> T { counts.withLock { body(&$0) } }
    }

    /// How long the load runs (the long variant sets SOAK_SECONDS).
    static let seconds = ProcessInfo.processInfo.environment["SOAK_SECONDS"].flatMap(Int.init) ?? 15

    final class Readiness: Sendable {
        let statuses = Mutex<[Int]>([])
        let samples = Mutex<[(descriptors: Int, residentKiB: Int)]>([])
    }

    @Test("8 clients for 15 s, the backend killed twice: no wrong byte, only contract errors, /readyz truthful, resources back to baseline")
    func soak() async throws {
        let backend = try await RestartableNBDKit { directory in
            let image = directory.appendingPathComponent("disk.img").path
            _ = FileManager.default.createFile(atPath: image, contents: nil)
            try FileHandle(forWritingTo: URL(fileURLWithPath: image)).truncate(atOffset: UInt64(Self.blockSize * Self.clients * Self.blocksPerClient))
            return ["file", image]
        }
        defer { backend.stop() }
        try await withGateway(["--export", "disk=nbd+unix:///?socket=\(backend.socket)", "--request-timeout", "2"]) { gateway in
            // Warm up, then take the baseline.
            for client in 0..<Self.clients { try await gateway.write("disk", offset: UInt64(client * Self.blocksPerClient * Self.blockSize), [1]) }
            let baseline = try Self.resources(gateway.process.pid)
            let tally = Tally()
            let readiness = Readiness()
            let deadline = ContinuousClock.now + .seconds(Self.seconds)
            let pid = gateway.process.pid
            try await withThrowingTaskGroup(of: Void.self) { group in
                for client in 0..<Self.clients {
                    group.addTask { try await Self.client(client, gateway: gateway, until: deadline, tally: tally) }
                }
                group.addTask {
                    // Crashes at about 1/4 and 2/3 of the run (4 s and 10 s of the short one).
                    for pause in [Self.seconds / 4, Self.seconds * 2 / 3 - Self.seconds / 4 - 1] {
                        try await Task.sleep(for: .seconds(pause))
                        try await backend.crash()
                        try await Task.sleep(for: .milliseconds(700))
                        try await backend.start()
                    }
                }
                group.addTask {
                    // /readyz throughout, and resources each minute.
                    var nextSample = ContinuousClock.now
                    while ContinuousClock.now < deadline {
                        let ready = try await gateway.send(HTTPRequest("GET", "/readyz"), record: false)
                        readiness.statuses.withLock { $0.append(ready.status) }
                        if ContinuousClock.now >= nextSample {
                            let sample = try Self.resources(pid)
                            readiness.samples.withLock { $0.append(sample) }
                            nextSample += .seconds(60)
                        }
                        try await Task.sleep(for: .milliseconds(200))
                    }
                }
                try await group.waitForAll()
            }
            let statuses = readiness.statuses.withLock { $0 }
            #expect(statuses.contains(503), "/readyz never said the backend was down")
            #expect(Set(statuses).isSubset(of: [200, 503]), "\(Set(statuses))")
            try await waitUntil("/readyz says ready again") { try await gateway.send(HTTPRequest("GET", "/readyz"), record: false).status == 200 }
            let samples = readiness.samples.withLock { $0 }
            print("soak: resources each minute (descriptors, resident KiB): \(samples.map { "(\($0.descriptors), \($0.residentKiB))" }.joined(separator: " "))")
            if samples.count >= 3 {
                let resident = samples.dropFirst().map(\.residentKiB)
                #expect((resident.max() ?? 0) - (resident.min() ?? 0) < 32 * 1024, "resident memory not flat: \(resident)")
            }
            let result = tally.withLock { $0 }
            print("soak: \(result.ok) right answers; contract errors \(result.contractErrors.sorted { $0.key < $1.key })")
            #expect(result.wrong.isEmpty, "wrong answers: \(result.wrong.prefix(5))")
            #expect(result.ok > 100, "too little got through: \(result.ok)")
            #expect(!result.contractErrors.isEmpty, "the crashes were not seen: the test proves nothing")
            try await gateway.expectServing("disk")
            // Descriptors and memory settle back (idle NBD connections may stay open).
            try await waitUntil("descriptors back near the baseline") { try Self.resources(gateway.process.pid).descriptors <= baseline.descriptors + 8 }
            let after = try Self.resources(gateway.process.pid)
            // Under scripts/sanitize the resident memory is the sanitizer's (shadow memory, quarantine).
            if ProcessInfo.processInfo.environment["NBD_TESTS_SANITIZER"] == nil {
                #expect(after.residentKiB < baseline.residentKiB + 64 * 1024, "resident memory grew from \(baseline.residentKiB) to \(after.residentKiB) KiB")
            }
        }
    }

    /// One client: writes a random block of its own, reads it back; an acknowledged write must
    /// read back exactly (until the next write to that block), a failed one leaves it unknown.
    static func client(_ client: Int, gateway: Gateway, until deadline: ContinuousClock.Instant, tally: Tally) async throws {
        var known: [Int: [UInt8]] = [:]
        var generator = SystemRandomNumberGenerator()
        let allowed: Set<String> = ["backend_unreachable", "backend_error", "service_unavailable", "gateway_timeout", "bad_gateway"]
        func note(_ response: HTTPResponse) throws -> Bool {
            if (200..<300).contains(response.status) { return true }
            let code = (try? response.errorObject()["code"] as? String) ?? nil
            tally.withLock { tally in
                if let code, allowed.contains(code) { tally.contractErrors[code, default: 0] += 1 } else { tally.wrong.append("not a contract error: \(response.summary)") }
            }
            return false
        }
        while ContinuousClock.now < deadline {
            let block = client * blocksPerClient + Int.random(in: 0..<blocksPerClient, using: &generator)
            let offset = block * blockSize
            // Words of a fresh random seed plus their index: distinct each write, cheap to make.
            let seed = UInt64.random(in: 0...UInt64.max, using: &generator)
            var bytes = [UInt8](repeating: 0, count: blockSize)
            bytes.withUnsafeMutableBytes { raw in
                for word in 0..<(blockSize / 8) { raw.storeBytes(of: seed &+ UInt64(word), toByteOffset: word * 8, as: UInt64.self) }
            }
            let write = try await gateway.send(HTTPRequest("PUT", "/exports/disk/data?offset=\(offset)", body: bytes), record: false)
            known[block] = try note(write) ? bytes : nil
            let read = try await gateway.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=\(offset)-\(offset + blockSize - 1)")]), record: false)
            if try note(read) {
                if let expected = known[block], read.body != expected || !read.complete {
                    tally.withLock { $0.wrong.append("block \(block): read back differs from the acknowledged write") }
                } else {
                    tally.withLock { $0.ok += 1 }
                }
            }
            // The block's allocation map: extents that start at it.
            let extents = try await gateway.send(HTTPRequest("GET", "/exports/disk/extents?offset=\(offset)&length=\(blockSize)"), record: false)
            if try note(extents) {
                let first = (try? extents.json()["extents"] as? [[String: Any]])?.first
                if (first?["offset"] as? NSNumber)?.intValue == offset {
                    tally.withLock { $0.ok += 1 }
                } else {
                    tally.withLock { $0.wrong.append("extents at \(offset): \(extents.summary)") }
                }
            }
        }
        // After the chaos: every acknowledged block reads back.
        for (block, expected) in known {
            let offset = UInt64(block * blockSize)
            try await waitUntil("block \(block) reads back") {
                let read = try await gateway.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=\(offset)-\(offset + UInt64(blockSize) - 1)")]), record: false)
                return read.status == 206 && read.body == expected
            }
        }
    }

    static func resources(_ pid: pid_t) throws -> (descriptors: Int, residentKiB: Int) {
        let descriptors = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count
        return (descriptors, try processStatusKiB(pid, "VmRSS"))
    }
}
