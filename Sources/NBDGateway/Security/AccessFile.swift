import Crypto

/// The tokens of `--auth-file`: one a line, `TOKEN ACCESS EXPORTS`, `#` starting a comment.
/// A token is kept only as its SHA-256 (`sha256:HEX` in the file keeps the file free of secrets).
public struct AccessFile: Sendable, Equatable {
    public enum Access: String, Sendable {
        case readOnly = "ro"
        case readWrite = "rw"
    }

    public enum Exports: Sendable, Equatable {
        /// `*`: every export, and the operator's routes (`/metrics`).
        case all
        case named(Set<String>)

        public func contains(_ name: String) -> Bool {
            switch self {
            case .all: true
            case .named(let names): names.contains(name)
            }
        }
    }

    public struct Entry: Sendable, Equatable {
        /// SHA-256 of the token.
        public var digest: [UInt8]
        public var access: Access
        public var exports: Exports
        /// Names the token in logs without revealing it.
        public var fingerprint: String { TokenDigest.fingerprint(digest) }
    }

    public var entries: [Entry]

    public init(entries: [Entry]) { self.entries = entries }

    /// Parses the file's text; the error names the line and what is wrong with it.
    public init(parsing text: String) throws(AccessFileError) {
        var entries: [Entry] = []
        var seen = Set<[UInt8]>()
        for (index, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            let line = rawLine.prefix { $0 != "#" }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\r" })
            if fields.isEmpty { continue }
            guard fields.count == 3 else {
                throw AccessFileError(line: lineNumber, "expected TOKEN ACCESS EXPORTS, found \(fields.count) field\(fields.count == 1 ? "" : "s")")
            }
            let digest: [UInt8]
            if fields[0].hasPrefix("sha256:") {
                guard let bytes = TokenDigest.hexBytes(fields[0].dropFirst("sha256:".count)), bytes.count == 32 else {
                    throw AccessFileError(line: lineNumber, "sha256: must be followed by 64 hex digits")
                }
                digest = bytes
            } else {
                guard fields[0].utf8.count >= 8 else { throw AccessFileError(line: lineNumber, "a token must be at least 8 characters") }
                digest = TokenDigest.sha256(fields[0])
            }
            guard let access = Access(rawValue: String(fields[1])) else {
                throw AccessFileError(line: lineNumber, "access must be ro or rw, not \"\(fields[1])\"")
            }
            let exports: Exports
            if fields[2] == "*" {
                exports = .all
            } else {
                let names = fields[2].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                guard !names.contains(where: { $0.isEmpty || $0 == "*" }) else {
                    throw AccessFileError(line: lineNumber, "exports must be * or a comma-separated list of names")
                }
                exports = .named(Set(names))
            }
            guard seen.insert(digest).inserted else { throw AccessFileError(line: lineNumber, "the token is listed twice") }
            entries.append(Entry(digest: digest, access: access, exports: exports))
        }
        self.entries = entries
    }
}

public struct AccessFileError: Error, Sendable, CustomStringConvertible {
    public let line: Int
    public let reason: String
    init(line: Int, _ reason: String) {
        self.line = line
        self.reason = reason
    }
    public var description: String { "line \(line): \(reason)" }
}

/// SHA-256 of tokens, compared in constant time.
enum TokenDigest {
    static func sha256<Bytes: StringProtocol>(_ token: Bytes) -> [UInt8] {
        Array(SHA256.hash(data: Array(token.utf8)))
    }

    static func hexBytes(_ text: Substring) -> [UInt8]? {
        let digits = Array(text.utf8)
        guard digits.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(digits.count / 2)
        var index = 0
        while index < digits.count {
            guard let high = nibble(digits[index]), let low = nibble(digits[index + 1]) else { return nil }
            bytes.append(high << 4 | low)
            index += 2
        }
        return bytes
    }

    private static func nibble(_ digit: UInt8) -> UInt8? {
        switch digit {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): digit - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): digit - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): digit - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// Equal digests, in time that does not depend on where they differ.
    static func equal(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }

    /// The first 4 bytes of the digest in hex: enough to tell tokens apart in logs.
    static func fingerprint(_ digest: [UInt8]) -> String {
        let hex = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for byte in digest.prefix(4) { text += [hex[Int(byte >> 4)], hex[Int(byte & 15)]] }
        return String(decoding: text, as: UTF8.self)
    }
}
