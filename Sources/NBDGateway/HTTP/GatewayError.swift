import NBDClient

/// An error answer: HTTP status, stable code, and the NBD error behind it (see openapi.yaml, `Error`).
public struct GatewayError: Error, Sendable, Equatable {
    public var status: Int
    public var code: String
    public var message: String
    public var nbdError: String?
    public var nbdErrno: UInt32?
    public var export: String?
    /// Extra headers (`Allow`, `Retry-After`, `Content-Range`).
    public var headers: [(name: String, value: String)]

    public init(_ status: Int, _ code: String, _ message: String, nbdError: String? = nil, nbdErrno: UInt32? = nil, export: String? = nil, headers: [(name: String, value: String)] = []) {
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
        GatewayError(400, "bad_request", message, export: export)
    }
    public static func invalidRange(_ message: String, export: String? = nil) -> GatewayError {
        GatewayError(400, "invalid_range", message, export: export)
    }
    public static func notFound(_ path: String) -> GatewayError {
        GatewayError(404, "not_found", "no resource at \(path)")
    }
    public static func unknownExport(_ name: String) -> GatewayError {
        GatewayError(404, "unknown_export", "no export named \"\(name)\"", nbdError: NBDOptionError.unknown.name, nbdErrno: NBDOptionError.unknown.rawValue, export: name)
    }
    public static func methodNotAllowed(_ method: String, allow: [String]) -> GatewayError {
        GatewayError(405, "method_not_allowed", "method \(method) is not allowed here", headers: [("Allow", allow.joined(separator: ", "))])
    }
    public static func readOnly(_ export: String) -> GatewayError {
        GatewayError(403, "read_only", "export \"\(export)\" is read-only", nbdError: "EPERM", nbdErrno: 1, export: export)
    }
    public static func notImplemented(_ message: String, export: String?) -> GatewayError {
        GatewayError(501, "not_implemented", message, nbdError: "ENOTSUP", nbdErrno: 95, export: export)
    }
    public static func unsatisfiable(_ message: String, size: UInt64, export: String?, code: String = "range_not_satisfiable") -> GatewayError {
        GatewayError(416, code, message, export: export, headers: [("Content-Range", "bytes */\(size)")])
    }
    public static func payloadTooLarge(_ message: String, export: String?) -> GatewayError {
        GatewayError(413, "payload_too_large", message, export: export)
    }
    public static func headerTooLarge(_ message: String) -> GatewayError {
        GatewayError(431, "request_header_too_large", message)
    }
    public static func internalError(_ message: String) -> GatewayError {
        GatewayError(500, "internal_error", message)
    }
    public static func unavailable(_ message: String, code: String = "service_unavailable") -> GatewayError {
        GatewayError(503, code, message, headers: [("Retry-After", "1")])
    }

    // MARK: - NBD errors

    /// How an NBD failure answers over HTTP. `writing` tells EOVERFLOW on writes (413) from reads (416).
    public init(_ error: NBDError, export: String?, exportSize: UInt64? = nil, writing: Bool = false) {
        // The name the gateway serves the export under, not the backend's NBD name.
        let name = export ?? error.exportName
        let message = error.message.isEmpty ? "\(error)" : error.message
        if let errno = error.errno {
            // An unknown errno is reported raw, named EINVAL (as the protocol says to treat it).
            let errnoName = errno.isKnown ? errno.name : "EINVAL"
            func make(_ status: Int, _ code: String, headers: [(name: String, value: String)] = []) -> GatewayError {
                GatewayError(status, code, message, nbdError: errnoName, nbdErrno: errno.rawValue, export: name, headers: headers)
            }
            if error.code == .readOnly { self = make(403, "read_only"); return }
            if error.code == .unimplemented { self = make(501, "not_implemented"); return }
            switch errno {
            case .EPERM: self = make(403, "forbidden")
            case .EIO: self = make(502, "backend_error")
            case .ENOMEM, .ESHUTDOWN: self = make(503, "service_unavailable", headers: [("Retry-After", "1")])
            case .ENOSPC: self = make(507, "insufficient_storage")
            case .EOVERFLOW:
                self = writing
                    ? make(413, "payload_too_large")
                    : make(416, "range_not_satisfiable", headers: exportSize.map { [("Content-Range", "bytes */\($0)")] } ?? [])
            case .ENOTSUP: self = make(501, "not_implemented")
            default: self = make(400, "invalid_argument")
            }
            return
        }
        if let option = error.optionError {
            func make(_ status: Int, _ code: String, headers: [(name: String, value: String)] = []) -> GatewayError {
                // An option error the protocol does not name is reported as neither name nor number.
                let named = !option.name.hasPrefix("NBD_REP_ERR_UNKNOWN_VALUE")
                return GatewayError(status, code, message, nbdError: named ? option.name : nil,
                                    nbdErrno: named ? option.rawValue : nil, export: name, headers: headers)
            }
            switch option {
            case .unknown: self = make(404, "unknown_export")
            case .policy: self = error.code == .listingRefused ? make(403, "listing_refused") : make(403, "forbidden")
            case .invalid, .tooBig: self = make(400, "invalid_argument")
            case .unsupported, .platform: self = make(501, "not_implemented")
            case .shutdown: self = make(503, "service_unavailable", headers: [("Retry-After", "1")])
            default: self = make(502, "backend_error")
            }
            return
        }
        switch error.code {
        case .unknownExport: self = .unknownExport(name ?? "")
        case .listingUnsupported: self = GatewayError(501, "not_implemented", message, export: name)
        case .timeout: self = GatewayError(504, "gateway_timeout", message, export: name)
        case .protocolViolation: self = GatewayError(502, "bad_gateway", message, export: name)
        case .connectionFailed, .connectionLost, .disconnected, .tlsFailure, .tlsRequired, .unsupportedServer:
            self = GatewayError(502, "backend_unreachable", message, export: name)
        case .readOnly: self = .readOnly(name ?? "")
        case .unimplemented: self = .notImplemented(message, export: name)
        case .outOfBounds:
            self = .unsatisfiable(message, size: exportSize ?? 0, export: name)
        case .invalidArgument: self = GatewayError(400, "invalid_argument", message, nbdError: "EINVAL", nbdErrno: 22, export: name)
        case .invalidURI: self = GatewayError(500, "internal_error", message, export: name)
        default: self = GatewayError(502, "backend_error", message, export: name)
        }
    }

    /// The JSON body of the contract's `Error` schema.
    public func body(requestID: String) -> String {
        JSON.Value.object([
            ("error", .object([
                ("status", .int(UInt64(status))),
                ("code", .string(code)),
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
        .json(status, body(requestID: requestID), headers: headers)
    }
}
