extension PoolStateMachine {
    /// The pool's connections, oldest first, with the load each carries.
    struct ConnectionGroup: Sendable {
        /// One open connection.
        struct Entry: Sendable {
            /// The pool's name for it (for `connectionLost`).
            let id: Int
            /// What the executor uses.
            let connection: Connection
            /// Load of the leases using it now.
            var load = 0
            /// When a lease last took or returned it.
            var lastUsed: Instant
            /// No new leases (the server said ESHUTDOWN); closed once unused.
            var retired = false
            /// Broken: no new leases; dropped once unused.
            var lost = false
        }

        /// Oldest first.
        private(set) var entries: [Entry] = []
        /// A connection is being opened (never more than one at a time).
        var opening = false
        /// What the last negotiated connection said of CAN_MULTI_CONN (before any: no).
        var multiConn = false
        /// Where the least-loaded scan starts, turned one step each time it is used.
        private var rotation = 0
        private var nextID = 0

        /// Indices of the connections that take new leases, oldest first.
        var usableIndices: [Int] {
            entries.indices.filter { !entries[$0].retired && !entries[$0].lost }
        }

        /// The connections that take new leases.
        var usable: [(id: Int, connection: Connection)] {
            usableIndices.map { (entries[$0].id, entries[$0].connection) }
        }

        mutating func add(_ connection: Connection, now: Instant) {
            entries.append(Entry(id: nextID, connection: connection, lastUsed: now))
            nextID += 1
        }

        /// The least loaded of `candidates`, scanning from a rotating start so equals take turns.
        mutating func leastLoaded(among candidates: [Int]) -> Int? {
            guard !candidates.isEmpty else { return nil }
            rotation &+= 1
            var best = candidates[rotation % candidates.count]
            for index in candidates where entries[index].load < entries[best].load { best = index }
            return best
        }

        /// Counts `load` more on the connection at `index` and returns it.
        mutating func take(at index: Int, load: Int, now: Instant) -> Entry {
            entries[index].load += load
            entries[index].lastUsed = now
            return entries[index]
        }

        mutating func release(_ id: Int, load: Int, now: Instant) {
            guard let index = entries.firstIndex(where: { $0.id == id }) else { return }
            entries[index].load -= load
            entries[index].lastUsed = now
        }

        mutating func retireAll() {
            for index in entries.indices { entries[index].retired = true }
        }

        mutating func markLost(_ id: Int) {
            guard let index = entries.firstIndex(where: { $0.id == id }) else { return }
            entries[index].lost = true
        }

        /// Removes the unused connections that match and returns them.
        mutating func removeUnused(where matches: (Entry) -> Bool) -> [Connection] {
            let removed = entries.filter { $0.load == 0 && matches($0) }
            if removed.isEmpty { return [] }
            entries.removeAll { $0.load == 0 && matches($0) }
            return removed.map(\.connection)
        }

        /// Removes every connection and returns them.
        mutating func removeAll() -> [Connection] {
            defer { entries.removeAll() }
            return entries.map(\.connection)
        }
    }
}
