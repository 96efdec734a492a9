/// An NBD URI: `nbd://host[:port]/export`, `nbds://…` (TLS), `nbd+unix:///export?socket=PATH`,
/// `nbds+unix://…`. The export name is the path without its leading `/`, percent-decoded.
///
/// Query parameters understood (as libnbd does): `socket` (Unix transports),
/// `tls-certificates=DIR` (a directory holding `ca-cert.pem` and optionally
/// `client-cert.pem` / `client-key.pem`), `tls-verify-peer=false`.
public struct NBDURI: Hashable, Sendable, CustomStringConvertible {
    public enum Transport: Hashable, Sendable {
        case tcp(host: String, port: Int)
        case unix(path: String)
    }

    public var transport: Transport
    public var exportName: String
    public var tls: Bool
    /// Directory with `ca-cert.pem` (and optionally `client-cert.pem`, `client-key.pem`).
    public var tlsCertificates: String?
    /// Whether to check the server's certificate (default true).
    public var tlsVerifyPeer: Bool

    public init(transport: Transport, exportName: String = "", tls: Bool = false, tlsCertificates: String? = nil, tlsVerifyPeer: Bool = true) {
        self.transport = transport
        self.exportName = exportName
        self.tls = tls
        self.tlsCertificates = tlsCertificates
        self.tlsVerifyPeer = tlsVerifyPeer
    }

    /// Parses a URI string; throws `NBDError` with code `.invalidURI` when it is malformed.
    public init(parsing string: String) throws(NBDError) {
        func invalid(_ why: String) -> NBDError { NBDError(.invalidURI, "\(why): \(string)") }

        guard let colon = string.firstIndex(of: ":"), string[colon...].hasPrefix("://") else {
            throw invalid("missing scheme")
        }
        let scheme = string[..<colon].lowercased()
        var rest = string[string.index(colon, offsetBy: 3)...]

        let isUnix: Bool
        switch scheme {
        case "nbd": (tls, isUnix) = (false, false)
        case "nbds": (tls, isUnix) = (true, false)
        case "nbd+unix": (tls, isUnix) = (false, true)
        case "nbds+unix": (tls, isUnix) = (true, true)
        default: throw invalid("unsupported scheme \"\(scheme)\"")
        }

        if let hash = rest.firstIndex(of: "#") { rest = rest[..<hash] }
        var query: [String: String] = [:]
        if let questionMark = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: questionMark)...].split(separator: "&") where !pair.isEmpty {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                guard let key = Self.percentDecode(parts[0]) else { throw invalid("bad percent-encoding in query") }
                guard let value = Self.percentDecode(parts.count > 1 ? parts[1] : "") else { throw invalid("bad percent-encoding in query") }
                query[key] = value
            }
            rest = rest[..<questionMark]
        }

        let authority: Substring
        let path: Substring
        if let slash = rest.firstIndex(of: "/") {
            authority = rest[..<slash]
            path = rest[rest.index(after: slash)...]
        } else {
            authority = rest
            path = ""
        }
        guard let name = Self.percentDecode(path) else { throw invalid("bad percent-encoding in export name") }
        exportName = name
        tlsCertificates = query["tls-certificates"]
        tlsVerifyPeer = !["false", "0", "no"].contains(query["tls-verify-peer"]?.lowercased() ?? "")

        if isUnix {
            guard let socket = query["socket"], !socket.isEmpty else { throw invalid("missing socket= for a Unix transport") }
            guard authority.isEmpty else { throw invalid("a Unix transport takes no host") }
            transport = .unix(path: socket)
            return
        }
        guard !authority.isEmpty else { throw invalid("missing host") }
        var host: Substring
        var port = NBDWire.defaultPort
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw invalid("unterminated IPv6 address") }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":"), let number = Int(after.dropFirst()) else { throw invalid("bad port") }
                port = number
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            guard let number = Int(authority[authority.index(after: colon)...]) else { throw invalid("bad port") }
            port = number
        } else {
            host = authority
        }
        guard !host.isEmpty else { throw invalid("missing host") }
        // Brackets only around an IPv6 literal (found by fuzzing: "nbd://[[1]/" printed as a
        // different URI than it parsed from).
        guard !host.contains("[") && !host.contains("]"), !authority.hasPrefix("[") || host.contains(":") else {
            throw invalid("bad host \"\(host)\"")
        }
        guard (1...65535).contains(port) else { throw invalid("port out of range") }
        transport = .tcp(host: String(host), port: port)
    }

    public var description: String {
        let scheme: String
        var query: [String] = []
        var authority = ""
        switch transport {
        case .tcp(let host, let port):
            scheme = tls ? "nbds" : "nbd"
            authority = host.contains(":") ? "[\(host)]" : host
            if port != NBDWire.defaultPort { authority += ":\(port)" }
        case .unix(let path):
            scheme = tls ? "nbds+unix" : "nbd+unix"
            query.append("socket=\(Self.percentEncode(path))")
        }
        if let tlsCertificates { query.append("tls-certificates=\(Self.percentEncode(tlsCertificates))") }
        if !tlsVerifyPeer { query.append("tls-verify-peer=false") }
        let suffix = query.isEmpty ? "" : "?" + query.joined(separator: "&")
        return "\(scheme)://\(authority)/\(Self.percentEncode(exportName))\(suffix)"
    }

    /// Decodes `%XX` escapes; nil when an escape is malformed or the result is not UTF-8.
    public static func percentDecode(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            if byte == UInt8(ascii: "%") {
                guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
                bytes.append(high << 4 | low)
            } else {
                bytes.append(byte)
            }
        }
        return String(validating: bytes, as: UTF8.self)
    }

    /// Encodes every byte outside RFC 3986's unreserved set, plus `/` kept as is for paths.
    public static func percentEncode(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."),
                 UInt8(ascii: "_"), UInt8(ascii: "~"), UInt8(ascii: "/"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
