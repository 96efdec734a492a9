import Foundation
import Logging
@testable import NBDGateway
import NBDClient
import NBDTestSupport
import NIOCore
import NIOPosix
import Synchronization
import Testing

/// The pool's executor against real servers, with leases held open by the test (not by a delay
/// filter) and time moved by hand: spreading, cancellation of a parked lease, idle closing at
/// the idle timeout, retiring on ESHUTDOWN.
@Suite("ExportPool: the state machine's executor against real servers", .timeLimit(.minutes(3)))
struct ExportPoolExecutorTests {
    /// A clock the test moves.
    final class ManualClock: PoolClock {
        private let start = ContinuousClock.now
        private let offset = Mutex(Duration.zero)
        var now: ContinuousClock.Instant { start + offset.withLock { $0 } }
        func advance(by duration: Duration) { offset.withLock { $0 += duration } }
    }

    static func pool(_ uri: String, perConnection: Int = 2, idle: Duration = .seconds(300), clock: any PoolClock = ContinuousClock(), connectTimeout: Int64 = 30) throws -> ExportPool {
        var logger = Logger(label: "test.pool")
        logger.logLevel = .critical
        var settings = PoolSettings(maximumConnections: 4, requestsPerConnection: perConnection, idleTimeout: idle)
        settings.client.connectTimeout = .seconds(connectTimeout)
        return ExportPool(name: "disk", uri: try NBDURI(parsing: uri), settings: settings, logger: logger, clock: clock)
    }

    static func connects(_ log: URL) throws -> Int {
        try String(contentsOf: log, encoding: .utf8).split(separator: "\n").filter { $0.contains(" Connect ") }.count
    }

