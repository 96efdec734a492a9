import NBDProtocol

/// Reads again after a transient failure: an EIO reply, a lost connection, a reply that did
/// not come in time. The next attempt starts where the last one stopped (the caller's
/// `progress`), so a read is never repeated from its start. Attempts count failures without
/// progress in between, so a long read survives scattered errors; the waits between them
/// grow from 50 ms to 1.6 s. Writes are never retried: a failed write is reported.
public struct NBDReadRetry: Sendable {
    /// Attempts after the first failure (0: none).
    public var attempts: Int

    public init(attempts: Int) {
        self.attempts = max(0, attempts)
    }

    /// No retry: the first failure is thrown.
    public static let none = NBDReadRetry(attempts: 0)

    /// Worth another attempt: an EIO reply, or a connection that failed, was lost or did not
    /// answer in time (the library closes a connection whose reply is late).
    public static func isTransient(_ error: NBDError) -> Bool {
        error.errno == .EIO || needsNewConnection(error)
    }

    /// Failures after which the connection is gone: another attempt needs a new one.
    public static func needsNewConnection(_ error: NBDError) -> Bool {
        [.connectionLost, .connectionFailed, .disconnected, .timeout].contains(error.code)
    }

    /// Runs `body` until it succeeds, the error is not `retryable`, or `attempts` failures
    /// came without `progress` moving in between.
    public func run<T>(
        progress: () -> UInt64, retryable: (NBDError) -> Bool = NBDReadRetry.isTransient,
        _ body: () async throws -> T
    ) async throws -> T {
        var failures = 0
        var lastProgress = progress()
        while true {
            do {
                return try await body()
            } catch let error as NBDError where retryable(error) {
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
