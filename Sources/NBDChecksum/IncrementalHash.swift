import CSodium
import Crypto
import NIOCore

/// One running digest of an algorithm: BLAKE2b from libsodium (swift-crypto has none, and
/// OpenSSL 3.0 ignores a BLAKE2b digest size), SHA-2 and SHA-1 from swift-crypto.
final class IncrementalHash {
    private enum State {
        case blake2b(Blake2bState)
        case sha256(SHA256)
        case sha1(Insecure.SHA1)
    }

    private var state: State

    init(_ algorithm: ChecksumAlgorithm) {
        switch algorithm {
        case .blake2b: state = .blake2b(Blake2bState(outputLength: algorithm.digestSize))
        case .sha256: state = .sha256(SHA256())
        case .sha1: state = .sha1(Insecure.SHA1())
        }
    }

    func update(_ bytes: UnsafeRawBufferPointer) {
        switch state {
        case .blake2b(let blake): blake.update(bytes)
        case .sha256(var hash):
            hash.update(bufferPointer: bytes)
            state = .sha256(hash)
        case .sha1(var hash):
            hash.update(bufferPointer: bytes)
            state = .sha1(hash)
        }
    }

    func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { update($0) }
    }

    func finalize() -> [UInt8] {
        switch state {
        case .blake2b(let blake): blake.finalize()
        case .sha256(let hash): Array(hash.finalize())
        case .sha1(let hash): Array(hash.finalize())
        }
    }
}

/// libsodium's BLAKE2b state, kept in memory aligned as libsodium asks (64 bytes).
private final class Blake2bState {
    /// The state is a 64-byte-aligned C struct that Swift imports only as an opaque pointer.
    private let memory: UnsafeMutableRawPointer
    private var state: OpaquePointer { OpaquePointer(memory) }
    private let outputLength: Int

    init(outputLength: Int) {
        _ = Self.initialized
        memory = UnsafeMutableRawPointer.allocate(byteCount: crypto_generichash_statebytes(), alignment: 64)
        self.outputLength = outputLength
        crypto_generichash_init(state, nil, 0, outputLength)
    }

    deinit {
        memory.deallocate()
    }

    func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        crypto_generichash_update(state, base.assumingMemoryBound(to: UInt8.self), UInt64(bytes.count))
    }

    func finalize() -> [UInt8] {
        var digest = [UInt8](repeating: 0, count: outputLength)
        crypto_generichash_final(state, &digest, outputLength)
        return digest
    }

    /// sodium_init picks the fastest implementation; idempotent and thread-safe, run once.
    private static let initialized: Bool = sodium_init() >= 0
}
