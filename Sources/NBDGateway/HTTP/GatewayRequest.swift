/// An HTTP request as the route handlers see it: no sockets, no libmicrohttpd.
public struct GatewayRequest: Sendable {
    public var method: String
    /// The path exactly as sent (still percent-encoded), without the query.
    public var rawPath: String
    /// Query parameters, percent-decoded, in order.
    public var query: [(name: String, value: String)]
    /// Header fields in order; look-ups are case-insensitive.
    public var headers: [(name: String, value: String)]
    /// The id every response and log line carries.
    public var requestID: String
    /// Arrived over HTTPS.
    public var isSecure = false
    /// Came from a `--trusted-proxy`, whose `X-Forwarded-*` headers are believed.
    public var isFromTrustedProxy = false

    public init(method: String, rawPath: String, query: [(name: String, value: String)] = [], headers: [(name: String, value: String)] = [], requestID: String = "test") {
        self.method = method
        self.rawPath = rawPath
        self.query = query
        self.headers = headers
        self.requestID = requestID
    }

    /// The path and query of a request target: an absolute-form target (`http://host/path`,
    /// RFC 9112 §3.2.2, which proxies send) loses its scheme and authority.
    public static func originForm(_ target: String) -> String {
        let bytes = target.utf8
        for scheme in ["http://", "https://"] where bytes.count >= scheme.utf8.count {
            let prefix = target.utf8.prefix(scheme.utf8.count)
            guard zip(prefix, scheme.utf8).allSatisfy({ $0 | 0x20 == $1 | 0x20 }) else { continue }
            let authorityStart = target.utf8.index(target.utf8.startIndex, offsetBy: scheme.utf8.count)
            guard let pathStart = target.utf8[authorityStart...].firstIndex(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") }) else {
                return "/"
            }
            let rest = String(target[pathStart...])
            return rest.hasPrefix("?") ? "/" + rest : rest
        }
        return target
    }

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.equalsIgnoringASCIICase(name) }?.value
    }

    /// The first value of a query parameter.
    public func queryValue(_ name: String) -> String? {
        query.first { $0.name == name }?.value
    }
}

extension String {
    /// Equal but for the case of ASCII letters (header names are ASCII); allocates nothing.
    func equalsIgnoringASCIICase(_ other: String) -> Bool {
        utf8.count == other.utf8.count && zip(utf8, other.utf8).allSatisfy { a, b in
            a == b || (a | 0x20 == b | 0x20 && (a | 0x20) >= 97 && (a | 0x20) <= 122)
        }
    }
}
