import NBDClient
@testable import NBDGateway
import Testing

@Suite("GatewayError: NBD errors to HTTP answers, and the JSON body (pure)")
struct GatewayErrorTests {
    /// One row of the contract's table (openapi.yaml, `Error.code`).
    struct Row: Sendable, CustomTestStringConvertible {
        var error: NBDError
        var writing = false
        var status: Int
        var code: String
        var nbdError: String?
        var nbdErrno: UInt32?
        /// Extra headers the answer must carry.
        var headers: [String: String] = [:]
        var testDescription: String { "\(error.debugDescription)\(writing ? " (writing)" : "") → \(status) \(code)" }
    }

    static let policy = NBDOptionError.policy.rawValue

    static let rows: [Row] = [
        // Errno values in command replies.
        Row(error: NBDError(.serverError, errno: .EPERM), status: 403, code: "forbidden", nbdError: "EPERM", nbdErrno: 1),
        Row(error: NBDError(.readOnly, errno: .EPERM), status: 403, code: "read_only", nbdError: "EPERM", nbdErrno: 1),
        Row(error: NBDError(.serverError, errno: .EINVAL), status: 400, code: "invalid_argument", nbdError: "EINVAL", nbdErrno: 22),
        Row(error: NBDError(.serverError, errno: NBDErrno(rawValue: 999)), status: 400, code: "invalid_argument", nbdError: "EINVAL", nbdErrno: 999),
        Row(error: NBDError(.serverError, errno: .ENOSPC), status: 507, code: "insufficient_storage", nbdError: "ENOSPC", nbdErrno: 28),
        Row(error: NBDError(.serverError, errno: .EOVERFLOW), writing: true, status: 413, code: "payload_too_large", nbdError: "EOVERFLOW", nbdErrno: 75),
        Row(error: NBDError(.serverError, errno: .EOVERFLOW), status: 416, code: "range_not_satisfiable", nbdError: "EOVERFLOW", nbdErrno: 75,
            headers: ["Content-Range": "bytes */1048576"]),
        Row(error: NBDError(.serverError, errno: .ENOTSUP), status: 501, code: "not_implemented", nbdError: "ENOTSUP", nbdErrno: 95),
        Row(error: NBDError(.unimplemented, errno: .ENOTSUP), status: 501, code: "not_implemented", nbdError: "ENOTSUP", nbdErrno: 95),
        Row(error: NBDError(.serverError, errno: .EIO), status: 502, code: "backend_error", nbdError: "EIO", nbdErrno: 5),
        Row(error: NBDError(.serverError, errno: .ENOMEM), status: 503, code: "service_unavailable", nbdError: "ENOMEM", nbdErrno: 12, headers: ["Retry-After": "1"]),
        Row(error: NBDError(.serverError, errno: .ESHUTDOWN), status: 503, code: "service_unavailable", nbdError: "ESHUTDOWN", nbdErrno: 108, headers: ["Retry-After": "1"]),
        // Option errors in the handshake.
        Row(error: NBDError(.unknownExport, optionError: .unknown), status: 404, code: "unknown_export", nbdError: "NBD_REP_ERR_UNKNOWN", nbdErrno: 2_147_483_654),
        Row(error: NBDError(.optionRefused, optionError: .policy), status: 403, code: "forbidden", nbdError: "NBD_REP_ERR_POLICY", nbdErrno: policy),
        Row(error: NBDError(.listingRefused, optionError: .policy), status: 403, code: "listing_refused", nbdError: "NBD_REP_ERR_POLICY", nbdErrno: policy),
        Row(error: NBDError(.optionRefused, optionError: .invalid), status: 400, code: "invalid_argument", nbdError: "NBD_REP_ERR_INVALID", nbdErrno: NBDOptionError.invalid.rawValue),
        Row(error: NBDError(.optionRefused, optionError: .tooBig), status: 400, code: "invalid_argument", nbdError: "NBD_REP_ERR_TOO_BIG", nbdErrno: NBDOptionError.tooBig.rawValue),
        Row(error: NBDError(.optionRefused, optionError: .unsupported), status: 501, code: "not_implemented", nbdError: "NBD_REP_ERR_UNSUP", nbdErrno: NBDOptionError.unsupported.rawValue),
        Row(error: NBDError(.optionRefused, optionError: .platform), status: 501, code: "not_implemented", nbdError: "NBD_REP_ERR_PLATFORM", nbdErrno: NBDOptionError.platform.rawValue),
        Row(error: NBDError(.optionRefused, optionError: .shutdown), status: 503, code: "service_unavailable", nbdError: "NBD_REP_ERR_SHUTDOWN",
            nbdErrno: NBDOptionError.shutdown.rawValue, headers: ["Retry-After": "1"]),
        Row(error: NBDError(.optionRefused, optionError: .tlsRequired), status: 502, code: "backend_error", nbdError: "NBD_REP_ERR_TLS_REQD", nbdErrno: NBDOptionError.tlsRequired.rawValue),
        Row(error: NBDError(.optionRefused, optionError: .blockSizeRequired), status: 502, code: "backend_error", nbdError: "NBD_REP_ERR_BLOCK_SIZE_REQD",
            nbdErrno: NBDOptionError.blockSizeRequired.rawValue),
        Row(error: NBDError(.optionRefused, optionError: .extendedHeaderRequired), status: 502, code: "backend_error", nbdError: "NBD_REP_ERR_EXT_HEADER_REQD",
            nbdErrno: NBDOptionError.extendedHeaderRequired.rawValue),
        // Failures with no NBD error value.
        Row(error: NBDError(.unknownExport), status: 404, code: "unknown_export", nbdError: "NBD_REP_ERR_UNKNOWN", nbdErrno: 2_147_483_654),
        Row(error: NBDError(.listingUnsupported), status: 501, code: "not_implemented"),
        Row(error: NBDError(.timeout), status: 504, code: "gateway_timeout"),
        Row(error: NBDError(.protocolViolation), status: 502, code: "bad_gateway"),
        Row(error: NBDError(.connectionFailed), status: 502, code: "backend_unreachable"),
        Row(error: NBDError(.connectionLost), status: 502, code: "backend_unreachable"),
        Row(error: NBDError(.disconnected), status: 502, code: "backend_unreachable"),
        Row(error: NBDError(.tlsFailure), status: 502, code: "backend_unreachable"),
        Row(error: NBDError(.tlsRequired), status: 502, code: "backend_unreachable"),
        Row(error: NBDError(.unsupportedServer), status: 502, code: "backend_unreachable"),
        Row(error: NBDError(.readOnly), status: 403, code: "read_only", nbdError: "EPERM", nbdErrno: 1),
        Row(error: NBDError(.unimplemented), status: 501, code: "not_implemented", nbdError: "ENOTSUP", nbdErrno: 95),
        Row(error: NBDError(.outOfBounds), status: 416, code: "range_not_satisfiable", headers: ["Content-Range": "bytes */1048576"]),
        Row(error: NBDError(.invalidArgument), status: 400, code: "invalid_argument", nbdError: "EINVAL", nbdErrno: 22),
        Row(error: NBDError(.invalidURI), status: 500, code: "internal_error"),
        Row(error: NBDError(.serverError), status: 502, code: "backend_error"),
    ]

