import Crypto

/// RFC 9530 `Content-Digest` on a PUT: the digest the client sent, checked against the body
/// as it streams in. sha-256 and sha-512 (RFC 9530's active algorithms); others are ignored,
/// as the RFC allows.
public struct ContentDigest: Sendable, Equatable {
    public enum Algorithm: String, Sendable, CaseIterable {
        case sha256 = "sha-256"
        case sha512 = "sha-512"

        var digestSize: Int { self == .sha256 ? 32 : 64 }
    }

    public let algorithm: Algorithm
    public let digest: [UInt8]

    public init(algorithm: Algorithm, digest: [UInt8]) {
        self.algorithm = algorithm
        self.digest = digest
    }

    /// The header's strongest digest we compute (sha-512 over sha-256); nil when it names
    /// none; nil and `malformed` when it is not an RFC 8941 dictionary of byte sequences.
    public static func parse(_ header: String) -> (digest: ContentDigest?, malformed: Bool) {
        var found: [Algorithm: [UInt8]] = [:]
        for member in header.split(separator: ",", omittingEmptySubsequences: false) {
            let trimmed = member.drop { $0 == " " || $0 == "\t" }
            // Parameters (";...") carry nothing we use.
            let item = trimmed.prefix { $0 != ";" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
            let text = String(item)
            guard let equals = text.firstIndex(of: "=") else { return (nil, true) }
            let key = text[..<equals]
            let value = text[text.index(after: equals)...]
            // RFC 8941 keys: lcalpha or "*" first, then lcalpha, DIGIT, "_", "-", ".", "*" (ASCII).
            guard let first = key.utf8.first, (97...122).contains(first) || first == 42,
                  key.utf8.allSatisfy({ (97...122).contains($0) || (48...57).contains($0) || [95, 45, 46, 42].contains($0) }),
                  value.count >= 2, value.first == ":", value.last == ":",
                  let bytes = Base64.decode(value.dropFirst().dropLast()) else {
                return (nil, true)
            }
            if let algorithm = Algorithm(rawValue: String(key)) {
                // A digest of the wrong length can never match: refused before the body.
                guard bytes.count == algorithm.digestSize else { return (nil, true) }
                found[algorithm] = bytes
            }
        }
        for algorithm in [Algorithm.sha512, .sha256] {
            if let bytes = found[algorithm] { return (ContentDigest(algorithm: algorithm, digest: bytes), false) }
        }
        return (nil, false)
    }

    /// The header form, `sha-256=:BASE64:`.
    public var headerValue: String {
        "\(algorithm.rawValue)=:\(Base64.encode(digest)):"
    }
}

/// A body digest being computed as the bytes arrive.
struct RunningDigest: Sendable {
    private enum State: Sendable {
        case sha256(SHA256)
        case sha512(SHA512)
    }

    private var state: State
    let algorithm: ContentDigest.Algorithm

    init(_ algorithm: ContentDigest.Algorithm) {
        self.algorithm = algorithm
        switch algorithm {
        case .sha256: state = .sha256(SHA256())
        case .sha512: state = .sha512(SHA512())
        }
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        switch state {
        case .sha256(var hash):
            hash.update(bufferPointer: bytes)
            state = .sha256(hash)
        case .sha512(var hash):
            hash.update(bufferPointer: bytes)
            state = .sha512(hash)
        }
    }

    func finalize() -> ContentDigest {
        switch state {
        case .sha256(let hash): ContentDigest(algorithm: algorithm, digest: Array(hash.finalize()))
        case .sha512(let hash): ContentDigest(algorithm: algorithm, digest: Array(hash.finalize()))
        }
    }
}
