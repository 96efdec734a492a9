import Foundation
import NBDTestSupport
import Testing

/// "A 2xx answer means every NBD write it caused was acknowledged, and is visible to any later
/// GET through the gateway, on whichever pooled connection serves it": many writers on separate
/// HTTP connections, each reading its block back on another connection right after its answer.
@Suite("Consistency: concurrent PUTs read back what was acknowledged", .timeLimit(.minutes(3)))
struct ConsistencyTests {
    struct Backend: Sendable, CustomTestStringConvertible {
        var name: String
        /// CAN_MULTI_CONN as the backend advertises it; nil: not checked (qemu-nbd decides by version and options).
        var multiConn: Bool?
        var start: @Sendable (URL) async throws -> TestServer
        var testDescription: String { name }
    }

    static let diskSize = 8 << 20

    static let backends: [Backend] = [
        Backend(name: "nbdkit memory (CAN_MULTI_CONN)", multiConn: true) { _ in
            try await Servers.nbdkit(["memory", "size=8M"])
        },
        Backend(name: "nbdkit memory, multi-conn filter disabling CAN_MULTI_CONN", multiConn: false) { _ in
            try await Servers.nbdkit(["--filter=multi-conn", "memory", "size=8M", "multi-conn-mode=disable"])
        },
        Backend(name: "qemu-nbd on a raw file", multiConn: nil) { directory in
            let image = directory.appendingPathComponent("disk.img")
            try Data(count: diskSize).write(to: image)
            return try await Servers.qemuNBD(image: image.path)
        },
    ]

    @Test("concurrent writers, each reading its block back at once on another connection", arguments: backends)
    func concurrentWritesAreVisible(_ backend: Backend) async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withServer({ try await backend.start(directory) }) { server in
            try await withGateway(["--export", "disk=\(server.uri)", "--pool-size", "4", "--requests-per-connection", "1"]) { gateway in
                let info = try await gateway.get("/exports/disk").json()
                if let multiConn = backend.multiConn { #expect(info["can_multi_conn"] as? Bool == multiConn) }
                let blockSize = 65536
                let blocks = 40
                var model = [UInt8](repeating: 0, count: blocks * blockSize)
                for round in 0..<3 {
                    // Unaligned, overlapping-free spans: each block's write starts a little in.
                    let failures = try await withThrowingTaskGroup(of: (Int, [UInt8], String?).self) { group in
                        for block in 0..<blocks {
                            let data = randomBytes(blockSize - 100, seed: UInt64(round * 1000 + block + 1))
                            let offset = block * blockSize + 50
                            let port = gateway.port
                            group.addTask {
                                // Vary the request forms: ?offset, Content-Range, chunked, fua.
                                var request: HTTPRequest
                                switch (block + round) % 4 {
                                case 0: request = HTTPRequest("PUT", "/exports/disk/data?offset=\(offset)", body: data)
                                case 1: request = HTTPRequest("PUT", "/exports/disk/data", headers: [("Content-Range", "bytes \(offset)-\(offset + data.count - 1)/*")], body: data)
                                case 2:
                                    request = HTTPRequest("PUT", "/exports/disk/data?offset=\(offset)", body: data)
                                    request.chunked = true
                                    request.chunkSize = 7000
                                default: request = HTTPRequest("PUT", "/exports/disk/data?offset=\(offset)&fua=1", body: data)
                                }
                                let written = try await RawHTTP.send(request, port: port)
                                guard written.status == 200 else { return (block, data, "PUT \(offset): \(written.summary)") }
                                let read = try await RawHTTP.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=\(offset)-\(offset + data.count - 1)")]), port: port)
                                guard read.status == 206, read.body == data else {
                                    return (block, data, "block \(block) read back \(read.status) with different bytes after its 200")
                                }
                                return (block, data, nil)
                            }
                        }
                        var failures: [String] = []
                        for try await (block, data, failure) in group {
                            if let failure { failures.append(failure) }
                            let offset = block * blockSize + 50
                            model.replaceSubrange(offset..<(offset + data.count), with: data)
                        }
                        return failures
                    }
                    #expect(failures.isEmpty, "round \(round): \(failures.prefix(5))")
                    // After the round, one read of everything through the gateway.
                    let whole = try await gateway.read("disk", offset: 0, length: model.count)
                    #expect(whole == model, "round \(round): the whole span differs")
                }
                // And the backend itself has every acknowledged byte.
                #expect(try await readBackend(server.uri, offset: 0, length: model.count) == model)
            }
        }
    }

    @Test("one block overwritten again and again: every GET after a 200 sees that write", arguments: backends)
    func overwriteThenRead(_ backend: Backend) async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withServer({ try await backend.start(directory) }) { server in
            try await withGateway(["--export", "disk=\(server.uri)", "--pool-size", "4", "--requests-per-connection", "1"]) { gateway in
                // Readers keep other pooled connections busy meanwhile.
                let port = gateway.port
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for reader in 0..<4 {
                        group.addTask {
                            for _ in 0..<15 {
                                let response = try await RawHTTP.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", "bytes=\(reader * 1_000_000)-\(reader * 1_000_000 + 200_000)")]), port: port)
                                #expect(response.status == 206)
                            }
                        }
                    }
                    for version in 0..<30 {
                        let data = randomBytes(4096 + version, seed: UInt64(5000 + version))
                        try await gateway.write("disk", offset: 12_345, data)
                        let back = try await gateway.read("disk", offset: 12_345, length: data.count)
                        #expect(back == data, "version \(version)")
                    }
                    try await group.waitForAll()
                }
            }
        }
    }
}
