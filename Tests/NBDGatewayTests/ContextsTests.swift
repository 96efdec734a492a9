import Foundation
import NBDTestSupport
import Testing

/// Dirty bitmaps and allocation depth through `/extents?context=`, totals with `summary=1`, and
/// the contexts an export offers in its metadata: qemu-nbd serving a qcow2 image whose bitmap
/// saw writes (qemu-img bitmap, qemu-io).
@Suite("Metadata contexts: dirty bitmaps, allocation depth, summaries", .timeLimit(.minutes(3)))
struct ContextsTests {
    /// 64 MiB qcow2: 1 MiB written before the bitmap b0 started, then 64 KiB at 4 MiB and
    /// 128 KiB at 10 MiB (dirty).
    func makeImage(in directory: URL) async throws -> String {
        let image = directory.appendingPathComponent("disk.qcow2").path
        try await Tools.run("qemu-img", ["create", "-q", "-f", "qcow2", image, "64M"])
        try await Tools.run("qemu-io", ["-c", "write -P 7 0 1M", image])
        try await Tools.run("qemu-img", ["bitmap", "--add", image, "b0"])
        try await Tools.run("qemu-io", ["-c", "write -P 9 4M 64k", "-c", "write -P 9 10M 128k", image])
        return image
    }

    func pairs(_ extents: [[String: Any]], _ key: String) -> [[UInt64]] {
        extents.map { extent in
            let value: UInt64 = (extent[key] as? Bool).map { $0 ? 1 : 0 } ?? (extent[key] as? NSNumber)?.uint64Value ?? 99
            return [(extent["offset"] as? NSNumber)?.uint64Value ?? 0, (extent["length"] as? NSNumber)?.uint64Value ?? 0, value]
        }
    }

    @Test("a qcow2 bitmap's dirty extents, allocation depth and totals; the contexts offered and negotiated; an unknown context is 400")
    func dirtyBitmap() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let image = try await makeImage(in: directory)
        try await withServer({ try await Servers.qemuNBD(image: image, format: "qcow2", extraArguments: ["-B", "b0", "-A"]) }) { server in
            try await withGateway(["--export", "disk=\(server.uri)"]) { gateway in
                let info = try await gateway.get("/exports/disk").json()
                let expected = ["base:allocation", "qemu:allocation-depth", "qemu:dirty-bitmap:b0"]
                #expect(Set(info["available_contexts"] as? [String] ?? []) == Set(expected))
                #expect(Set(info["contexts"] as? [String] ?? []) == Set(expected))

                let dirty = try await gateway.get("/exports/disk/extents?context=qemu:dirty-bitmap:b0").json()
                #expect(dirty["context"] as? String == "qemu:dirty-bitmap:b0")
                let mib: UInt64 = 1 << 20
                #expect(pairs(dirty["extents"] as? [[String: Any]] ?? [], "dirty") == [
                    [0, 4 * mib, 0], [4 * mib, 65536, 1], [4 * mib + 65536, 6 * mib - 65536, 0],
                    [10 * mib, 131072, 1], [10 * mib + 131072, 54 * mib - 131072, 0],
                ])
                let depth = try await gateway.get("/exports/disk/extents?context=qemu:allocation-depth&offset=0&length=\(5 * mib)").json()
                #expect(pairs(depth["extents"] as? [[String: Any]] ?? [], "depth") == [[0, mib, 1], [mib, 3 * mib, 0], [4 * mib, 65536, 1], [4 * mib + 65536, mib - 65536, 0]])

                let dirtyTotals = try await gateway.get("/exports/disk/extents?context=qemu:dirty-bitmap:b0&summary=1").text
                #expect(dirtyTotals == #"{"context":"qemu:dirty-bitmap:b0","offset":0,"length":67108864,"totals":[{"kind":"clean","flags":0,"length":66912256},{"kind":"dirty","flags":1,"length":196608}]}"#)
                let allocation = try await gateway.get("/exports/disk/extents?summary=1").json()
                let totals = allocation["totals"] as? [[String: Any]] ?? []
                #expect(totals.map { $0["kind"] as? String } == ["data", "hole,zero"])
                #expect(totals.map { ($0["length"] as? NSNumber)?.uint64Value } == [1_245_184, 65_863_680])

                let unknown = try await gateway.get("/exports/disk/extents?context=qemu:dirty-bitmap:nope")
                #expect(unknown.status == 400)
                #expect(unknown.text.contains("qemu:dirty-bitmap:b0"))
            }
        }
    }

    @Test("a server offering only base:allocation: available_contexts says so; the default context answers as before")
    func baseOnly() async throws {
        try await withNBDKitGateway(["memory", "size=1M"]) { gateway, _ in
            let info = try await gateway.get("/exports/disk").json()
            #expect(info["available_contexts"] as? [String] == ["base:allocation"])
            let extents = try await gateway.get("/exports/disk/extents").json()
            #expect(extents["context"] as? String == "base:allocation")
            #expect((extents["extents"] as? [[String: Any]])?.first?["zero"] as? Bool == true)
        }
    }
}
