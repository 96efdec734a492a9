import NBDClient

/// An error answer: HTTP status, stable code, and the NBD error behind it (see openapi.yaml, `Error`).
public struct GatewayError: Error, Sendable, Equatable {
    /// A stable snake_case name for what went wrong, extensible like `NBDError.Code`.
    public struct Code: Hashable, Sendable, ExpressibleByStringLiteral, CustomStringConvertible {
        public let name: String
        public init(_ name: String) { self.name = name }
        public init(stringLiteral name: String) { self.name = name }
        public var description: String { name }

        public static let badRequest: Code = "bad_request"
        public static let invalidRange: Code = "invalid_range"
        public static let invalidArgument: Code = "invalid_argument"
        public static let notFound: Code = "not_found"
        public static let unknownExport: Code = "unknown_export"
        public static let methodNotAllowed: Code = "method_not_allowed"
        public static let readOnly: Code = "read_only"
        public static let forbidden: Code = "forbidden"
        public static let unauthorized: Code = "unauthorized"
        public static let accessDenied: Code = "access_denied"
        public static let preconditionFailed: Code = "precondition_failed"
        public static let digestMismatch: Code = "digest_mismatch"
        public static let overloaded: Code = "overloaded"
        public static let listingRefused: Code = "listing_refused"
        public static let payloadTooLarge: Code = "payload_too_large"
        public static let rangeNotSatisfiable: Code = "range_not_satisfiable"
        public static let requestHeaderTooLarge: Code = "request_header_too_large"
        public static let internalError: Code = "internal_error"
        public static let notImplemented: Code = "not_implemented"
        public static let backendError: Code = "backend_error"
        public static let backendUnreachable: Code = "backend_unreachable"
        public static let badGateway: Code = "bad_gateway"
        public static let serviceUnavailable: Code = "service_unavailable"
        public static let gatewayTimeout: Code = "gateway_timeout"
        public static let insufficientStorage: Code = "insufficient_storage"
    }

    public var status: HTTPStatus
    public var code: Code
    public var message: String
    public var nbdError: String?
    public var nbdErrno: UInt32?
    public var export: String?
    /// Extra headers (`Allow`, `Retry-After`, `Content-Range`).
    public var headers: [(name: String, value: String)]

    public init(_ status: HTTPStatus, _ code: Code, _ message: String, nbdError: String? = nil, nbdErrno: UInt32? = nil, export: String? = nil, headers: [(name: String, value: String)] = []) {
        self.status = status
        self.code = code
        self.message = message
        self.nbdError = nbdError
        self.nbdErrno = nbdErrno
        self.export = export
        self.headers = headers
    }

    public static func == (lhs: GatewayError, rhs: GatewayError) -> Bool {
        lhs.status == rhs.status && lhs.code == rhs.code && lhs.nbdError == rhs.nbdError && lhs.nbdErrno == rhs.nbdErrno
    }

    // MARK: - The gateway's own errors

    public static func badRequest(_ message: String, export: String? = nil) -> GatewayError {
        GatewayError(.badRequest, .badRequest, message, export: export)
    }
    public static func invalidRange(_ message: String, export: String? = nil) -> GatewayError {
        GatewayError(.badRequest, .invalidRange, message, export: export)
    }
    public static func notFound(_ path: String) -> GatewayError {
        GatewayError(.notFound, .notFound, "no resource at \(path)")
    }
    public static func unknownExport(_ name: String) -> GatewayError {
        GatewayError(.notFound, .unknownExport, "no export named \"\(name)\"", nbdError: NBDOptionError.unknown.name, nbdErrno: NBDOptionError.unknown.rawValue, export: name)
    }
    public static func methodNotAllowed(_ method: String, allow: [String]) -> GatewayError {
        GatewayError(.methodNotAllowed, .methodNotAllowed, "method \(method) is not allowed here", headers: [("Allow", allow.joined(separator: ", "))])
    }
    public static func readOnly(_ export: String) -> GatewayError {
        GatewayError(.forbidden, .readOnly, "export \"\(export)\" is read-only", nbdError: "EPERM", nbdErrno: 1, export: export)
    }
    public static func notImplemented(_ message: String, export: String?) -> GatewayError {
        GatewayError(.notImplemented, .notImplemented, message, nbdError: "ENOTSUP", nbdErrno: 95, export: export)
    }
    public static func unsatisfiable(_ message: String, size: UInt64, export: String?, code: Code = .rangeNotSatisfiable) -> GatewayError {
        GatewayError(.rangeNotSatisfiable, code, message, export: export, headers: [("Content-Range", "bytes */\(size)")])
    }
    public static func payloadTooLarge(_ message: String, export: String?) -> GatewayError {
        GatewayError(.payloadTooLarge, .payloadTooLarge, message, export: export)
    }
    public static func headerTooLarge(_ message: String) -> GatewayError {
        GatewayError(.requestHeaderFieldsTooLarge, .requestHeaderTooLarge, message)
    }
    public static func internalError(_ message: String) -> GatewayError {
        GatewayError(.internalServerError, .internalError, message)
    }
    public static func unauthorized(_ message: String) -> GatewayError {
        GatewayError(.unauthorized, .unauthorized, message, headers: [
            ("WWW-Authenticate", "Bearer realm=\"\(AccessControl.realm)\""), ("WWW-Authenticate", "Basic realm=\"\(AccessControl.realm)\""),
        ])
    }
    public static func accessDenied(_ message: String, export: String? = nil) -> GatewayError {
        GatewayError(.forbidden, .accessDenied, message, export: export)
    }
    public static func preconditionFailed(_ message: String, export: String?) -> GatewayError {
        GatewayError(.preconditionFailed, .preconditionFailed, message, export: export)
    }
    public static func unavailable(_ message: String, code: Code = .serviceUnavailable) -> GatewayError {
        GatewayError(.serviceUnavailable, code, message, headers: [("Retry-After", "1")])
    }

