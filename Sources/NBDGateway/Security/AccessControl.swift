import Synchronization

/// What a token may do: the entry of the auth file it matched.
public struct AccessGrant: Sendable, Equatable {
    public var access: AccessFile.Access
    public var exports: AccessFile.Exports
    /// Names the token in logs (never the token itself).
    public var fingerprint: String

    public var mayWrite: Bool { access == .readWrite }
    /// `*` tokens are the operator's: they may read `/metrics`, which names every export.
    public var isOperator: Bool { exports == .all }
}

/// The tokens in force, replaced as a whole when the auth file is reloaded (SIGHUP); requests
/// in progress keep the grant they were given.
public final class AccessControl: Sendable {
    public static let realm = "nbd-gateway"
    private let file: Mutex<AccessFile>

    public init(_ file: AccessFile) {
        self.file = Mutex(file)
    }

    public func replace(with newFile: AccessFile) {
        file.withLock { $0 = newFile }
    }

    public var tokenCount: Int { file.withLock { $0.entries.count } }

    /// The grant of the request's token, or nil when it presents none or an unknown one.
    /// Every entry is compared (in constant time) whichever matches, so the time taken does
    /// not tell how much of a guess was right.
    public func authenticate(_ request: GatewayRequest) -> AccessGrant? {
        guard let token = Credentials.token(in: request) else { return nil }
        let digest = TokenDigest.sha256(token)
        let entries = file.withLock { $0.entries }
        var matched: AccessFile.Entry?
        for entry in entries where TokenDigest.equal(entry.digest, digest) {
            matched = entry
        }
        return matched.map { AccessGrant(access: $0.access, exports: $0.exports, fingerprint: $0.fingerprint) }
    }

    /// The fingerprint of the token a request presents, known or not (for the access log).
    public static func fingerprint(of request: GatewayRequest) -> String? {
        Credentials.token(in: request).map { TokenDigest.fingerprint(TokenDigest.sha256($0)) }
    }
}

/// Where a token travels: `Authorization: Bearer TOKEN`, or Basic with the token as the
/// password and any user name (qemu's http driver and `curl -u` can send only that).
enum Credentials {
    static func token(in request: GatewayRequest) -> String? {
        guard let authorization = request.header("Authorization") else { return nil }
        let parts = authorization.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2 else { return nil }
        let scheme = parts[0].lowercased()
        let value = parts[1].trimmingSpaces
        if scheme == "bearer" { return value.isEmpty ? nil : String(value) }
        guard scheme == "basic", let decoded = Base64.decode(value),
              let colon = decoded.firstIndex(of: UInt8(ascii: ":"))
        else { return nil }
        let password = decoded[decoded.index(after: colon)...]
        guard !password.isEmpty else { return nil }
        return String(decoding: password, as: UTF8.self)
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var text = self
        while text.last == " " || text.last == "\t" { text.removeLast() }
        while text.first == " " || text.first == "\t" { text.removeFirst() }
        return text
    }
}

/// Standard base64 (RFC 4648 §4): decoding with optional padding (nil for anything else).
enum Base64 {
    /// Standard base64 with padding.
    static func encode(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var output: [UInt8] = []
        output.reserveCapacity((bytes.count + 2) / 3 * 4)
        var index = 0
        while index < bytes.count {
            let count = min(3, bytes.count - index)
            var group = UInt32(bytes[index]) << 16
            if count > 1 { group |= UInt32(bytes[index + 1]) << 8 }
            if count > 2 { group |= UInt32(bytes[index + 2]) }
            for position in 0..<4 {
                output.append(position <= count ? alphabet[Int(group >> UInt32(18 - 6 * position) & 63)] : UInt8(ascii: "="))
            }
            index += 3
        }
        return String(decoding: output, as: UTF8.self)
    }

    static func decode(_ text: Substring) -> [UInt8]? {
        var output: [UInt8] = []
        output.reserveCapacity(text.utf8.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        var padding = 0
        for character in text.utf8 {
            if character == UInt8(ascii: "=") {
                padding += 1
                continue
            }
            guard padding == 0, let value = sextet(character) else { return nil }
            accumulator = accumulator << 6 | UInt32(value)
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        guard padding <= 2, (text.utf8.count % 4 == 0 || padding == 0) else { return nil }
        return output
    }

    private static func sextet(_ character: UInt8) -> UInt8? {
        switch character {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"): character - UInt8(ascii: "A")
        case UInt8(ascii: "a")...UInt8(ascii: "z"): character - UInt8(ascii: "a") + 26
        case UInt8(ascii: "0")...UInt8(ascii: "9"): character - UInt8(ascii: "0") + 52
        case UInt8(ascii: "+"): 62
        case UInt8(ascii: "/"): 63
        default: nil
        }
    }
}
