import ArgumentParser
import Foundation
import NBDClient
import NIOCore
import NIOPosix

/// Compares this client with libnbd's tools on the same nbdkit server, in one run:
/// sequential read over one connection against `nbdcopy --connections=1`, and 4 KiB random
/// reads with 32 requests in flight on one connection against fio's nbd engine at iodepth 32.
@main
struct ClientBenchmark: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nbd-bench",
        abstract: "Benchmark the NBD client against nbdcopy and fio on one nbdkit server."
    )

    @Option(help: "NBD URI of the server to measure (nbdkit pattern or memory, at least --size bytes).")
    var uri: String

    @Option(help: "Bytes read sequentially.")
    var size: UInt64 = 1 << 30

    @Option(help: "Seconds of random reads for each side.")
    var seconds: Int = 10

    @Option(help: "Repetitions of the sequential read (the best of each side counts).")
    var repeats: Int = 3

    func run() async throws {
        let client = try await NBDClient.connect(to: uri, configuration: NBDClientConfiguration(maximumRequestsInFlight: 64, maximumBytesInFlight: 64 << 20))
        guard client.size >= size else { throw ValidationError("export is smaller than --size") }

        var ours = Double.infinity
        var theirs = Double.infinity
        for _ in 0..<repeats {
            theirs = min(theirs, try await timeProcess("nbdcopy", ["--connections=1", "--no-extents", uri, "null:"]))
            ours = min(ours, try await sequentialRead(client))
        }
        let oursRate = Double(size) / ours / 1_048_576
        let theirsRate = Double(size) / theirs / 1_048_576
        print(String(format: "sequential read %d MiB, 1 connection: nbd-client %.0f MiB/s, nbdcopy %.0f MiB/s, ratio %.2fx",
                     Int(size >> 20), oursRate, theirsRate, oursRate / theirsRate))

        let fioIOPS = try await fioRandomRead()
        let ourIOPS = try await randomRead(client)
        print(String(format: "4 KiB random read, 32 in flight, 1 connection: nbd-client %.0f IOPS, fio %.0f IOPS, ratio %.2fx",
                     ourIOPS, fioIOPS, ourIOPS / fioIOPS))
        await client.disconnect()
    }

    /// Reads `size` bytes with 16 requests of 2 MiB in flight, into reused memory.
    private func sequentialRead(_ client: NBDClient) async throws -> Double {
        let chunk = 2 << 20
        let workers = 16
        let size = self.size
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<workers {
                group.addTask {
                    let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
                    defer { memory.deallocate() }
                    var offset = UInt64(worker * chunk)
                    while offset < size {
                        let length = Int(min(UInt64(chunk), size - offset))
                        try await client.read(at: offset, into: [UnsafeMutableRawBufferPointer(rebasing: memory[0..<length])])
                        offset += UInt64(workers * chunk)
                    }
                }
            }
            try await group.waitForAll()
        }
        return (ContinuousClock.now - start).seconds
    }

    /// 32 tasks reading random aligned 4 KiB blocks for `seconds`, on the connection's event
    /// loop (as fio runs its requests and completions on one thread).
    private func randomRead(_ client: NBDClient) async throws -> Double {
        let blocks = size / 4096
        let deadline = ContinuousClock.now + .seconds(seconds)
        let start = ContinuousClock.now
        let total = try await withTaskExecutorPreference(client.executor) {
            try await randomReaders(client, blocks: blocks, deadline: deadline)
        }
        return Double(total) / (ContinuousClock.now - start).seconds
    }

    private func randomReaders(_ client: NBDClient, blocks: UInt64, deadline: ContinuousClock.Instant) async throws -> Int {
        try await withThrowingTaskGroup(of: Int.self) { group in
            for worker in 0..<32 {
                group.addTask {
                    var generator = SplitMix(seed: UInt64(worker + 1))
                    let memory = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 4096)
                    defer { memory.deallocate() }
                    var count = 0
                    while ContinuousClock.now < deadline {
                        try await client.read(at: (generator.next() % blocks) * 4096, into: [memory])
                        count += 1
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
    }

    private func fioRandomRead() async throws -> Double {
        let output = try await runProcess("fio", [
            "--name=randread", "--ioengine=nbd", "--uri=\(uri)", "--rw=randread", "--bs=4k", "--iodepth=32",
            "--size=\(size)", "--time_based", "--runtime=\(seconds)", "--output-format=json",
        ])
        // fio's nbd engine prints a line of its own before the JSON.
        let json = output.firstIndex(of: UInt8(ascii: "{")).map { output[$0...] } ?? output
        guard let root = try JSONSerialization.jsonObject(with: json) as? [String: Any],
              let jobs = root["jobs"] as? [[String: Any]], let read = jobs.first?["read"] as? [String: Any],
              let iops = (read["iops"] as? NSNumber)?.doubleValue
        else { throw ValidationError("cannot parse fio's JSON output") }
        return iops
    }

    private func timeProcess(_ name: String, _ arguments: [String]) async throws -> Double {
        let start = ContinuousClock.now
        _ = try await runProcess(name, arguments)
        return (ContinuousClock.now - start).seconds
    }

    private func runProcess(_ name: String, _ arguments: [String]) async throws -> Data {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [name] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
        let data = try await NIOThreadPool.singleton.runIfActive { pipe.fileHandleForReading.readDataToEndOfFile() }
        guard status == 0 else { throw ValidationError("\(name) exited with status \(status)") }
        return data
    }
}

struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
