import Foundation
import NBDTestSupport
import Testing

/// `nbd copy` between exports and files: byte-exact (cmp against nbdcopy's copy), holes kept
/// in files, zeroes written as WRITE_ZEROES over whatever the destination held, `--verify`.
@Suite("nbd copy", .timeLimit(.minutes(3)))
struct CopyTests {
    static let size = 64 << 20

    /// A memory export with data at a few places and zeroes elsewhere.
    func sparseExport(_ server: TestServer) async throws {
        let tool = try nbdToolPath()
        for (offset, count, seed) in [(0, 65_536, UInt64(1)), (5_000_000, 3_000_000, 2), (40 << 20, 1_000_000, 3), (Self.size - 4096, 4096, 4)] {
            let piece = server.directory.appendingPathComponent("piece-\(seed)")
            try Data(randomBytes(count, seed: seed)).write(to: piece)
            try await Tools.run(tool, ["write", "--offset", String(offset), server.uri, piece.path])
        }
    }

    func expectSame(_ first: URL, _ second: URL) async throws {
        let comparison = try await Tools.run("cmp", [first.path, second.path], check: false)
        #expect(comparison.status == 0, "\(String(decoding: comparison.stdout + comparison.stderr, as: UTF8.self))")
    }

    @Test("export → file: the bytes nbdcopy gets, holes where the export has zeroes; file → export over a pattern: every byte, zeroes included; --verify")
    func exportAndFile() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=\(Self.size)"]) }) { source in
            try await sparseExport(source)
            let tool = try nbdToolPath()
            let reference = source.directory.appendingPathComponent("reference.img")
            try await Tools.run("nbdcopy", [source.uri, reference.path])
            let copy = source.directory.appendingPathComponent("copy.img")
            try await Tools.run(tool, ["copy", source.uri, copy.path])
            try await expectSame(reference, copy)
            // About 4 MiB of data in 64 MiB: the rest stays holes.
            let allocated = try Tools.allocatedBytes(copy)
            #expect(allocated < 8 << 20, "\(allocated) bytes allocated")

            // Into an export full of pattern bytes: data written, zero extents zeroed.
            try await withServer({ try await Servers.nbdkit(["--filter=cow", "pattern", "size=\(Self.size)"]) }) { destination in
                let result = try await Tools.run(tool, ["copy", "--verify", copy.path, destination.uri])
                #expect(String(decoding: result.stderr, as: UTF8.self).contains("verified"))
                let back = source.directory.appendingPathComponent("back.img")
                try await Tools.run("nbdcopy", [destination.uri, back.path])
                try await expectSame(reference, back)
            }
        }
    }

    @Test("export → export over several connections, --verify; a destination too small or read-only is refused")
    func exportToExport() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=\(Self.size)"]) }) { source in
            try await sparseExport(source)
            let tool = try nbdToolPath()
            try await withServer({ try await Servers.nbdkit(["memory", "size=\(Self.size)"]) }) { destination in
                let result = try await Tools.run(tool, ["copy", "--verify", "--connections", "4", "--progress-json", source.uri, destination.uri])
                let lines = String(decoding: result.stderr, as: UTF8.self).split(separator: "\n")
                #expect(lines.contains { $0.hasPrefix("verified: ") })
                #expect(lines.contains("{\"copied\":\(Self.size),\"total\":\(Self.size)}"))
                let first = source.directory.appendingPathComponent("a.img")
                let second = source.directory.appendingPathComponent("b.img")
                try await Tools.run("nbdcopy", [source.uri, first.path])
                try await Tools.run("nbdcopy", [destination.uri, second.path])
                try await expectSame(first, second)
            }
            try await withServer({ try await Servers.nbdkit(["memory", "size=1M"]) }) { small in
                let refused = try await Tools.run(tool, ["copy", source.uri, small.uri], check: false)
                #expect(refused.status == 1)
                #expect(String(decoding: refused.stderr, as: UTF8.self).contains("smaller than the source"))
            }
            try await withServer({ try await Servers.nbdkit(["memory", "size=\(Self.size)"], extraOptions: ["--readonly"]) }) { readOnly in
                let refused = try await Tools.run(tool, ["copy", source.uri, readOnly.uri], check: false)
                #expect(refused.status == 1)
                #expect(String(decoding: refused.stderr, as: UTF8.self).contains("read-only"))
            }
        }
    }
}
