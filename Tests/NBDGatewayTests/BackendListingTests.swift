import Foundation
import NBDTestSupport
import Testing

/// `--backend` servers: listing, its refusals, several backends, readiness.
@Suite("Backends: listing (refused, unsupported, several servers) and readiness", .timeLimit(.minutes(3)))
struct BackendListingTests {
    @Test("nbd-server refusing to list: 403 listing_refused (NBD_REP_ERR_POLICY); its exports are still served")
    func listingRefused() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("disk.img")
        try Data(count: 1 << 20).write(to: file)
        try await withServer({ try await Servers.nbdServer(exports: [("disk", file.path, false)], allowList: false) }) { server in
            try await withGateway(["--backend", server.uri]) { gateway in
                let list = try await gateway.get("/exports")
                #expect(list.status == 403)
                let error = try list.errorObject()
                #expect(error["code"] as? String == "listing_refused")
                #expect(error["nbd_error"] as? String == "NBD_REP_ERR_POLICY")
                #expect(error["nbd_errno"] as? Int == 2_147_483_650)
                try await gateway.expectServing()

                // GO still works: the export is served by name.
                let data = randomBytes(5000, seed: 27)
                try await gateway.write("disk", offset: 1000, data)
                #expect(try await gateway.read("disk", offset: 1000, length: 5000) == data)
                #expect(try Data(contentsOf: file)[1000..<6000] == Data(data))
                let unknown = try await gateway.get("/exports/other/data")
                #expect(unknown.status == 404)
                #expect(unknown.errorCode == "unknown_export")

                // "Ready when every configured backend is reachable: a pooled connection is open, or ..."
                let ready = try await gateway.get("/readyz")
                #expect(ready.status == 200, "\(ready.summary)")
            }
        }
    }

    @Test("an oldstyle server cannot list: 501 not_implemented; the gateway goes on")
    func oldstyle() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=1M"], extraOptions: ["-o"]) }) { server in
            try await withGateway(["--backend", server.uri]) { gateway in
                let list = try await gateway.get("/exports")
                #expect(list.status == 501)
                #expect(list.errorCode == "not_implemented")
                // The client speaks newstyle only: the data is unreachable, and says so.
                let data = try await gateway.get("/exports//data")
                #expect(data.status == 502)
                #expect(data.errorCode == "backend_unreachable")
                try await gateway.expectServing()
            }
        }
    }

    @Test("several backends: the listing is their union in order; each name is served by the backend that has it")
    func severalBackends() async throws {
        let named = ["--filter=exportname", "memory", "size=1M", "exportname=alpha", "exportname=beta",
                     "exportname-strict=true", "exportname-list=explicit"]
        try await withServer({ try await Servers.nbdkit(named) }) { first in
            try await withServer({ try await Servers.nbdkit(["memory", "size=2M"]) }) { second in
                let unreachable = "nbd+unix:///?socket=\(first.directory.path)/none.sock"
                try await withGateway(["--backend", unreachable, "--backend", first.uri, "--backend", second.uri]) { gateway in
                    let list = try await gateway.get("/exports")
                    #expect(list.status == 200)
                    let names = try #require(try list.json()["exports"] as? [[String: String]]).compactMap { $0["name"] }
                    #expect(names == ["alpha", "beta", ""])
                    #expect(try await gateway.head("/exports/alpha/data").header("Content-Length") == String(1 << 20))
                    #expect(try await gateway.head("/exports//data").header("Content-Length") == String(2 << 20))
                    let alpha = randomBytes(100, seed: 28)
                    try await gateway.write("alpha", offset: 0, alpha)
                    #expect(try await gateway.read("alpha", offset: 0, length: 100) == alpha)
                    // A name the strict backend refuses goes on to the next: plain nbdkit takes any name.
                    #expect(try await gateway.head("/exports/gamma/data").header("Content-Length") == String(2 << 20))
                    // One backend is down: not ready, and the message names it.
                    let ready = try await gateway.get("/readyz")
                    #expect(ready.status == 503)
                    #expect((try ready.errorObject()["message"] as? String)?.contains("none.sock") == true)
                }
            }
        }
    }
}
