import Crypto
import Synchronization

/// An export's content generation as this gateway knows it, for strong ETags: advanced when a
/// write, zero or trim is admitted and again when it ends, and when the pool reconnects to
/// the backend after having no connection (the backend may have changed meanwhile). It also
/// counts the changes running: while one runs the content is in motion, so no `If-Match` on a
/// specific tag is admitted (a tag taken during it must not pass). Nothing outside this
/// gateway instance is seen (another replica's or another NBD client's writes).
public final class ContentVersion: Sendable {
    private let state = Mutex<(generation: UInt64, running: Int)>((0, 0))

    public init() {}

    public var current: UInt64 { state.withLock { $0.generation } }

    /// Changes admitted and not yet ended.
    public var running: Int { state.withLock { $0.running } }

    /// Moves to the next generation.
    public func advance() {
        state.withLock { $0.generation += 1 }
    }

    /// Admits a change: unconditionally (`expected` nil), or only from generation `expected`
    /// with no other change running (an `If-Match` that held). The check, the step and the
    /// count are one operation under the lock. The change ends when the returned value is
    /// ended or released (an upload whose client went away ends when its session goes).
    public func beginChange(from expected: UInt64? = nil) -> RunningChange? {
        let admitted = state.withLock { state -> Bool in
            if let expected, state.generation != expected || state.running > 0 { return false }
            state.generation += 1
            state.running += 1
            return true
        }
        return admitted ? RunningChange(self) : nil
    }

    fileprivate func endChange() {
        state.withLock { state in
            state.generation += 1
            state.running -= 1
        }
    }
}

/// One admitted write, zero or trim; ends once, at `end()` or when released.
public final class RunningChange: Sendable {
    private let version: ContentVersion
    private let ended = Atomic<Bool>(false)

    fileprivate init(_ version: ContentVersion) {
        self.version = version
    }

    /// Tags taken while it ran are stale from now on, whatever its outcome.
    public func end() {
        if !ended.exchange(true, ordering: .acquiringAndReleasing) { version.endChange() }
    }

    deinit { end() }
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

    /// The tag of the export whose `identity(_:)` is `identity`, at `generation`.
    public func tag(identity: String, generation: UInt64) -> String {
        "\"\(instance)-\(identity)-\(generation)\""
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
    public static func identity(_ export: String) -> String {
        SHA256.hash(data: Array(export.utf8)).prefix(4).map { String($0, radix: 16).leftPadded(to: 2) }.joined()
    }
}

private extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
