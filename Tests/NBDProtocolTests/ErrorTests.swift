import NBDProtocol
import Testing

@Suite("NBDErrno, NBDOptionError and NBDError")
struct ErrorTests {
    // MARK: - NBDErrno

    @Test(arguments: [
        (NBDErrno.EPERM, UInt32(1), "EPERM", "operation not permitted"),
        (.EIO, 5, "EIO", "input/output error"),
        (.ENOMEM, 12, "ENOMEM", "cannot allocate memory"),
        (.EINVAL, 22, "EINVAL", "invalid argument"),
        (.ENOSPC, 28, "ENOSPC", "no space left on device"),
        (.EOVERFLOW, 75, "EOVERFLOW", "value too large"),
        (.ENOTSUP, 95, "ENOTSUP", "operation not supported"),
        (.ESHUTDOWN, 108, "ESHUTDOWN", "server is shutting down"),
    ] as [(NBDErrno, UInt32, String, String)])
    func knownErrno(errno: NBDErrno, value: UInt32, name: String, explanation: String) {
        #expect(errno.rawValue == value)
        #expect(NBDErrno(rawValue: value) == errno)
        #expect(errno.name == name)
        #expect(errno.explanation == explanation)
        #expect(errno.description == "\(name) (\(value)): \(explanation)")
        #expect(errno.isKnown)
        #expect(NBDErrno.known.contains(errno))
    }

    @Test func knownErrnoList() {
        #expect(NBDErrno.known.map(\.rawValue) == [1, 5, 12, 22, 28, 75, 95, 108])
    }

    @Test(arguments: [0, 2, 4, 13, 42, 107, 109, 0xFFFF_FFFF] as [UInt32])
    func unknownErrno(value: UInt32) {
        let errno = NBDErrno(rawValue: value)
        #expect(!errno.isKnown)
        #expect(errno.name == "unknown(\(value))")
        #expect(errno.explanation == "unknown error value \(value) (treated as EINVAL)")
        #expect(errno.description == "unknown(\(value)) (\(value)): unknown error value \(value) (treated as EINVAL)")
    }

    // MARK: - NBDOptionError

    @Test(arguments: [
        (NBDOptionError.unsupported, UInt32(0x8000_0001), "NBD_REP_ERR_UNSUP", "option not supported by the server"),
        (.policy, 0x8000_0002, "NBD_REP_ERR_POLICY", "refused by server policy"),
        (.invalid, 0x8000_0003, "NBD_REP_ERR_INVALID", "option is invalid"),
        (.platform, 0x8000_0004, "NBD_REP_ERR_PLATFORM", "not supported on the server's platform"),
        (.tlsRequired, 0x8000_0005, "NBD_REP_ERR_TLS_REQD", "server requires TLS"),
        (.unknown, 0x8000_0006, "NBD_REP_ERR_UNKNOWN", "export not known to the server"),
        (.shutdown, 0x8000_0007, "NBD_REP_ERR_SHUTDOWN", "server is shutting down"),
        (.blockSizeRequired, 0x8000_0008, "NBD_REP_ERR_BLOCK_SIZE_REQD", "server requires block size negotiation"),
        (.tooBig, 0x8000_0009, "NBD_REP_ERR_TOO_BIG", "request or reply too big"),
        (.extendedHeaderRequired, 0x8000_000A, "NBD_REP_ERR_EXT_HEADER_REQD", "server requires extended headers"),
    ] as [(NBDOptionError, UInt32, String, String)])
    func knownOptionError(error: NBDOptionError, value: UInt32, name: String, explanation: String) {
        #expect(error.rawValue == value)
        #expect(NBDOptionError(rawValue: value) == error)
        #expect(error.name == name)
        #expect(error.explanation == explanation)
        #expect(error.description == "\(name) (\(value)): \(explanation)")
        #expect(NBDOptionError.isError(value))
    }

    @Test(arguments: [0x8000_0000, 0x8000_000B, 0x8000_00FF, 0xFFFF_FFFF] as [UInt32])
    func unknownOptionError(value: UInt32) {
        let error = NBDOptionError(rawValue: value)
        #expect(error.name == "NBD_REP_ERR_UNKNOWN_VALUE(\(value))")
        #expect(error.explanation == "unrecognised option error")
        #expect(error.description == "NBD_REP_ERR_UNKNOWN_VALUE(\(value)) (\(value)): unrecognised option error")
        #expect(NBDOptionError.isError(value))
    }

    @Test func replyTypesWithoutBit31AreNotErrors() {
        for value: UInt32 in [0, 1, 2, 3, 4, 0x7FFF_FFFF] {
            #expect(!NBDOptionError.isError(value))
        }
    }

    // MARK: - NBDError

