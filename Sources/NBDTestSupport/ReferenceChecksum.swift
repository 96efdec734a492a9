import Foundation

/// ovirt-imageio's block checksum in a few lines of Python's hashlib: an implementation
/// independent of ours, for files.
public enum ReferenceChecksum {
    static let script = """
    import hashlib, sys
    path, algorithm, block_size, offset, length = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    def new(data=b""):
        return hashlib.blake2b(data, digest_size=32) if algorithm == "blake2b" else hashlib.new(algorithm, data)
    outer = new()
    with open(path, "rb") as f:
        f.seek(offset)
        while length > 0:
            block = f.read(min(block_size, length))
            outer.update(new(block).digest())
            length -= len(block)
    print(outer.hexdigest())
    """

    /// The checksum of `length` bytes of `file` from `offset`.
    public static func of(_ file: URL, _ algorithm: String, blockSize: Int, offset: UInt64, length: UInt64) async throws -> String {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("blkhash.py")
        try script.write(to: path, atomically: true, encoding: .utf8)
        let result = try await Tools.run("python3", [path.path, file.path, algorithm, String(blockSize), String(offset), String(length)])
        return String(decoding: result.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
