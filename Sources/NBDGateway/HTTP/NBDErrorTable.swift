import NBDClient

/// How an NBD failure answers over HTTP, as data: the first row whose `matches` holds decides
/// the status and code. `openapi.yaml`'s error table is this table, row for row (a test renders
/// one and compares it with the other).
public enum NBDErrorTable {
    /// One line of the table.
    public struct Row: Sendable {
        /// The NBD failure, in the contract's words.
        public let cause: String
        public let status: HTTPStatus
        public let code: GatewayError.Code
        /// Whether the answer carries `Retry-After` (the server may recover).
        public let retryAfter: Bool
        /// Whether the row applies to an error (`writing`: the request was a write).
        let matches: @Sendable (NBDError, _ writing: Bool) -> Bool
    }

    private static func errno(_ error: NBDError, _ values: NBDErrno...) -> Bool {
        error.errno.map { values.contains($0) } ?? false
    }

    private static func option(_ error: NBDError, _ values: NBDOptionError...) -> Bool {
        error.optionError.map { values.contains($0) } ?? false
    }

    private static func code(_ error: NBDError, _ values: NBDError.Code...) -> Bool {
        values.contains(error.code)
    }

    /// The table, in the order rows are tried.
    public static let rows: [Row] = [
        Row(cause: "EPERM on a read-only export (or the export's READ_ONLY flag)", status: .forbidden, code: .readOnly, retryAfter: false) { error, _ in
            code(error, .readOnly)
        },
        Row(cause: "ENOTSUP, a command the export does not offer, NBD_REP_ERR_UNSUP, NBD_REP_ERR_PLATFORM, LIST not supported", status: .notImplemented, code: .notImplemented, retryAfter: false) { error, _ in
            errno(error, .ENOTSUP) || code(error, .unimplemented, .listingUnsupported) || option(error, .unsupported, .platform)
        },
        Row(cause: "NBD_REP_ERR_POLICY on LIST", status: .forbidden, code: .listingRefused, retryAfter: false) { error, _ in
            code(error, .listingRefused) && option(error, .policy)
        },
        Row(cause: "EPERM otherwise, NBD_REP_ERR_POLICY on GO/INFO", status: .forbidden, code: .forbidden, retryAfter: false) { error, _ in
            errno(error, .EPERM) || option(error, .policy)
        },
        Row(cause: "ENOSPC", status: .insufficientStorage, code: .insufficientStorage, retryAfter: false) { error, _ in
            errno(error, .ENOSPC)
        },
        Row(cause: "EOVERFLOW on a write", status: .payloadTooLarge, code: .payloadTooLarge, retryAfter: false) { error, writing in
            writing && errno(error, .EOVERFLOW)
        },
        Row(cause: "EOVERFLOW otherwise, a range outside the export (refused before sending)", status: .rangeNotSatisfiable, code: .rangeNotSatisfiable, retryAfter: false) { error, _ in
            errno(error, .EOVERFLOW) || code(error, .outOfBounds)
        },
        Row(cause: "ENOMEM, ESHUTDOWN, NBD_REP_ERR_SHUTDOWN", status: .serviceUnavailable, code: .serviceUnavailable, retryAfter: true) { error, _ in
            errno(error, .ENOMEM, .ESHUTDOWN) || option(error, .shutdown)
        },
        Row(cause: "EIO", status: .badGateway, code: .backendError, retryAfter: false) { error, _ in
            errno(error, .EIO)
        },
        Row(cause: "EINVAL (and unknown errno values), NBD_REP_ERR_INVALID, NBD_REP_ERR_TOO_BIG, a malformed request refused before sending", status: .badRequest, code: .invalidArgument, retryAfter: false) { error, _ in
            error.errno != nil || option(error, .invalid, .tooBig) || code(error, .invalidArgument)
        },
        Row(cause: "NBD_REP_ERR_UNKNOWN, no such export", status: .notFound, code: .unknownExport, retryAfter: false) { error, _ in
            option(error, .unknown) || code(error, .unknownExport)
        },
        Row(cause: "NBD_REP_ERR_TLS_REQD, NBD_REP_ERR_BLOCK_SIZE_REQD, NBD_REP_ERR_EXT_HEADER_REQD, other option errors", status: .badGateway, code: .backendError, retryAfter: false) { error, _ in
            error.optionError != nil
        },
        Row(cause: "connect refused, TLS failure, connection lost, a server this client cannot speak to", status: .badGateway, code: .backendUnreachable, retryAfter: false) { error, _ in
            code(error, .connectionFailed, .connectionLost, .disconnected, .tlsFailure, .tlsRequired, .unsupportedServer)
        },
        Row(cause: "malformed NBD reply (protocol violation)", status: .badGateway, code: .badGateway, retryAfter: false) { error, _ in
            code(error, .protocolViolation)
        },
        Row(cause: "no NBD reply within the gateway's timeout", status: .gatewayTimeout, code: .gatewayTimeout, retryAfter: false) { error, _ in
            code(error, .timeout)
        },
        Row(cause: "a backend URI the gateway cannot use", status: .internalServerError, code: .internalError, retryAfter: false) { error, _ in
            code(error, .invalidURI)
        },
        Row(cause: "any other failure", status: .badGateway, code: .backendError, retryAfter: false) { _, _ in true },
    ]

    /// The row for an error.
    public static func row(for error: NBDError, writing: Bool) -> Row {
        // The last row matches everything.
        rows.first { $0.matches(error, writing) } ?? rows[rows.count - 1]
    }

    /// The table as the contract's Markdown, one line per row.
    public static var markdownRows: [String] {
        rows.map { "| \($0.cause) | \($0.status)\($0.retryAfter ? " + `Retry-After`" : "") | `\($0.code)` |" }
    }
}
