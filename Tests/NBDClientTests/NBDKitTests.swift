import NBDTestSupport
import Foundation
import NBDClient
import NBDProtocol
import NIOCore
import Testing

@Suite("Against nbdkit")
struct NBDKitTests {
    @Test("Negotiates size, flags, structured replies and base:allocation")
    func negotiates() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=64M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            #expect(client.size == 64 << 20)
            #expect(client.info.structuredReplies)
            #expect(client.info.canBlockStatus)
            #expect(client.info.canFlush && client.info.canTrim && client.info.canZero && client.info.canFUA)
            #expect(!client.info.isReadOnly)
            await client.disconnect()
        }
    }

    @Test("Writes and reads back at unaligned offsets, across request splits, over TCP")
    func roundTrip() async throws {
        // Requests larger than 64 KiB are split: the filter enforces the maximum it advertises.
        let arguments = ["--filter=blocksize-policy", "memory", "size=16M", "blocksize-maximum=64K", "blocksize-error-policy=error"]
        try await withServer({ try await Servers.nbdkit(arguments, tcp: true) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            #expect(client.info.blockSize.maximum == 65536)
            let data = randomBytes(1_000_003)
            try await client.write(at: 12_345, bytes: data)
            let back = try await client.read(at: 12_345, length: data.count)
            #expect(Array(buffer: back) == data)
            let edge = try await client.read(at: 12_340, length: 10)
            #expect(Array(buffer: edge) == [0, 0, 0, 0, 0] + data.prefix(5))
            await client.disconnect()
        }
    }

    @Test("Data written by this client is read back byte-exact by nbdcopy, and the other way round")
    func crossCheckWithNBDCopy() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=8M"]) }) { server in
            let file = server.directory.appendingPathComponent("copy.bin")
            let client = try await NBDClient.connect(to: server.uri)
            let data = randomBytes(8 << 20, seed: 7)
            try await client.write(at: 0, bytes: data)
            try await client.flush()
            try await Tools.run("nbdcopy", [server.uri, file.path])
            #expect(try Data(contentsOf: file) == Data(data))

            let other = randomBytes(8 << 20, seed: 99)
            try Data(other).write(to: file)
            try await Tools.run("nbdcopy", [file.path, server.uri])
            let back = try await client.read(at: 0, length: other.count)
            #expect(Array(buffer: back) == other)
            await client.disconnect()
        }
    }

    @Test("nbdkit's file plugin: what the client writes is in the file, byte for byte")
    func filePlugin() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("disk.img")
        var expected = randomBytes(4 << 20, seed: 41)
        try Data(expected).write(to: file)
        try await withServer({ try await Servers.nbdkit(["file", file.path]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            #expect(client.size == 4 << 20)
            let patch = randomBytes(1_234_567, seed: 42)
            try await client.write(at: 999_999, bytes: patch, fua: true)
            expected.replaceSubrange(999_999..<(999_999 + patch.count), with: patch)
            try await client.trim(at: 0, length: 0 + 4096)  // Advisory: contents may or may not change.
            try await client.flush()
            let onDisk = try Data(contentsOf: file)
            #expect(onDisk[999_999..<(999_999 + patch.count)] == Data(patch))
            #expect(Array(buffer: try await client.read(at: 999_000, length: 3_000_000)) == Array(expected[999_000..<3_999_000]))
            await client.disconnect()
        }
    }

    @Test("Reads the pattern plugin's known bytes, large reads pipelined")
    func patternRead() async throws {
        try await withServer({ try await Servers.nbdkit(["pattern", "size=64M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            let big = try await client.read(at: 8_000_001, length: 40 << 20)
            #expect(big.readableBytes == 40 << 20)
            #expect(big.getBytes(at: big.readerIndex + (33 << 20), length: 64) == patternBytes(offset: 8_000_001 + (33 << 20), length: 64))
            let small = try await client.read(at: 3, length: 29)
            #expect(Array(buffer: small) == patternBytes(offset: 3, length: 29))
            await client.disconnect()
        }
    }

    @Test("Reads as received slices, in order, cut to the range asked for (holes included)")
    func readSlices() async throws {
        try await withServer({ try await Servers.nbdkit(["pattern", "size=8M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            let slices = try await client.readSlices(at: 12_345, length: 3_000_000)
            #expect(slices.flatMap { Array(buffer: $0) } == patternBytes(offset: 12_345, length: 3_000_000))
            #expect(try await client.readSlices(at: 5, length: 0).isEmpty)
            // The same bytes streamed: small chunks, several in flight, handed over in order.
            var streamed: [UInt8] = []
            try await client.readStream(at: 12_345, length: 3_000_000, chunkSize: 65_536, window: 8) { streamed += Array(buffer: $0) }
            #expect(streamed == patternBytes(offset: 12_345, length: 3_000_000))
            await client.disconnect()
        }
        try await withServer({ try await Servers.nbdkit(["memory", "size=8M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            let data = randomBytes(100_000, seed: 77)
            try await client.write(at: 2 << 20, bytes: data)
            // Mostly holes (structured OFFSET_HOLE chunks) around the data.
            let slices = try await client.readSlices(at: (2 << 20) - 50_000, length: 200_000)
            let expected = [UInt8](repeating: 0, count: 50_000) + data + [UInt8](repeating: 0, count: 50_000)
            #expect(slices.flatMap { Array(buffer: $0) } == expected)
            await client.disconnect()
        }
    }

    @Test("Reads into caller-owned memory regions")
    func readIntoRegions() async throws {
        try await withServer({ try await Servers.nbdkit(["pattern", "size=1M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            let first = UnsafeMutableRawBufferPointer.allocate(byteCount: 1000, alignment: 8)
            let second = UnsafeMutableRawBufferPointer.allocate(byteCount: 3000, alignment: 8)
            defer { first.deallocate(); second.deallocate() }
            try await client.read(at: 4096, into: [first, second])
            #expect(Array(first) + Array(second) == patternBytes(offset: 4096, length: 4000))
            try await client.read(at: 5, into: [second])
            #expect(Array(second) == patternBytes(offset: 5, length: 3000))
            await client.disconnect()
        }
    }

    @Test("Many tasks share one connection with many requests in flight")
    func concurrentRequests() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=64M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri, configuration: NBDClientConfiguration(maximumRequestsInFlight: 16))
            try await withThrowingTaskGroup(of: Void.self) { group in
                for task in 0..<64 {
                    group.addTask {
                        let data = randomBytes(65_536 + task, seed: UInt64(task + 1))
                        let offset = UInt64(task) << 20
                        try await client.write(at: offset, bytes: data)
                        let back = try await client.read(at: offset, length: data.count)
                        #expect(Array(buffer: back) == data)
                    }
                }
                try await group.waitForAll()
            }
            await client.disconnect()
        }
    }

    @Test("EIO from the error filter fails that request only; the connection carries on")
    func injectedErrors() async throws {
        let arguments = ["--filter=error", "pattern", "size=16M", "error-pread=EIO", "error-pread-rate=50%"]
        try await withServer({ try await Servers.nbdkit(arguments) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            var failures = 0
            var successes = 0
            for index in 0..<200 {
                do {
                    let bytes = try await client.read(at: UInt64(index) * 4096, length: 4096)
                    #expect(Array(buffer: bytes) == patternBytes(offset: UInt64(index) * 4096, length: 4096))
                    successes += 1
                } catch let error as NBDError {
                    #expect(error.code == .serverError)
                    #expect(error.errno == .EIO)
                    #expect("\(error)".contains("EIO"))
                    failures += 1
                }
            }
            #expect(failures > 0 && successes > 0)
            #expect(client.isActive)
            await client.disconnect()
        }
    }

    @Test("Flush, trim, write zeroes (fast, no-hole), cache and FUA writes")
    func otherCommands() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=4M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            try await client.write(at: 0, bytes: [UInt8](repeating: 0xAB, count: 1 << 20), fua: true)
            try await client.writeZeroes(at: 1000, length: 5000)
            let zeroed = try await client.read(at: 990, length: 6020)
            #expect(Array(buffer: zeroed) == [UInt8](repeating: 0xAB, count: 10) + [UInt8](repeating: 0, count: 5000) + [UInt8](repeating: 0xAB, count: 1010))
            try await client.writeZeroes(at: 65536, length: 65536, fastZero: true)
            try await client.writeZeroes(at: 131_072, length: 4096, noHole: true)
            try await client.trim(at: 524_288, length: 524_288)
            try await client.cache(at: 0, length: 4096)
            try await client.flush()
            await client.disconnect()
        }
    }

    @Test("Block status agrees with nbdinfo --map")
    func blockStatus() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=8M"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            try await client.write(at: 1 << 20, bytes: randomBytes(1 << 20))
            let extents = try await client.blockStatus(at: 0, length: client.size)
            #expect(extents.first?.offset == 0)
            #expect(extents.reduce(0) { $0 + $1.length } == client.size)
            let data = extents.filter { !$0.isHole }
            #expect(data.count == 1 && data.first?.offset == 1 << 20 && data.first?.length == 1 << 20)

            let (_, stdout, _) = try await Tools.run("nbdinfo", ["--map", "--json", server.uri])
            let reference = try JSONSerialization.jsonObject(with: stdout) as? [[String: Any]] ?? []
            let theirs = reference.map { [($0["offset"] as? NSNumber)?.uint64Value ?? 0, ($0["length"] as? NSNumber)?.uint64Value ?? 0, ($0["type"] as? NSNumber)?.uint64Value ?? 0] }
            let ours = extents.map { [$0.offset, $0.length, UInt64($0.flags)] }
            #expect(ours == theirs)
            let middle = try await client.blockStatus(at: 1_500_000, length: 10)
            #expect(middle == [NBDExtent(offset: 1_500_000, length: 10, flags: 0)])
            await client.disconnect()
        }
    }

    @Test("Requests the export cannot take are refused before anything is sent (simple replies only)")
    func localRefusals() async throws {
        let arguments = ["--filter=nozero", "--filter=nocache", "memory", "size=1M"]
        // --no-sr: no structured replies, so no block status either.
        try await withServer({ try await Servers.nbdkit(arguments, extraOptions: ["-r", "--no-sr"]) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            #expect(client.info.isReadOnly)
            #expect(!client.info.structuredReplies)
            await #expect(throws: NBDError.self) { try await client.read(at: 1 << 20, length: 1) }
            await expectCode(.outOfBounds) { _ = try await client.read(at: (1 << 20) - 1, length: 2) }
            await expectCode(.outOfBounds) { _ = try await client.read(at: UInt64.max - 1, length: 10) }
            await expectCode(.readOnly) { try await client.write(at: 0, bytes: [1]) }
            await expectCode(.readOnly) { try await client.trim(at: 0, length: 512) }
            await expectCode(.readOnly) { try await client.writeZeroes(at: 0, length: 512) }
            await expectCode(.unimplemented) { try await client.cache(at: 0, length: 512) }
            await expectCode(.unimplemented) { _ = try await client.blockStatus(at: 0, length: 512) }
            // The connection is untouched by all of that.
            #expect(try await client.read(at: 0, length: 4).readableBytes == 4)
            await client.disconnect()
        }
    }

    @Test("Unknown export is a typed error (GO), not an EOF")
    func unknownExport() async throws {
        let arguments = ["--filter=exportname", "memory", "size=1M", "exportname=disk", "exportname-strict=true", "exportname-list=explicit"]
        try await withServer({ try await Servers.nbdkit(arguments, exportName: "missing") }) { server in
            await expectCode(.unknownExport) { _ = try await NBDClient.connect(to: server.uri) }
            let exports = try await NBDClient.list(server.uri)
            #expect(exports.map(\.name) == ["disk"])
            let uri = server.uri.replacingOccurrences(of: "/missing?", with: "/disk?")
            let client = try await NBDClient.connect(to: uri)
            #expect(client.info.name == "disk")
            await client.disconnect()
        }
    }

    @Test("Disconnect waits for requests in flight, then further requests fail as disconnected")
    func disconnectDrains() async throws {
        let arguments = ["--filter=delay", "pattern", "size=16M", "delay-read=20ms"]
        try await withServer({ try await Servers.nbdkit(arguments) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            let reads = (0..<16).map { index in
                Task { try await client.read(at: UInt64(index) << 16, length: 65536) }
            }
            let first = try await reads[0].value
            #expect(Array(buffer: first) == patternBytes(offset: 0, length: 65536))
            let disconnecting = Task { await client.disconnect() }
            for (index, read) in reads.enumerated().dropFirst() {
                do {
                    let bytes = try await read.value
                    #expect(Array(buffer: bytes) == patternBytes(offset: UInt64(index) << 16, length: 65536))
                } catch let error as NBDError {
                    // A read submitted after the disconnect began is refused, never half-done.
                    #expect(error.code == .disconnected)
                }
            }
            await disconnecting.value
            await expectCode(.disconnected) { _ = try await client.read(at: 0, length: 1) }
            #expect(!client.isActive)
        }
    }
}

/// Expects `body` to throw an NBDError with `code`.
func expectCode(_ code: NBDError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async {
    do {
        try await body()
        Issue.record("expected NBDError \(code), nothing was thrown", sourceLocation: sourceLocation)
    } catch let error as NBDError {
        #expect(error.code == code, "\(error.debugDescription)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("expected NBDError \(code), got \(error)", sourceLocation: sourceLocation)
    }
}
