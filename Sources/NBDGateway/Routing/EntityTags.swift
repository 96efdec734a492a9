import Crypto
import Synchronization

/// An export's content generation as this gateway knows it, for strong ETags: advanced when a
/// write, zero or trim is admitted and again when it ends, and when the pool reconnects to
/// the backend after having no connection (the backend may have changed meanwhile). A tag seen
/// while a write was running is never current after it; nothing outside this gateway
/// instance is seen (another replica's or another NBD client's writes).
public final class ContentVersion: Sendable {
    private let generation = Atomic<UInt64>(0)

    public init() {}

    public var current: UInt64 { generation.load(ordering: .acquiring) }

    /// Moves to the next generation.
    public func advance() {
        generation.add(1, ordering: .acquiringAndReleasing)
    }

    /// Moves on only from `expected` (an `If-Match` that held): false when the content had
    /// moved on already. The check and the step are one atomic operation.
    public func advance(from expected: UInt64) -> Bool {
        generation.compareExchange(expected: expected, desired: expected + 1, ordering: .acquiringAndReleasing).exchanged
    }
}

/// Strong entity tags `"INSTANCE-EXPORT-GENERATION"`: a value drawn when the gateway starts
/// (tags from an earlier run or another replica never match), the export's identity, and its
/// content generation.
public struct EntityTags: Sendable {
    public let instance: String

    public init(instance: String? = nil) {
        var generator = SystemRandomNumberGenerator()
        self.instance = instance ?? String(generator.next(), radix: 16)
    }

    /// The tag of `export` at `generation`.
    public func tag(export: String, generation: UInt64) -> String {
        "\"\(instance)-\(Self.identity(export))-\(generation)\""
    }

    /// Whether an `If-Match` / `If-None-Match` list names `current` (RFC 9110 §13.1.1-2;
    /// `*` matches any current representation). `weak`: `W/"x"` matches `"x"` (If-None-Match;
    /// proxies that compress turn strong tags into weak ones).
    public static func list(_ header: String, contains current: String, weak: Bool = false) -> Bool {
        header.split(separator: ",").contains { item in
            var tag = String(item.drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
            if weak && tag.hasPrefix("W/") { tag.removeFirst(2) }
            return tag == "*" || tag == current
        }
    }

    /// 8 hex digits of the export name's SHA-256.
    static func identity(_ export: String) -> String {
        SHA256.hash(data: Array(export.utf8)).prefix(4).map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }
}

private extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
