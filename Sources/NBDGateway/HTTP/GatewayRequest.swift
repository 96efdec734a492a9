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

    public init(method: String, rawPath: String, query: [(name: String, value: String)] = [], headers: [(name: String, value: String)] = [], requestID: String = "test") {
        self.method = method
        self.rawPath = rawPath
        self.query = query
        self.headers = headers
        self.requestID = requestID
    }

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name.lowercased() == wanted }?.value
    }

    /// The first value of a query parameter.
    public func queryValue(_ name: String) -> String? {
        query.first { $0.name == name }?.value
    }
}
