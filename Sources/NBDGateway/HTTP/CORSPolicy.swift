/// `--cors-origin`: which web origins may read the gateway's answers from a browser.
///
/// The adapter adds `responseHeaders` to every answer (errors and answers it makes itself
/// included); the routes answer preflights. Requests from other origins get no CORS headers,
/// so the browser keeps the answer from the page.
public struct CORSPolicy: Sendable, Equatable {
    /// Origins as browsers send them (`https://dash.example:8443`), or `*`.
    public var allowedOrigins: [String]

    public init(allowedOrigins: [String] = []) {
        self.allowedOrigins = allowedOrigins
    }

    public var isEnabled: Bool { !allowedOrigins.isEmpty }
    private var allowsAny: Bool { allowedOrigins.contains("*") }

    /// What a page may read from an answer besides the safelisted headers.
    public static let exposedHeaders = "Content-Range, Content-Length, Accept-Ranges, ETag, X-Request-Id, Retry-After, WWW-Authenticate"
    /// What a page may send. `Authorization` is named: a `*` in this list would not cover it.
    public static let allowedRequestHeaders = "Range, Content-Range, Authorization, Content-Type, If-Match, If-Range, If-None-Match, X-Request-Id"
    /// How long a browser may cache a preflight (seconds).
    public static let maximumAge = "600"

    /// The origin the answer names, or nil when this origin is not allowed.
    public func allowedOrigin(_ origin: String?) -> String? {
        guard let origin, isEnabled else { return nil }
        if allowsAny { return "*" }
        return allowedOrigins.contains(origin) ? origin : nil
    }

    /// Headers for any answer to a request with this `Origin`. With named origins the answer
    /// depends on the origin, so caches are told (`Vary: Origin`) whoever asked. No
    /// `Access-Control-Allow-Credentials`: the gateway has no cookies, and a token travels in
    /// `Authorization`, which a page sends explicitly.
    public func responseHeaders(origin: String?) -> [(name: String, value: String)] {
        guard isEnabled else { return [] }
        var headers: [(name: String, value: String)] = allowsAny ? [] : [("Vary", "Origin")]
        if let allowed = allowedOrigin(origin) {
            headers.append(("Access-Control-Allow-Origin", allowed))
            headers.append(("Access-Control-Expose-Headers", Self.exposedHeaders))
        }
        return headers
    }

    /// A preflight: `OPTIONS` with `Access-Control-Request-Method` from an allowed origin. A
    /// plain `OPTIONS` (and one from another origin) keeps its own meaning.
    public func isPreflight(_ request: GatewayRequest) -> Bool {
        request.method == "OPTIONS" && request.header("Access-Control-Request-Method") != nil && allowedOrigin(request.header("Origin")) != nil
    }

    /// The answer to a preflight for a resource that accepts `methods` (the adapter adds the
    /// origin headers).
    public func preflightResponse(methods: [String]) -> GatewayResponse {
        GatewayResponse(status: 204, headers: [
            ("Access-Control-Allow-Methods", methods.joined(separator: ", ")),
            ("Access-Control-Allow-Headers", Self.allowedRequestHeaders),
            ("Access-Control-Max-Age", Self.maximumAge),
        ])
    }
}
