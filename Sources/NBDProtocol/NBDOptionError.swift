/// An error reply to a handshake option (`NBD_REP_ERR_*`, bit 31 set).
public struct NBDOptionError: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    private static let bit31: UInt32 = 1 << 31

    public static let unsupported = NBDOptionError(rawValue: bit31 + 1)
    public static let policy = NBDOptionError(rawValue: bit31 + 2)
    public static let invalid = NBDOptionError(rawValue: bit31 + 3)
    public static let platform = NBDOptionError(rawValue: bit31 + 4)
    public static let tlsRequired = NBDOptionError(rawValue: bit31 + 5)
    public static let unknown = NBDOptionError(rawValue: bit31 + 6)
    public static let shutdown = NBDOptionError(rawValue: bit31 + 7)
    public static let blockSizeRequired = NBDOptionError(rawValue: bit31 + 8)
    public static let tooBig = NBDOptionError(rawValue: bit31 + 9)
    public static let extendedHeaderRequired = NBDOptionError(rawValue: bit31 + 10)

    /// Whether a reply type is an error (bit 31 set).
    public static func isError(_ replyType: UInt32) -> Bool { replyType & bit31 != 0 }

    /// The specification's name (`NBD_REP_ERR_POLICY`), or `NBD_REP_ERR_UNKNOWN_VALUE(N)`.
    public var name: String {
        switch self {
        case .unsupported: "NBD_REP_ERR_UNSUP"
        case .policy: "NBD_REP_ERR_POLICY"
        case .invalid: "NBD_REP_ERR_INVALID"
        case .platform: "NBD_REP_ERR_PLATFORM"
        case .tlsRequired: "NBD_REP_ERR_TLS_REQD"
        case .unknown: "NBD_REP_ERR_UNKNOWN"
        case .shutdown: "NBD_REP_ERR_SHUTDOWN"
        case .blockSizeRequired: "NBD_REP_ERR_BLOCK_SIZE_REQD"
        case .tooBig: "NBD_REP_ERR_TOO_BIG"
        case .extendedHeaderRequired: "NBD_REP_ERR_EXT_HEADER_REQD"
        default: "NBD_REP_ERR_UNKNOWN_VALUE(\(rawValue))"
        }
    }

    public var explanation: String {
        switch self {
        case .unsupported: "option not supported by the server"
        case .policy: "refused by server policy"
        case .invalid: "option is invalid"
        case .platform: "not supported on the server's platform"
        case .tlsRequired: "server requires TLS"
        case .unknown: "export not known to the server"
        case .shutdown: "server is shutting down"
        case .blockSizeRequired: "server requires block size negotiation"
        case .tooBig: "request or reply too big"
        case .extendedHeaderRequired: "server requires extended headers"
        default: "unrecognised option error"
        }
    }

    public var description: String { "\(name) (\(rawValue)): \(explanation)" }
}