    @Test(arguments: [
        (NBDError.Code.serverError, "server_error"),
        (.optionRefused, "option_refused"),
        (.unknownExport, "unknown_export"),
        (.listingRefused, "listing_refused"),
        (.listingUnsupported, "listing_unsupported"),
        (.tlsRequired, "tls_required"),
        (.tlsFailure, "tls_failure"),
        (.connectionFailed, "connection_failed"),
        (.connectionLost, "connection_lost"),
        (.timeout, "timeout"),
        (.disconnected, "disconnected"),
        (.readOnly, "read_only"),
        (.unimplemented, "unimplemented"),
        (.outOfBounds, "out_of_bounds"),
        (.invalidArgument, "invalid_argument"),
        (.protocolViolation, "protocol_violation"),
        (.unsupportedServer, "unsupported_server"),
        (.invalidURI, "invalid_uri"),
    ] as [(NBDError.Code, String)])
    func codeNames(code: NBDError.Code, name: String) {
        #expect(code.name == name)
        #expect(code.description == name)
        #expect(NBDError(code).description == "NBD error: \(name)")
        #expect(NBDError(code).debugDescription == "NBDError(code: \(name))")
    }

    @Test func codesAreDistinct() {
        let codes: [NBDError.Code] = [
            .serverError, .optionRefused, .unknownExport, .listingRefused, .listingUnsupported, .tlsRequired,
            .tlsFailure, .connectionFailed, .connectionLost, .timeout, .disconnected, .readOnly, .unimplemented,
            .outOfBounds, .invalidArgument, .protocolViolation, .unsupportedServer, .invalidURI,
        ]
        #expect(Set(codes).count == codes.count)
    }

    @Test func serverErrorStrings() {
        let error = NBDError(.serverError, "disk on fire", errno: .EIO, exportName: "disk")
        #expect(error.description == "NBD error: server_error (EIO): disk on fire")
        #expect(error.debugDescription == "NBDError(code: server_error, errno: EIO (5): input/output error, export: \"disk\", message: disk on fire)")
        #expect(error.nbdErrorName == "EIO")
        #expect(error.nbdErrorNumber == 5)
    }

    @Test func optionErrorStrings() {
        let error = NBDError(.listingRefused, "NBD_OPT_LIST refused", optionError: .policy)
        #expect(error.description == "NBD error: listing_refused (NBD_REP_ERR_POLICY): NBD_OPT_LIST refused")
        #expect(error.debugDescription == "NBDError(code: listing_refused, option error: NBD_REP_ERR_POLICY (2147483650): refused by server policy, message: NBD_OPT_LIST refused)")
        #expect(error.nbdErrorName == "NBD_REP_ERR_POLICY")
        #expect(error.nbdErrorNumber == 0x8000_0002)
    }

    @Test func everyFieldInDebugDescription() {
        let error = NBDError(.optionRefused, "both", errno: .ENOSPC, optionError: .tooBig, exportName: "")
        #expect(error.description == "NBD error: option_refused (ENOSPC): both")
        #expect(error.debugDescription == "NBDError(code: option_refused, errno: ENOSPC (28): no space left on device, option error: NBD_REP_ERR_TOO_BIG (2147483657): request or reply too big, export: \"\", message: both)")
        #expect(error.nbdErrorNumber == 28)
    }

    @Test func minimalError() {
        let error = NBDError(.timeout)
        #expect(error.message == "")
        #expect(error.errno == nil && error.optionError == nil && error.exportName == nil)
        #expect(error.nbdErrorName == nil && error.nbdErrorNumber == nil)
        #expect(error.description == "NBD error: timeout")
        #expect(error.debugDescription == "NBDError(code: timeout)")
    }

    @Test func unknownErrnoInAnError() {
        let error = NBDError(.serverError, errno: NBDErrno(rawValue: 42))
        #expect(error.description == "NBD error: server_error (unknown(42))")
        #expect(error.debugDescription == "NBDError(code: server_error, errno: unknown(42) (42): unknown error value 42 (treated as EINVAL))")
    }

    @Test func violationHelper() {
        let error = NBDError.violation("bad magic")
        #expect(error.code == .protocolViolation)
        #expect(error.description == "NBD error: protocol_violation: bad magic")
    }

    // MARK: - Wire names

    @Test func optionAndCommandNames() {
        #expect(NBDOption.go.description == "NBD_OPT_GO")
        #expect(NBDOption(rawValue: 8).description == "NBD_OPT_STRUCTURED_REPLY")
        #expect(NBDOption(rawValue: 10) == .setMetaContext)
        #expect(NBDOption(rawValue: 42).description == "NBD_OPT_42")
        #expect(NBDCommand.read.description == "NBD_CMD_READ")
        #expect(NBDCommand(rawValue: 2).description == "NBD_CMD_DISC")
        #expect(NBDCommand(rawValue: 7) == .blockStatus)
        #expect(NBDCommand(rawValue: 99).description == "NBD_CMD_99")
    }
}
