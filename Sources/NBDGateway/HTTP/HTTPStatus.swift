/// An HTTP status code, typed so that a status and any other integer do not mix.
public struct HTTPStatus: Hashable, Sendable, ExpressibleByIntegerLiteral, CustomStringConvertible {
    /// The three-digit code.
    public let code: Int

    public init(_ code: Int) { self.code = code }
    public init(integerLiteral code: Int) { self.code = code }

    public var description: String { String(code) }

    public static let badRequest: HTTPStatus = 400
    public static let unauthorized: HTTPStatus = 401
    public static let forbidden: HTTPStatus = 403
    public static let notFound: HTTPStatus = 404
    public static let methodNotAllowed: HTTPStatus = 405
    public static let preconditionFailed: HTTPStatus = 412
    public static let payloadTooLarge: HTTPStatus = 413
    public static let rangeNotSatisfiable: HTTPStatus = 416
    public static let requestHeaderFieldsTooLarge: HTTPStatus = 431
    public static let internalServerError: HTTPStatus = 500
    public static let notImplemented: HTTPStatus = 501
    public static let badGateway: HTTPStatus = 502
    public static let serviceUnavailable: HTTPStatus = 503
    public static let gatewayTimeout: HTTPStatus = 504
    public static let insufficientStorage: HTTPStatus = 507
}