    // MARK: - NBD errors

    /// How an NBD failure answers over HTTP: the row of `NBDErrorTable` it matches.
    /// `writing` tells EOVERFLOW on writes (413) from reads (416).
    public init(_ error: NBDError, export: String?, exportSize: UInt64? = nil, writing: Bool = false) {
        let row = NBDErrorTable.row(for: error, writing: writing)
        var headers: [(name: String, value: String)] = []
        if row.retryAfter { headers.append(("Retry-After", "1")) }
        if row.status == .rangeNotSatisfiable, let exportSize { headers.append(("Content-Range", "bytes */\(exportSize)")) }
        let behind = Self.nbdErrorBehind(error)
        self.init(
            row.status, row.code, error.message.isEmpty ? "\(error)" : error.message,
            nbdError: behind?.name, nbdErrno: behind?.number,
            export: export ?? error.exportName,  // The name the gateway serves it under, not the backend's.
            headers: headers
        )
    }

    /// How a failed upload answers.
    public init(_ failure: UploadFailure, export: String, exportSize: UInt64) {
        switch failure {
        case .longerThanDeclared(let declared):
            self = .payloadTooLarge("the body is longer than the \(declared) bytes declared", export: export)
        case .shorterThanDeclared(let received, let declared):
            self = .invalidRange("the body has \(received) of the \(declared) bytes declared", export: export)
        case .overMaximum(let maximum):
            self = .payloadTooLarge("the body is over the gateway's limit of \(maximum) bytes (--max-body-size)", export: export)
        case .passesEnd(let size):
            self = .unsatisfiable("the write passes the end of the export (size \(size))", size: size, export: export)
        case .nbd(let error):
            self = GatewayError(error, export: export, exportSize: exportSize, writing: true)
        case .digestMismatch(let expected, let actual):
            self = GatewayError(
                .badRequest, .digestMismatch,
                "the body's \(actual.headerValue) differs from Content-Digest \(expected.headerValue); the bytes were written: send them again",
                export: export
            )
        }
    }

    /// The NBD error the answer names: the server's errno or option error, or what a failure
    /// the client found itself stands for.
    static func nbdErrorBehind(_ error: NBDError) -> (name: String, number: UInt32)? {
        if let errno = error.errno {
            // An unknown errno is reported raw, named EINVAL (as the protocol says to treat it).
            return (errno.isKnown ? errno.name : "EINVAL", errno.rawValue)
        }
        if let option = error.optionError {
            // An option error the protocol does not name is reported as neither name nor number.
            return option.name.hasPrefix("NBD_REP_ERR_UNKNOWN_VALUE") ? nil : (option.name, option.rawValue)
        }
        switch error.code {
        case .readOnly: return ("EPERM", NBDErrno.EPERM.rawValue)
        case .unimplemented: return ("ENOTSUP", NBDErrno.ENOTSUP.rawValue)
        case .invalidArgument: return ("EINVAL", NBDErrno.EINVAL.rawValue)
        case .unknownExport: return (NBDOptionError.unknown.name, NBDOptionError.unknown.rawValue)
        default: return nil
        }
    }

    /// The JSON body of the contract's `Error` schema.
    public func body(requestID: String) -> String {
        JSON.Value.object([
            ("error", .object([
                ("status", .int(UInt64(status.code))),
                ("code", .string(code.name)),
                ("message", .string(message)),
                ("nbd_error", nbdError.map { .string($0) } ?? .null),
                ("nbd_errno", nbdErrno.map { .int(UInt64($0)) } ?? .null),
                ("export", export.map { .string($0) } ?? .null),
                ("request_id", .string(requestID)),
            ])),
        ]).rendered
    }

    /// The whole HTTP answer.
    public func response(requestID: String) -> GatewayResponse {
        .json(status.code, body(requestID: requestID), headers: headers)
    }
}