    @Test("every row of the contract's table", arguments: rows)
    func mapping(_ row: Row) {
        let mapped = GatewayError(row.error, export: "disk", exportSize: 1 << 20, writing: row.writing)
        #expect(mapped.status.code == row.status)
        #expect(mapped.code.name == row.code)
        #expect(mapped.nbdError == row.nbdError)
        #expect(mapped.nbdErrno == row.nbdErrno)
        #expect(mapped.export == "disk")
        for (name, value) in row.headers {
            #expect(mapped.headers.first { $0.name == name }?.value == value, "header \(name)")
        }
        if row.status == 503 { #expect(mapped.headers.contains { $0.name == "Retry-After" }) }
        if row.status == 416 { #expect(mapped.headers.contains { $0.name == "Content-Range" }) }
        #expect(mapped.message.isEmpty == false)
    }

    @Test("openapi.yaml's error table is NBDErrorTable, row for row")
    func contractTableIsTheCodeTable() throws {
        let contract = try String(contentsOf: Paths.openAPI, encoding: .utf8).components(separatedBy: "\n")
        let header = try #require(contract.firstIndex { $0.contains("| NBD error | HTTP | `code` |") })
        let rows = contract[(header + 2)...].prefix { $0.trimmingCharacters(in: .whitespaces).hasPrefix("|") }
            .map { $0.trimmingCharacters(in: .whitespaces) }
        #expect(Array(rows) == NBDErrorTable.markdownRows)
    }

    @Test("nbd_error and nbd_errno are null together, even for an option error the protocol does not name")
    func unnamedOptionError() {
        let error = NBDError(.optionRefused, optionError: NBDOptionError(rawValue: (1 << 31) + 99))
        let mapped = GatewayError(error, export: "disk")
        #expect(mapped.status == .badGateway)
        #expect(mapped.code == .backendError)
        #expect((mapped.nbdError == nil) == (mapped.nbdErrno == nil))
    }

    @Test("the export in the answer is the gateway's name for it, not the backend's NBD name")
    func exportNameIsTheGatewaysName() {
        // `--export disk=nbd+unix:///?socket=...` serves the backend's default export ("") as "disk";
        // NBDClient fills exportName with the NBD name.
        let error = NBDError(.serverError, "NBD_CMD_WRITE failed", errno: .EIO, exportName: "")
        #expect(GatewayError(error, export: "disk").export == "disk")
        #expect(GatewayError(NBDError(.timeout), export: "disk").export == "disk")
    }

    @Test("the gateway's own errors")
    func ownErrors() {
        #expect(GatewayError.badRequest("x") == GatewayError(400, "bad_request", ""))
        #expect(GatewayError.invalidRange("x") == GatewayError(400, "invalid_range", ""))
        #expect(GatewayError.notFound("/x") == GatewayError(404, "not_found", ""))
        let unknown = GatewayError.unknownExport("nope")
        #expect(unknown.status == 404 && unknown.code == "unknown_export" && unknown.export == "nope")
        #expect(unknown.nbdError == "NBD_REP_ERR_UNKNOWN" && unknown.nbdErrno == 2_147_483_654)
        let notAllowed = GatewayError.methodNotAllowed("DELETE", allow: ["GET", "HEAD", "PUT", "OPTIONS"])
        #expect(notAllowed.status == 405 && notAllowed.code == "method_not_allowed")
        #expect(notAllowed.headers.first { $0.name == "Allow" }?.value == "GET, HEAD, PUT, OPTIONS")
        let readOnly = GatewayError.readOnly("d")
        #expect(readOnly.status == 403 && readOnly.code == "read_only" && readOnly.nbdError == "EPERM" && readOnly.nbdErrno == 1)
        let unsatisfiable = GatewayError.unsatisfiable("x", size: 42, export: "d")
        #expect(unsatisfiable.status == 416 && unsatisfiable.code == "range_not_satisfiable")
        #expect(unsatisfiable.headers.first { $0.name == "Content-Range" }?.value == "bytes */42")
        #expect(GatewayError.unsatisfiable("x", size: 0, export: nil, code: "too_many_ranges").code == "too_many_ranges")
        #expect(GatewayError.payloadTooLarge("x", export: nil) == GatewayError(413, "payload_too_large", ""))
        #expect(GatewayError.headerTooLarge("x") == GatewayError(431, "request_header_too_large", ""))
        #expect(GatewayError.internalError("x") == GatewayError(500, "internal_error", ""))
        let unavailable = GatewayError.unavailable("x", code: "not_ready")
        #expect(unavailable.status == 503 && unavailable.code == "not_ready")
        #expect(unavailable.headers.first { $0.name == "Retry-After" }?.value == "1")
        let notImplemented = GatewayError.notImplemented("x", export: "d")
        #expect(notImplemented.status == 501 && notImplemented.nbdError == "ENOTSUP" && notImplemented.nbdErrno == 95)
    }

    @Test("body: the exact JSON of the Error schema, nulls included, strings escaped")
    func body() {
        let full = GatewayError(403, "read_only", "export \"d\" is read-only", nbdError: "EPERM", nbdErrno: 1, export: "d")
        #expect(full.body(requestID: "r-1") ==
            #"{"error":{"status":403,"code":"read_only","message":"export \"d\" is read-only","nbd_error":"EPERM","nbd_errno":1,"export":"d","request_id":"r-1"}}"#)
        let bare = GatewayError(404, "not_found", "no resource at /x")
        #expect(bare.body(requestID: "abc") ==
            #"{"error":{"status":404,"code":"not_found","message":"no resource at /x","nbd_error":null,"nbd_errno":null,"export":null,"request_id":"abc"}}"#)
        let policy = GatewayError(403, "forbidden", "tab\there\nnl \\ \u{01}é", nbdError: "NBD_REP_ERR_POLICY", nbdErrno: 2_147_483_650, export: "a/b")
        #expect(policy.body(requestID: "x") ==
            #"{"error":{"status":403,"code":"forbidden","message":"tab\there\nnl \\ \u0001é","nbd_error":"NBD_REP_ERR_POLICY","nbd_errno":2147483650,"export":"a/b","request_id":"x"}}"#)
        let response = full.response(requestID: "r-1")
        #expect(response.status == 403)
        #expect(response.header("Content-Type") == "application/json")
    }
}
