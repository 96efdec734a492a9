/// The one error type of the NBD library.
///
/// `code` says what kind of failure it is (stable, switchable); `errno` and `optionError`
/// carry the NBD error value behind it when the server sent one. `description` is short and
/// generic; `debugDescription` includes every detail.
public struct NBDError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    /// The kind of failure. Extensible: new codes may be added, so `switch` needs a default.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Sendable {
            case serverError = "server_error"
            case optionRefused = "option_refused"
            case unknownExport = "unknown_export"
            case listingRefused = "listing_refused"
            case listingUnsupported = "listing_unsupported"
            case tlsRequired = "tls_required"
            case tlsFailure = "tls_failure"
            case connectionFailed = "connection_failed"
            case connectionLost = "connection_lost"
            case timeout = "timeout"
            case disconnected = "disconnected"
            case readOnly = "read_only"
            case unimplemented = "unimplemented"
            case outOfBounds = "out_of_bounds"
            case invalidArgument = "invalid_argument"
            case protocolViolation = "protocol_violation"
            case unsupportedServer = "unsupported_server"
            case invalidURI = "invalid_uri"
        }

        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The server answered a command with an error (`errno` says which).
        public static let serverError = Code(.serverError)
        /// The server refused a handshake option (`optionError` says why).
        public static let optionRefused = Code(.optionRefused)
        /// The server does not know the export (`NBD_REP_ERR_UNKNOWN`).
        public static let unknownExport = Code(.unknownExport)
        /// The server refused to list its exports by policy (`NBD_REP_ERR_POLICY`).
        public static let listingRefused = Code(.listingRefused)
        /// The server cannot list exports (`NBD_REP_ERR_UNSUP`, or an oldstyle server).
        public static let listingUnsupported = Code(.listingUnsupported)
        /// The server requires TLS and the client was not configured for it.
        public static let tlsRequired = Code(.tlsRequired)
        /// TLS could not be set up (server refused STARTTLS, or the TLS handshake failed).
        public static let tlsFailure = Code(.tlsFailure)
        /// The socket could not be connected.
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection closed or failed while the request was outstanding.
        public static let connectionLost = Code(.connectionLost)
        /// No reply arrived in time.
        public static let timeout = Code(.timeout)
        /// The client was disconnected before or while the request was made.
        public static let disconnected = Code(.disconnected)
        /// A write-type command on a read-only export, refused before sending.
        public static let readOnly = Code(.readOnly)
        /// The export did not advertise the command or flag, refused before sending.
        public static let unimplemented = Code(.unimplemented)
        /// The request passes the end of the export, refused before sending.
        public static let outOfBounds = Code(.outOfBounds)
        /// The request is malformed (zero or oversized length, bad alignment), refused before sending.
        public static let invalidArgument = Code(.invalidArgument)
        /// The server broke the protocol (bad magic, unknown cookie, bad lengths); the connection is closed.
        public static let protocolViolation = Code(.protocolViolation)
        /// The server speaks a variant this client does not (oldstyle, no fixed newstyle).
        public static let unsupportedServer = Code(.unsupportedServer)
        /// The NBD URI could not be parsed.
        public static let invalidURI = Code(.invalidURI)

        /// A stable snake_case name, e.g. `server_error`.
        public var name: String { base.rawValue }
        public var description: String { base.rawValue }
    }

    public var code: Code
    /// Extra detail for humans.
    public var message: String
    /// The error value the server sent in a reply, if any.
    public var errno: NBDErrno?
    /// The option error the server sent during the handshake, if any.
    public var optionError: NBDOptionError?
    /// The export the error concerns, if known.
    public var exportName: String?

    public init(
        _ code: Code,
        _ message: String = "",
        errno: NBDErrno? = nil,
        optionError: NBDOptionError? = nil,
        exportName: String? = nil
    ) {
        self.code = code
        self.message = message
        self.errno = errno
        self.optionError = optionError
        self.exportName = exportName
    }

    /// The name of the NBD-level error behind this one (`EIO`, `NBD_REP_ERR_POLICY`), if any.
    public var nbdErrorName: String? { errno?.name ?? optionError?.name }
    /// The numeric NBD-level error behind this one, if any.
    public var nbdErrorNumber: UInt32? { errno?.rawValue ?? optionError?.rawValue }

    public var description: String {
        var text = "NBD error: \(code)"
        if let name = nbdErrorName { text += " (\(name))" }
        if !message.isEmpty { text += ": \(message)" }
        return text
    }

    public var debugDescription: String {
        var parts = ["code: \(code)"]
        if let errno { parts.append("errno: \(errno)") }
        if let optionError { parts.append("option error: \(optionError)") }
        if let exportName { parts.append("export: \"\(exportName)\"") }
        if !message.isEmpty { parts.append("message: \(message)") }
        return "NBDError(\(parts.joined(separator: ", ")))"
    }
}

extension NBDError {
    /// A protocol violation by the server.
    public static func violation(_ message: String) -> NBDError { NBDError(.protocolViolation, message) }
}
