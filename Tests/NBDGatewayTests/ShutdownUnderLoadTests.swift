import Foundation
import NBDTestSupport
import Synchronization
import Testing

/// SIGTERM while uploads and downloads stream: every write acknowledged with 2xx is on the
/// backend afterwards, no download carries a wrong byte, and the process exits 0 within its
/// grace period plus 2 s.
@Suite("Shutdown under load", .timeLimit(.minutes(2)))
struct ShutdownUnderLoadTests {
    static let region = 8 << 20
    static let uploaders = 6
    static let downloaders = 3

    final class Progress: Sendable {
        /// Region → seed of its last write answered 2xx.
        let acknowledged = Mutex<[Int: UInt64]>([:])
        let wrongDownloads = Atomic<Int>(0)
        let downloadsDone = Atomic<Int>(0)
        let stopping = Atomic<Bool>(false)
    }

    /// Every whole 8-byte word is 0 (never written) or `seed + index` with a seed of that
    /// region's uploader.
    static func isMadeOfWrites(_ body: [UInt8]) -> Bool {
        body.withUnsafeBytes { raw in
            var offset = 0
            while offset + 8 <= raw.count {
                let word = raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
                let region = offset / Self.region
                let seed = word &- UInt64((offset % Self.region) / 8)
                if word != 0 && seed >> 40 != UInt64(region) { return false }
                offset += 8
            }
            return true
        }
    }

    /// An 8 MiB block whose 8-byte words are `seed + index`.
    static func block(seed: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: region)
        bytes.withUnsafeMutableBytes { raw in
            for word in 0..<(region / 8) { raw.storeBytes(of: seed &+ UInt64(word), toByteOffset: word * 8, as: UInt64.self) }
        }
        return bytes
    }

    @Test("uploads and downloads streaming at SIGTERM: acknowledged writes on the backend, no wrong byte, exit 0 within grace + 2 s")
    func sigtermDuringTransfers() async throws {
        let grace = 3.0
        try await withServer({ try await Servers.nbdkit(["memory", "size=\(Self.region * Self.uploaders)"]) }) { server in
            let gateway = try await Gateway.start(["--export", "disk=\(server.uri)", "--shutdown-grace", String(grace)])
            let port = gateway.port
            let progress = Progress()
            try await withThrowingTaskGroup(of: Void.self) { group in
                for uploader in 0..<Self.uploaders {
                    group.addTask {
                        var seed = UInt64(uploader) << 40
                        while true {
                            seed += 1
                            let request = HTTPRequest("PUT", "/exports/disk/data?offset=\(uploader * Self.region)", body: Self.block(seed: seed))
                            guard let response = try? await RawHTTP.send(request, port: port, timeoutSeconds: 10) else { return }
                            guard (200..<300).contains(response.status) else {
                                #expect(response.status == 503, "upload after SIGTERM: \(response.summary)")
                                return
                            }
                            progress.acknowledged.withLock { $0[uploader] = seed }
                        }
                    }
                }
                for _ in 0..<Self.downloaders {
                    group.addTask {
                        while !progress.stopping.load(ordering: .relaxed) {
                            guard let response = try? await RawHTTP.send(HTTPRequest("GET", "/exports/disk/data"), port: port, timeoutSeconds: 10) else { return }
                            if response.status != 200 { return }
                            // Whatever arrived (whole, or cut by the shutdown) holds, in each
                            // word, zero or a word of some write to that region: nothing torn.
                            if Self.isMadeOfWrites(response.body) {
                                progress.downloadsDone.add(1, ordering: .relaxed)
                            } else {
                                progress.wrongDownloads.add(1, ordering: .relaxed)
                            }
                        }
                    }
                }
                group.addTask {
                    // Let transfers run, then SIGTERM in the middle of them.
                    try await waitUntil("every region written once") { progress.acknowledged.withLock { $0.count } == Self.uploaders }
                    progress.stopping.store(true, ordering: .relaxed)
                    let (status, timedOut, took) = await gateway.process.stopTimed(timeout: .seconds(grace) + TestTiming.stretched(.seconds(8)))
                    #expect(!timedOut && status == 0, "exit \(status); stderr: \(gateway.process.stderrText.suffix(2000))")
                    #expect((took ?? .seconds(3600)) < .seconds(grace) + TestTiming.stretched(.seconds(2)), "took \(String(describing: took))")
                }
                try await group.waitForAll()
            }
            await gateway.stop()
            #expect(progress.wrongDownloads.load(ordering: .relaxed) == 0)
            #expect(progress.downloadsDone.load(ordering: .relaxed) > 0, "no download took place: the test proves nothing")
            // Every region holds the last write acknowledged for it.
            let backend = try await readBackend(server.uri, offset: 0, length: Self.region * Self.uploaders)
            for (uploader, seed) in progress.acknowledged.withLock({ $0 }) {
                let start = uploader * Self.region
                #expect(Array(backend[start..<(start + Self.region)]) == Self.block(seed: seed), "region \(uploader): not its last acknowledged write (seed \(seed))")
            }
        }
    }
}
