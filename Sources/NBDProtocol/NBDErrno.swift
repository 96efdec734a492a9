/// An error value carried in the error field of an NBD reply (simple or structured).
///
/// The protocol defines eight values; anything else is kept as-is so that it can be reported,
/// and is treated as `EINVAL` when the caller needs a protocol meaning.
public struct NBDErrno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt32

    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let EPERM = NBDErrno(rawValue: 1)
    public static let EIO = NBDErrno(rawValue: 5)
    public static let ENOMEM = NBDErrno(rawValue: 12)
    public static let EINVAL = NBDErrno(rawValue: 22)
    public static let ENOSPC = NBDErrno(rawValue: 28)
    public static let EOVERFLOW = NBDErrno(rawValue: 75)
    public static let ENOTSUP = NBDErrno(rawValue: 95)
    public static let ESHUTDOWN = NBDErrno(rawValue: 108)

    /// Every value the protocol names.
    public static let known: [NBDErrno] = [.EPERM, .EIO, .ENOMEM, .EINVAL, .ENOSPC, .EOVERFLOW, .ENOTSUP, .ESHUTDOWN]

    /// Whether the protocol names this value.
    public var isKnown: Bool { Self.known.contains(self) }

    /// The protocol name (`EIO`), or `unknown(N)` for values the protocol does not define.
    public var name: String {
        switch self {
        case .EPERM: "EPERM"
        case .EIO: "EIO"
        case .ENOMEM: "ENOMEM"
        case .EINVAL: "EINVAL"
        case .ENOSPC: "ENOSPC"
        case .EOVERFLOW: "EOVERFLOW"
        case .ENOTSUP: "ENOTSUP"
        case .ESHUTDOWN: "ESHUTDOWN"
        default: "unknown(\(rawValue))"
        }
    }

    /// A human-readable explanation, as `strerror` would give.
    public var explanation: String {
        switch self {
        case .EPERM: "operation not permitted"
        case .EIO: "input/output error"
        case .ENOMEM: "cannot allocate memory"
        case .EINVAL: "invalid argument"
        case .ENOSPC: "no space left on device"
        case .EOVERFLOW: "value too large"
        case .ENOTSUP: "operation not supported"
        case .ESHUTDOWN: "server is shutting down"
        default: "unknown error value \(rawValue) (treated as EINVAL)"
        }
    }

    public var description: String { "\(name) (\(rawValue)): \(explanation)" }
}
