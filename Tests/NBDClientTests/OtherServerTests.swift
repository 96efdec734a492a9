import NBDTestSupport
import Foundation
import NBDClient
import NBDProtocol
import NIOCore
import Testing

@Suite("Against qemu-nbd and nbd-server")
struct OtherServerTests {
    @Test("qemu-nbd --read-only: flags say so and writes are refused locally")
    func qemuReadOnly() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let image = directory.appendingPathComponent("disk.img")
        try Data(randomBytes(2 << 20)).write(to: image)
        try await withServer({ try await Servers.qemuNBD(image: image.path, readOnly: true) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            #expect(client.info.isReadOnly)
            #expect(client.size == 2 << 20)
            await expectCode(.readOnly) { try await client.write(at: 0, bytes: [0]) }
            let bytes = try await client.read(at: 100, length: 1 << 20)
            #expect(Array(buffer: bytes) == Array(randomBytes(2 << 20)[100..<(100 + (1 << 20))]))
            await client.disconnect()
        }
    }

    @Test("qemu-nbd with a 4 KiB minimum block: unaligned writes are read-modify-written")
    func qemuBlockSizeConstrained() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let image = directory.appendingPathComponent("disk.img")
        var expected = randomBytes(1 << 20, seed: 3)
        try Data(expected).write(to: image)
        let options = "driver=blkdebug,align=4096,image.driver=file,image.filename=\(image.path)"
        try await withServer({ try await Servers.qemuNBD(image: options, imageOptions: true) }) { server in
            let client = try await NBDClient.connect(to: server.uri)
            #expect(client.info.advertisedBlockSize?.minimum == 4096)
            let patch = randomBytes(10_000, seed: 4)
            try await client.write(at: 1000, bytes: patch)
            expected.replaceSubrange(1000..<11_000, with: patch)
            let small = randomBytes(3, seed: 5)
            try await client.write(at: 20_000, bytes: small)
            expected.replaceSubrange(20_000..<20_003, with: small)
            try await client.writeZeroes(at: 30_001, length: 9000)
            expected.replaceSubrange(30_001..<39_001, with: [UInt8](repeating: 0, count: 9000))
            try await client.flush()
            let back = try await client.read(at: 999, length: 40_000)
            #expect(Array(buffer: back) == Array(expected[999..<40_999]))
            let copy = directory.appendingPathComponent("copy.bin")
            try await Tools.run("nbdcopy", [server.uri, copy.path])
            #expect(try Data(contentsOf: copy) == Data(expected))
            await client.disconnect()
        }
    }

    @Test("nbd-server: several named exports listed, each negotiated with its own size")
    func nbdServerExports() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let first = directory.appendingPathComponent("a.img")
        let second = directory.appendingPathComponent("b.img")
        try Data(randomBytes(1 << 20)).write(to: first)
        try Data(randomBytes(3 << 20, seed: 11)).write(to: second)
        let exports = [(name: "alpha", file: first.path, readOnly: false), (name: "beta", file: second.path, readOnly: true)]
        try await withServer({ try await Servers.nbdServer(exports: exports, allowList: true) }) { server in
            let listed = try await NBDClient.list(server.uri)
            #expect(Set(listed.map(\.name)) == ["alpha", "beta"])
            let beta = try await NBDClient.connect(to: server.uri.replacingOccurrences(of: ":///?", with: ":///beta?"))
            #expect(beta.size == 3 << 20)
            #expect(beta.info.isReadOnly)
            let bytes = try await beta.read(at: (3 << 20) - 4096, length: 4096)
            #expect(Array(buffer: bytes) == Array(randomBytes(3 << 20, seed: 11).suffix(4096)))
            await beta.disconnect()
            let alpha = try await NBDClient.connect(to: server.uri.replacingOccurrences(of: ":///?", with: ":///alpha?"))
            #expect(alpha.size == 1 << 20)
            try await alpha.write(at: 7, bytes: [1, 2, 3])
            #expect(Array(buffer: try await alpha.read(at: 6, length: 5)) == [randomBytes(8)[6], 1, 2, 3, randomBytes(11)[10]])
            await alpha.disconnect()
            await expectCode(.unknownExport) {
                _ = try await NBDClient.connect(to: server.uri.replacingOccurrences(of: ":///?", with: ":///gamma?"))
            }
        }
    }

    @Test("nbd-server with listing disabled: a policy refusal, distinct from no support")
    func nbdServerListingRefused() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("a.img")
        try Data(count: 65536).write(to: file)
        try await withServer({ try await Servers.nbdServer(exports: [("only", file.path, false)], allowList: false) }) { server in
            do {
                _ = try await NBDClient.list(server.uri)
                Issue.record("listing should be refused")
            } catch let error as NBDError {
                #expect(error.code == .listingRefused)
                #expect(error.optionError == .policy)
                #expect(error.nbdErrorName == "NBD_REP_ERR_POLICY")
            }
            let client = try await NBDClient.connect(to: server.uri.replacingOccurrences(of: ":///?", with: ":///only?"))
            #expect(client.size == 65536)
            await client.disconnect()
        }
    }
}
