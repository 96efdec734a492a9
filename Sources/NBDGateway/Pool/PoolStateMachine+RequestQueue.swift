extension PoolStateMachine {
    /// Leases parked until the connection being opened is up, in the order they came.
    ///
    /// A plain array: it holds at most the requests that arrive during one connect, and
    /// cancellation removes from the middle.
    struct RequestQueue: Sendable {
        /// One parked lease.
        struct Parked: Sendable, Equatable {
            /// The lease.
            let id: LeaseID
            /// What it counts for on the connection it gets.
            let load: Int
        }

        /// Oldest first.
        private(set) var leases: [Parked] = []

        var count: Int { leases.count }
        var isEmpty: Bool { leases.isEmpty }

        mutating func append(_ id: LeaseID, load: Int) {
            leases.append(Parked(id: id, load: load))
        }

        /// Removes lease `id`; whether it was parked.
        @discardableResult
        mutating func remove(_ id: LeaseID) -> Bool {
            guard let index = leases.firstIndex(where: { $0.id == id }) else { return false }
            leases.remove(at: index)
            return true
        }

        /// Empties the queue and returns the lease ids, oldest first.
        mutating func removeAll() -> [LeaseID] {
            defer { leases.removeAll() }
            return leases.map(\.id)
        }
    }
}
