@testable import NBDGateway
import Testing

@Suite("Route: raw paths to resources (pure)")
struct RouteTests {
    @Test("absolute-form targets lose scheme and authority; origin-form ones stay as they are")
    func originForm() {
        #expect(GatewayRequest.originForm("http://host/healthz") == "/healthz")
        #expect(GatewayRequest.originForm("HTTPS://host:8443/exports/d/data?offset=1") == "/exports/d/data?offset=1")
        #expect(GatewayRequest.originForm("http://host") == "/")
        #expect(GatewayRequest.originForm("http://host?x=1") == "/?x=1")
        #expect(GatewayRequest.originForm("/exports/http://x") == "/exports/http://x")
        #expect(GatewayRequest.originForm("http:/x") == "http:/x")
        #expect(GatewayRequest.originForm("") == "")
    }

    @Test("fixed resources and export resources parse; names stay percent-encoded")
    func parses() {
        #expect(Route.parse("/exports") == .exports)
        #expect(Route.parse("/healthz") == .health)
        #expect(Route.parse("/readyz") == .ready)
        #expect(Route.parse("/metrics") == .metrics)
        #expect(Route.parse("/openapi.yaml") == .openAPI)
        #expect(Route.parse("/exports/disk") == .export("disk"))
        #expect(Route.parse("/exports/disk/data") == .data("disk"))
        #expect(Route.parse("/exports/disk/extents") == .extents("disk"))
        #expect(Route.parse("/exports/disk/flush") == .flush("disk"))
        #expect(Route.parse("/exports/disk/trim") == .trim("disk"))
        #expect(Route.parse("/exports/disk/zero") == .zero("disk"))
        #expect(Route.parse("/exports/a%2Fb/data") == .data("a%2Fb"))
        // The empty name (NBD's default export) is an empty segment.
        #expect(Route.parse("/exports//data") == .data(""))
        #expect(Route.parse("/exports/") == .export(""))
        // The disk browser: its page, its two files, and the base path without its slash.
        #expect(Route.parse("/") == .page)
        #expect(Route.parse("/ui/app.js") == .asset("app.js"))
        #expect(Route.parse("/ui/style.css") == .asset("style.css"))
        #expect(Route.parse("") == .baseRedirect)
    }

    @Test("unknown paths are nil (404)", arguments: [
        "/ui/", "/ui/other.js", "/index.html", "/export/disk", "/EXPORTS", "exports/disk", "//exports/disk", "/exports/disk/other",
        "/exports/disk/data/x", "/exports/a/b/data", "/exports/disk/data/", "/exports/disk/", "/healthz/",
        "/exports/disk/DATA", "/openapi.json", "/exports/a/b/c/d",
    ])
    func unknown(_ path: String) {
        #expect(Route.parse(path) == nil)
    }

    @Test("names decode from one percent-encoded segment")
    func decodesNames() throws {
        #expect(try Route.parse("/exports/a%2Fb/data")?.decodedExportName() == "a/b")
        #expect(try Route.parse("/exports//data")?.decodedExportName() == "")
        #expect(try Route.parse("/exports/caf%C3%A9")?.decodedExportName() == "café")
        #expect(try Route.parse("/exports/sp%20ace/extents")?.decodedExportName() == "sp ace")
        #expect(try Route.parse("/healthz")?.decodedExportName() == nil)
        let longest = String(repeating: "n", count: 4096)
        #expect(try Route.parse("/exports/\(longest)/data")?.decodedExportName() == longest)
    }

    @Test("bad percent-encoding, invalid UTF-8 and names over 4096 bytes are refused (400 bad_request with this message)", arguments: [
        "/exports/%ZZ/data", "/exports/%2/data", "/exports/abc%/data", "/exports/%C3%28/data", "/exports/%FF/data",
        "/exports/" + String(repeating: "n", count: 4097) + "/data",
        "/exports/" + String(repeating: "%C3%A9", count: 2049) + "/data",  // 4098 bytes once decoded.
    ])
    func badNames(_ path: String) throws {
        let route = try #require(Route.parse(path))
        do {
            let name = try route.decodedExportName()
            Issue.record("\(path) decoded to \(name ?? "nil")")
        } catch {
            let expected = path.utf8.count > 4096 ? "the export name is longer than 4096 bytes" : "the export name is not valid percent-encoded UTF-8"
            #expect(error.message == expected)
        }
    }

    @Test("the methods each resource allows (the Allow header of a 405)")
    func allowed() {
        #expect(Route.data("d").allowed == ["GET", "HEAD", "PUT", "OPTIONS"])
        for route in [Route.flush("d"), .trim("d"), .zero("d")] {
            #expect(route.allowed == ["POST"])
        }
        for route in [Route.exports, .export("d"), .extents("d"), .health, .ready, .metrics, .openAPI] {
            #expect(route.allowed.contains("GET"))
            #expect(!route.allowed.contains("PUT") && !route.allowed.contains("POST"))
        }
    }
}
