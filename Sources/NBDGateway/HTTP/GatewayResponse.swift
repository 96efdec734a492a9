import NIOCore

/// An HTTP response from a route handler.
public struct GatewayResponse: Sendable {
    public enum Body: Sendable {
        case empty
        /// A small body held in memory.
        case bytes(ByteBuffer)
        /// A body held in memory as the pieces it arrived in (an NBD read's receive-buffer
        /// slices), sent as they are: never joined into one buffer.
        case slices([ByteBuffer])
        /// A large body produced while it is sent, `length` bytes long.
        case stream(length: UInt64, ResponseBodyStream)
    }

    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: Body
    /// For HEAD: the `Content-Length` a GET would have, sent without a body.
    public var headLength: UInt64?

    public init(status: Int, headers: [(name: String, value: String)] = [], body: Body = .empty, headLength: UInt64? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.headLength = headLength
    }

    /// A JSON response.
    public static func json(_ status: Int, _ json: String, headers: [(name: String, value: String)] = []) -> GatewayResponse {
        GatewayResponse(status: status, headers: [("Content-Type", "application/json")] + headers, body: .bytes(ByteBuffer(string: json)))
    }

    public func header(_ name: String) -> String? {
        let wanted = name.lowercased()
        return headers.first { $0.name.lowercased() == wanted }?.value
    }
}
