import Logging
import NBDClient
import Synchronization

/// Which exports the gateway serves and where they live: `--export NAME=URI` entries, and every
/// export of each `--backend URI` server (found with NBD_OPT_LIST), each with its own pool.
public final class ExportCatalog: Sendable {
    private let fixed: [(name: String, uri: NBDURI)]
    private let backends: [NBDURI]
    private let settings: PoolSettings
    private let logger: Logger
    private let pools = Mutex<[String: ExportPool]>([:])

    public init(exports: [(name: String, uri: NBDURI)], backends: [NBDURI], settings: PoolSettings, logger: Logger) {
        self.fixed = exports
        self.backends = backends
        self.settings = settings
        self.logger = logger
    }

    /// The pool serving `name` if it was looked up before.
    public func cachedPool(for name: String) -> ExportPool? {
        pools.withLock { $0[name] }
    }

    /// The pool serving `name`; `.unknownExport` when no backend has it, or the first
    /// backend's failure when none could be asked.
    public func pool(for name: String) async throws(NBDError) -> ExportPool {
        if let pool = pools.withLock({ $0[name] }) { return pool }
        if let entry = fixed.first(where: { $0.name == name }) {
            return remember(ExportPool(name: name, uri: entry.uri, settings: settings, logger: logger))
        }
        // The first backend that negotiates the name serves it; a backend that cannot be
        // reached is reported only when no backend has the export.
        var failure: NBDError?
        for backend in backends {
            var uri = backend
            uri.exportName = name
            let candidate = ExportPool(name: name, uri: uri, settings: settings, logger: logger)
            do {
                _ = try await candidate.info()
                let pool = remember(candidate)
                if pool !== candidate { await candidate.close() }  // Another request won the race.
                return pool
            } catch let error as NBDError where error.code == .unknownExport {
                await candidate.close()
            } catch let error as NBDError {
                await candidate.close()
                failure = failure ?? error
            } catch {
                await candidate.close()
                failure = failure ?? NBDError(.connectionFailed, NBDClient.plainDescription(of: error), exportName: name)
            }
        }
        if let failure { throw failure }
        throw NBDError(.unknownExport, "no export named \"\(name)\"", exportName: name)
    }

    private func remember(_ pool: ExportPool) -> ExportPool {
        pools.withLock { pools in
            if let existing = pools[pool.name] { return existing }
            pools[pool.name] = pool
            return pool
        }
    }

    /// The union of the `--export` names and what each backend lists.
    public func list() async throws(NBDError) -> [NBDExportListing] {
        var exports: [NBDExportListing] = []
        for entry in fixed {
            let description = pools.withLock { $0[entry.name] }?.cachedInfo?.description ?? ""
            exports.append(NBDExportListing(name: entry.name, description: description))
        }
        var firstFailure: NBDError?
        var anyAnswered = !fixed.isEmpty
        for backend in backends {
            do {
                exports += try await NBDClient.list(backend, configuration: settings.client, logger: logger)
                anyAnswered = true
            } catch let error as NBDError {
                firstFailure = firstFailure ?? error
            } catch {
                firstFailure = firstFailure ?? NBDError(.connectionFailed, NBDClient.plainDescription(of: error))
            }
        }
        if !anyAnswered, let firstFailure { throw firstFailure }
        var seen = Set<String>()
        return exports.filter { seen.insert($0.name).inserted }
    }

    /// Whether each configured server accepts a connection now.
    public func readiness() async -> [(uri: NBDURI, ready: Bool)] {
        var results: [(uri: NBDURI, ready: Bool)] = []
        for entry in fixed {
            var ready = false
            if let pool = try? await pool(for: entry.name) { ready = await pool.probe() }
            results.append((entry.uri, ready))
        }
        for backend in backends {
            results.append((backend, await Self.answers(backend, configuration: settings.client, logger: logger)))
        }
        return results
    }

    /// Whether a server completes a handshake: a listing, or (where listing is refused) a GO.
    private static func answers(_ uri: NBDURI, configuration: NBDClientConfiguration, logger: Logger) async -> Bool {
        do {
            _ = try await NBDClient.list(uri, configuration: configuration, logger: logger)
            return true
        } catch let error as NBDError where error.code == .listingRefused || error.code == .listingUnsupported {
            do {
                let client = try await NBDClient.connect(to: uri, configuration: configuration, logger: logger)
                await client.disconnect()
                return true
            } catch let error as NBDError where error.optionError != nil {
                return true  // It answered the handshake (say, no such default export): it is up.
            } catch {
                return false
            }
        } catch let error as NBDError where error.optionError != nil {
            return true
        } catch {
            return false
        }
    }


    /// Closes idle connections in every pool.
    public func closeIdle() async {
        for pool in pools.withLock({ Array($0.values) }) { await pool.closeIdle() }
    }

    /// Closes the longest-unused connections beyond `cap`, across every pool; returns how many.
    public func closeIdle(beyond cap: IdleConnectionCap) async -> Int {
        let pools = pools.withLock { Array($0.values) }
        let unused = pools.map { (pool: $0, since: $0.unusedSince) }
        guard let cutoff = cap.cutoff(unusedSince: unused.flatMap(\.since), now: .now) else { return 0 }
        var closed = 0
        for (pool, since) in unused where since.contains(where: { $0 < cutoff }) {
            closed += await pool.closeUnused(usedBefore: cutoff)
        }
        return closed
    }

    /// Disconnects every pool.
    public func close() async {
        for pool in pools.withLock({ Array($0.values) }) { await pool.close() }
    }

    /// Closes every pool's connections at once, failing what is in flight (shutdown's grace is over).
    public func abort() async {
        for pool in pools.withLock({ Array($0.values) }) { await pool.abort() }
    }
}
