import NBDTestSupport
import Foundation
import NBDClient
import Testing

/// The `nbd` executable SwiftPM built next to this test bundle.
func nbdToolPath() throws -> String {
    try Tools.builtExecutable("nbd", packageRoot: URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent())
}

@Suite("The nbd tool")
struct ToolTests {
    /// `nbd info --json` agrees with `nbdinfo --json` on size and every flag.
    private func compareWithNBDInfo(_ uri: String, expectedSize: UInt64? = nil) async throws {
        let ours = try await Tools.run(try nbdToolPath(), ["info", "--json", uri]).stdout
        let theirs = try await Tools.run("nbdinfo", ["--json", uri]).stdout
        let mine = try #require(try JSONSerialization.jsonObject(with: ours) as? [String: Any])
        let root = try #require(try JSONSerialization.jsonObject(with: theirs) as? [String: Any])
        let exports = try #require(root["exports"] as? [[String: Any]])
        let reference = try #require(exports.first)
        let pairs: [(String, String)] = [
            ("read_only", "is_read_only"), ("rotational", "is_rotational"), ("can_flush", "can_flush"),
            ("can_fua", "can_fua"), ("can_trim", "can_trim"), ("can_zero", "can_zero"),
            ("can_fast_zero", "can_fast_zero"), ("can_df", "can_df"), ("can_multi_conn", "can_multi_conn"),
            ("can_cache", "can_cache"),
        ]
        for (mineKey, theirKey) in pairs {
            #expect(mine[mineKey] as? Bool == reference[theirKey] as? Bool, "\(mineKey) differs for \(uri)")
        }
        #expect(mine["structured_replies"] as? Bool == root["structured"] as? Bool)
        let size = (mine["size"] as? NSNumber)?.uint64Value
        // nbd-server answers NBD_OPT_INFO (which nbdinfo uses) with size 0: compare with the file there.
        #expect(size == (expectedSize ?? (reference["export-size"] as? NSNumber)?.uint64Value))
        if let theirContexts = reference["contexts"] as? [String] {
            #expect(Set(mine["contexts"] as? [String] ?? []).isSubset(of: Set(theirContexts)))
        }
        if let minimum = reference["block_size_minimum"] as? NSNumber {
            let blockSize = mine["block_size"] as? [String: Any]
            #expect((blockSize?["minimum"] as? NSNumber)?.uint32Value == minimum.uint32Value)
        }
    }

    @Test("info --json agrees with nbdinfo --json: nbdkit")
    func infoNBDKit() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=5M"]) }) { try await compareWithNBDInfo($0.uri) }
        try await withServer({ try await Servers.nbdkit(["--filter=nozero", "pattern", "size=3M"], extraOptions: ["-r"]) }) {
            try await compareWithNBDInfo($0.uri)
        }
    }

    @Test("info --json agrees with nbdinfo --json: qemu-nbd, read-write, read-only, 4 KiB blocks")
    func infoQemu() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let image = directory.appendingPathComponent("disk.img")
        try Data(count: 3 << 20).write(to: image)
        try await withServer({ try await Servers.qemuNBD(image: image.path) }) { try await compareWithNBDInfo($0.uri) }
        try await withServer({ try await Servers.qemuNBD(image: image.path, readOnly: true) }) { try await compareWithNBDInfo($0.uri) }
        let options = "driver=blkdebug,align=4096,image.driver=file,image.filename=\(image.path)"
        try await withServer({ try await Servers.qemuNBD(image: options, imageOptions: true) }) { try await compareWithNBDInfo($0.uri) }
    }

    @Test("info --json agrees with nbdinfo --json: nbd-server (size checked against the file)")
    func infoNBDServer() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("a.img")
        try Data(count: 2 << 20).write(to: file)
        try await withServer({ try await Servers.nbdServer(exports: [("disk", file.path, true)], allowList: true) }) { server in
            try await compareWithNBDInfo(server.uri.replacingOccurrences(of: ":///?", with: ":///disk?"), expectedSize: 2 << 20)
        }
    }

    @Test("write, read, list and map through the tool; errors go to stderr with the NBD error's name")
    func roundTripThroughTool() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=4M"]) }) { server in
            let tool = try nbdToolPath()
            let input = server.directory.appendingPathComponent("in.bin")
            let output = server.directory.appendingPathComponent("out.bin")
            let data = randomBytes(1_500_000, seed: 21)
            try Data(data).write(to: input)
            try await Tools.run(tool, ["write", "--offset", "4097", server.uri, input.path])
            try await Tools.run(tool, ["read", "--offset", "4097", "--length", "1500000", server.uri, "-o", output.path])
            #expect(try Data(contentsOf: output) == Data(data))
            let map = try await Tools.run(tool, ["map", "--json", server.uri]).stdout
            let extents = try #require(try JSONSerialization.jsonObject(with: map) as? [[String: Any]])
            #expect(extents.contains { ($0["description"] as? String) == "data" })
            let listing = try await Tools.run(tool, ["list", "--json", server.uri]).stdout
            #expect(String(decoding: listing, as: UTF8.self).contains("\"exports\""))
            let failure = try await Tools.run(tool, ["read", "--offset", "5000000", server.uri], check: false)
            #expect(failure.status != 0)
            #expect(String(decoding: failure.stderr, as: UTF8.self).contains("out_of_bounds"))
        }
        let arguments = ["--filter=error", "pattern", "size=1M", "error-pread=EIO", "error-pread-rate=100%"]
        try await withServer({ try await Servers.nbdkit(arguments) }) { server in
            let failure = try await Tools.run(try nbdToolPath(), ["read", "--length", "4096", server.uri], check: false)
            #expect(failure.status == 1)
            #expect(String(decoding: failure.stderr, as: UTF8.self).contains("EIO"))
        }
    }
}
