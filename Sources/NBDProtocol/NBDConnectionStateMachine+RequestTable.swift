extension NBDConnectionStateMachine {
    /// The requests in flight by cookie, and what their replies have said so far.
    struct RequestTable: Sendable {
        private struct Entry: Sendable {
            var expectation: NBDReplyDecoder.Expectation
            /// The first error chunk's error: the request fails with it, later ones are ignored.
            var firstError: NBDError?
            var blockStatus: [UInt32: [NBDBlockDescriptor]] = [:]
            /// Structured READ chunks seen so far, to prove full, non-overlapping coverage.
            var covered: [Range<UInt64>] = []

            /// Adds a chunk's range, refusing any overlap (a server must not send them): with no
            /// overlap and every chunk inside the request (the decoder checks that), byte counts
            /// prove coverage.
            mutating func cover(_ range: Range<UInt64>) throws(NBDError) {
                guard !covered.contains(where: { $0.overlaps(range) }) else {
                    throw .violation("overlapping read chunks at offset \(range.lowerBound)")
                }
                if let last = covered.last, last.upperBound == range.lowerBound {
                    // Data streamed in pieces: extend the previous range.
                    covered[covered.count - 1] = last.lowerBound..<range.upperBound
                } else {
                    covered.append(range)
                }
            }
        }

        private var entries: [UInt64: Entry] = [:]

        var isEmpty: Bool { entries.isEmpty }

        var cookies: [UInt64] { entries.keys.sorted() }

        func expectation(_ cookie: UInt64) -> NBDReplyDecoder.Expectation? {
            entries[cookie]?.expectation
        }

        mutating func add(_ cookie: UInt64, _ expectation: NBDReplyDecoder.Expectation) {
            entries[cookie] = Entry(expectation: expectation)
        }

        /// Empties the table; answers the cookies that were in it, in order.
        mutating func removeAll() -> [UInt64] {
            let cookies = self.cookies
            entries.removeAll()
            return cookies
        }

        /// Records a decoded reply event; answers what the caller must do about it, if anything.
        /// A thrown error is a protocol violation: the connection must close.
        mutating func apply(_ event: NBDReplyDecoder.Event, structuredReplies: Bool) throws(NBDError) -> Action? {
            switch event {
            case .data(let cookie, let offset, let bytes):
                if structuredReplies { try cover(cookie, offset: offset, length: UInt64(bytes.readableBytes)) }
                return .deliverData(cookie: cookie, offset: offset, bytes: bytes)
            case .hole(let cookie, let offset, let length):
                if structuredReplies { try cover(cookie, offset: offset, length: UInt64(length)) }
                return .deliverZeroes(cookie: cookie, offset: offset, length: length)
            case .blockStatus(let cookie, let contextID, let descriptors):
                entries[cookie]?.blockStatus[contextID, default: []].append(contentsOf: descriptors)
                return nil
            case .error(let cookie, let errno, let message, let offset):
                recordError(cookie, errno: errno, message: message, offset: offset)
                return nil
            case .done(let cookie):
                return try complete(cookie, structuredReplies: structuredReplies)
            }
        }

        /// Records a structured READ chunk's range (in place: the table is not copied).
        private mutating func cover(_ cookie: UInt64, offset: UInt64, length: UInt64) throws(NBDError) {
            try entries[cookie]?.cover(offset..<(offset + length))
        }

        private mutating func recordError(_ cookie: UInt64, errno: NBDErrno, message: String, offset: UInt64?) {
            guard let entry = entries[cookie], entry.firstError == nil else { return }
            var text = message
            if let offset { text += text.isEmpty ? "at offset \(offset)" : " (at offset \(offset))" }
            if text.isEmpty { text = "\(entry.expectation.command) failed: \(errno.explanation)" }
            entries[cookie]?.firstError = NBDError(.serverError, text, errno: errno)
        }

        /// The reply to `cookie` is complete: answers how the request ends.
        private mutating func complete(_ cookie: UInt64, structuredReplies: Bool) throws(NBDError) -> Action? {
            guard let entry = entries[cookie] else { return nil }
            if let error = entry.firstError {
                entries[cookie] = nil
                return .failRequest(cookie: cookie, error)
            }
            if structuredReplies, entry.expectation.command == .read {
                let total = entry.covered.reduce(0) { $0 + UInt64($1.count) }
                guard total == UInt64(entry.expectation.length) else {
                    // Left in the table: the connection closes and fails it with this error.
                    throw .violation("read reply covered \(total) of \(entry.expectation.length) bytes")
                }
            }
            entries[cookie] = nil
            if entry.expectation.command == .blockStatus {
                return .succeedRequest(cookie: cookie, .blockStatus(entry.blockStatus))
            }
            return .succeedRequest(cookie: cookie, .done)
        }
    }
}
