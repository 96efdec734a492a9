#if canImport(Glibc)
import Glibc
#endif
import Metrics
import Synchronization

/// `--header-timeout` as a deadline, not libmicrohttpd's inactivity timeout (which every byte
/// a dripping client sends resets): a connection must have sent its whole request header by its
/// deadline, or its socket is shut down (libmicrohttpd then sees the end and closes it).
///
/// A connection's deadline is set when it is accepted, cleared when its headers are complete,
/// and set again when a request completes (the next header must come within the keep-alive
/// timeout plus the header timeout). Entries leave when libmicrohttpd closes the connection;
/// the sweep shuts sockets down under the same lock, so it never touches a closed one.
final class HeaderDeadlines: Sendable {
    private struct Entry {
        var deadline: ContinuousClock.Instant
        var socket: Int32
    }

    private let entries = Mutex<[Int: Entry]>([:])
    private let closed = Counter(label: "nbd_gateway_header_timeouts_total")

    /// A connection (its `MHD_Connection *` as an address) must finish a header by `deadline`.
    func expect(connection: Int, socket: Int32, by deadline: ContinuousClock.Instant) {
        guard socket >= 0 else { return }
        entries.withLock { $0[connection] = Entry(deadline: deadline, socket: socket) }
    }

    /// The connection's header is complete (or it closed).
    func clear(connection: Int) {
        entries.withLock { _ = $0.removeValue(forKey: connection) }
    }

    /// A request on the connection completed: the next header has until `deadline`.
    func renew(connection: Int, by deadline: ContinuousClock.Instant) {
        entries.withLock { entries in
            if entries[connection] == nil { return }  // Unknown: not ours to watch.
            entries[connection]?.deadline = deadline
        }
    }

    /// Shuts down every connection past its deadline; returns how many.
    @discardableResult
    func sweep(now: ContinuousClock.Instant) -> Int {
        let count = entries.withLock { entries -> Int in
            let overdue = entries.filter { $0.value.deadline <= now }
            for (connection, entry) in overdue {
                shutdown(entry.socket, Int32(SHUT_RDWR))
                entries.removeValue(forKey: connection)
            }
            return overdue.count
        }
        if count > 0 { closed.increment(by: count) }
        return count
    }

    var watched: Int { entries.withLock { $0.count } }
}