    /// Runs `count` leases of `load` that each read a block, then hold their connection until
    /// the test lets go; `whileHeld` runs once all of them hold one.
    static func holding(_ pool: ExportPool, count: Int, load: Int = 1, whileHeld: () async throws -> Void) async throws {
        let (entered, enter) = AsyncStream.makeStream(of: Void.self)
        var releases: [AsyncStream<Void>.Continuation] = []
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<count {
                let (released, release) = AsyncStream.makeStream(of: Void.self)
                releases.append(release)
                group.addTask {
                    try await pool.withClient(load: load) { client in
                        _ = try await client.read(at: 0, length: 4096)
                        enter.yield()
                        for await _ in released { break }
                    }
                }
            }
            var inside = 0
            for await _ in entered {
                inside += 1
                if inside == count { break }
            }
            try await whileHeld()
            for release in releases { release.finish() }
            try await group.waitForAll()
        }
    }

    @Test("eight leases held at once, two per connection: four connections, each read served")
    func heldLeasesSpread() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("nbdkit.log")
        try await withServer({ try await Servers.nbdkit(["--filter=log", "memory", "size=4M", "logfile=\(log.path)"]) }) { server in
            let pool = try Self.pool(server.uri)
            try await Self.holding(pool, count: 8) {
                #expect(pool.openConnections == 4)
            }
            // Released: the next lease takes the oldest connection, no new one.
            _ = try await pool.withClient { try await $0.read(at: 0, length: 512) }
            #expect(pool.openConnections == 4)
            await pool.close()
            #expect(try Self.connects(log) == 4)
        }
    }

    @Test("eight leases held at once, 32 per connection allowed: one connection")
    func lightLoadStaysOnOne() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("nbdkit.log")
        try await withServer({ try await Servers.nbdkit(["--filter=log", "memory", "size=4M", "logfile=\(log.path)"]) }) { server in
            let pool = try Self.pool(server.uri, perConnection: 32)
            try await Self.holding(pool, count: 8) {
                #expect(pool.openConnections == 1)
            }
            await pool.close()
            #expect(try Self.connects(log) == 1)
        }
    }

    @Test("a server that refuses more connections: every lease is served on the one it took")
    func refusedConnectionsFallBack() async throws {
        // nbdkit's limit filter drops a second client at once; the reads are checked inside.
        try await withServer({ try await Servers.nbdkit(["--filter=limit", "memory", "size=4M", "limit=1"]) }) { server in
            let pool = try Self.pool(server.uri)
            try await Self.holding(pool, count: 8) {
                #expect(pool.openConnections == 1)
            }
            await pool.close()
        }
    }

    @Test("streaming leases count half a connection: three held streams use two connections")
    func heldStreams() async throws {
        try await withServer({ try await Servers.nbdkit(["memory", "size=4M"]) }) { server in
            let pool = try Self.pool(server.uri, perConnection: 32)
            try await Self.holding(pool, count: 3, load: pool.streamLoad) {
                #expect(pool.openConnections == 2)
            }
            await pool.close()
        }
    }

    @Test("a lease parked behind a connection being opened ends with CancellationError when its task is cancelled")
    func cancelledWait() async throws {
        // A server that accepts and never speaks: the first lease's connect hangs in the handshake.
        let accepted = Mutex<[any Channel]>([])
        let (connected, connect) = AsyncStream.makeStream(of: Void.self)
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                accepted.withLock { $0.append(channel) }
                connect.yield()
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = listener.localAddress?.port ?? 0
        let pool = try Self.pool("nbd://127.0.0.1:\(port)/disk")
        let opener = Task { try await pool.withClient { _ in 1 } }
        for await _ in connected { break }
        let parked = Task { try await pool.withClient { _ in 2 } }
        while pool.parkedLeases < 2 { await Task.yield() }  // The opener's lease and this one.
        parked.cancel()
        await #expect(throws: CancellationError.self) { try await parked.value }
        #expect(pool.parkedLeases == 1)
        // The server hangs up: the opener's connect fails, and its lease with it.
        for channel in accepted.withLock({ $0 }) { try? await channel.close() }
        await #expect(throws: NBDError.self) { try await opener.value }
        #expect(pool.parkedLeases == 0)
        await pool.close()
        try await listener.close()
    }

    @Test("a connection unused for exactly the idle timeout is closed by closeIdle; the next lease opens another")
    func idleClosingInVirtualTime() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("nbdkit.log")
        try await withServer({ try await Servers.nbdkit(["--filter=log", "memory", "size=4M", "logfile=\(log.path)"]) }) { server in
            let clock = ManualClock()
            let pool = try Self.pool(server.uri, idle: .seconds(60), clock: clock)
            _ = try await pool.withClient { try await $0.read(at: 0, length: 512) }
            clock.advance(by: .seconds(60) - .nanoseconds(1))
            await pool.closeIdle()
            #expect(pool.openConnections == 1)
            #expect(pool.liveInfo != nil)
            clock.advance(by: .nanoseconds(1))
            await pool.closeIdle()
            #expect(pool.openConnections == 0)
            #expect(pool.liveInfo == nil)
            #expect(pool.cachedInfo != nil)
            _ = try await pool.withClient { try await $0.read(at: 0, length: 512) }
            #expect(pool.openConnections == 1)
            await pool.close()
            #expect(try Self.connects(log) == 2)
        }
    }

    @Test("ESHUTDOWN from the server retires the connection: closed once unused, the next lease opens another")
    func retiresOnESHUTDOWN() async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let log = directory.appendingPathComponent("nbdkit.log")
        let filters = ["--filter=log", "--filter=error", "memory", "size=4M", "logfile=\(log.path)", "error=ESHUTDOWN", "error-pread-rate=1"]
        try await withServer({ try await Servers.nbdkit(filters) }) { server in
            let pool = try Self.pool(server.uri)
            await #expect(throws: NBDError.self) { try await pool.withClient { try await $0.read(at: 0, length: 512) } }
            #expect(pool.openConnections == 0)
            _ = try await pool.withClient { try await $0.flush() }
            #expect(pool.openConnections == 1)
            await pool.close()
            #expect(try Self.connects(log) == 2)
        }
    }
}
