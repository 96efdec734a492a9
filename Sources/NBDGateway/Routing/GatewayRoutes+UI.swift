import Crypto
import NIOCore

/// One file of the disk browser, compiled into the binary.
struct UIAsset: Sendable {
    let contentType: String
    let body: ByteBuffer
    /// Strong, from the content: a new build with other files gets other tags.
    let etag: String

    init(contentType: String, _ bytes: [UInt8]) {
        self.contentType = contentType
        body = ByteBuffer(bytes: bytes)
        etag = "\"" + SHA256.hash(data: bytes).prefix(12).map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() + "\""
    }

    static let page = UIAsset(contentType: "text/html; charset=utf-8", PackageResources.index_html)
    static let files: [String: UIAsset] = [
        "app.js": UIAsset(contentType: "text/javascript; charset=utf-8", PackageResources.app_js),
        "style.css": UIAsset(contentType: "text/css; charset=utf-8", PackageResources.style_css),
    ]

    /// Scripts and styles only from the gateway's own files, requests only to its own API,
    /// nothing inline, no framing.
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

extension GatewayRoutes {
    func userInterface(_ request: GatewayRequest, route: Route) throws(GatewayError) -> GatewayResponse {
        guard settings.userInterface else { throw .notFound(request.rawPath) }
        let asset: UIAsset
        switch route {
        case .baseRedirect:
            // The page's relative links need the trailing slash.
            return GatewayResponse(status: 308, headers: [("Location", settings.basePath + "/"), ("Content-Type", "text/plain; charset=utf-8")],
                                   body: .bytes(ByteBuffer(string: "see \(settings.basePath)/\n")))
        case .asset(let name):
            guard let file = UIAsset.files[name] else { throw .notFound(request.rawPath) }
            asset = file
        default:
            asset = UIAsset.page
        }
        let headers: [(name: String, value: String)] = [
            ("ETag", asset.etag), ("Cache-Control", "no-cache"), ("Content-Security-Policy", UIAsset.contentSecurityPolicy),
            ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
        ]
        if let tags = request.header("If-None-Match"), tags.split(separator: ",").contains(where: { $0.trimmingCharacters(in: " \t") == asset.etag || $0.trimmingCharacters(in: " \t") == "*" }) {
            return GatewayResponse(status: 304, headers: headers)
        }
        return GatewayResponse(status: 200, headers: [("Content-Type", asset.contentType)] + headers, body: .bytes(asset.body))
    }
}
