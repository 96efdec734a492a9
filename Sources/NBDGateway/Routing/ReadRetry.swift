import NBDClient

/// Reads again after a transient failure: an EIO reply, a lost connection, a reply that did
/// not come in time. The next attempt starts where the last one stopped (the caller's
/// `progress`), on whichever pooled connection is usable (a lost one is replaced). Attempts
/// count failures without progress in between, so a long read survives scattered errors; the
/// waits between them grow from 50 ms. Writes are never retried: a failed write is reported.
struct ReadRetry: Sendable {
    /// Attempts after the first failure (0: none).
    let attempts: Int

    static func isTransient(_ error: NBDError) -> Bool {
        if error.errno == .EIO { return true }
        return [.connectionLost, .connectionFailed, .disconnected, .timeout].contains(error.code)
    }

    func run<T>(progress: () -> UInt64, _ body: () async throws -> T) async throws -> T {
        var failures = 0
        var lastProgress = progress()
        while true {
            do {
                return try await body()
            } catch let error as NBDError where Self.isTransient(error) {
                if progress() != lastProgress {
                    failures = 0
                    lastProgress = progress()
                }
                failures += 1
                guard failures <= attempts else { throw error }
                try await Task.sleep(for: .milliseconds(50 << min(failures - 1, 5)))
            }
        }
    }
}
