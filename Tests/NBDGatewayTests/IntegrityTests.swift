import Foundation
import NBDTestSupport
import Synchronization
import Testing

/// 16 clients writing and reading overlapping ranges at once through the gateway's pooled
/// connections; afterwards the backend, read directly, is checked sector by sector against the
/// writes' times: where one write to a sector was acknowledged before every other write to it
/// began or after every other was acknowledged (the last write is unambiguous), the sector
/// holds exactly that write; where writes raced, it holds one of them whole. Reads are checked
/// the same way against the writes before and during them.
@Suite("Integrity: 16 clients, overlapping writes and reads, checked against the backend", .timeLimit(.minutes(3)))
struct IntegrityTests {
    static let sector = 512
    static let sectors = 2048  // 1 MiB
    static let clients = 16
    static let operationsPerClient = 40
    static let tailWrites = 24

    struct Backend: Sendable, CustomTestStringConvertible {
        var name: String
        var start: @Sendable (URL) async throws -> TestServer
        var testDescription: String { name }
    }

    static let backends: [Backend] = [
        Backend(name: "nbdkit memory (CAN_MULTI_CONN), 4 pooled connections") { _ in
            try await Servers.nbdkit(["memory", "size=\(sectors * sector)"])
        },
        Backend(name: "nbdkit memory without CAN_MULTI_CONN (one connection)") { _ in
            try await Servers.nbdkit(["--filter=multi-conn", "memory", "size=\(sectors * sector)", "multi-conn-mode=disable"])
        },
        Backend(name: "qemu-nbd on a raw file") { directory in
            let image = directory.appendingPathComponent("disk.img")
            try Data(count: sectors * sector).write(to: image)
            return try await Servers.qemuNBD(image: image.path)
        },
    ]

    /// 1-32 sectors at a random place in the 1 MiB disk: overlaps are frequent.
    static func randomSpan(_ random: inout SeededGenerator) -> Range<Int> {
        let count = Int(random.next() % 32) + 1
        let first = Int(random.next() % UInt64(sectors - count + 1))
        return first..<(first + count)
    }

    /// A write's sectors: each holds the write's id and the sector's number, 32 times over, so
    /// a sector tells which write put it there and whether it is whole.
    static func encode(id: UInt64, sectors range: Range<Int>) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(range.count * sector)
        for number in range {
            for _ in 0..<(sector / 16) {
                withUnsafeBytes(of: id.littleEndian) { bytes += $0 }
                withUnsafeBytes(of: UInt64(number).littleEndian) { bytes += $0 }
            }
        }
        return bytes
    }

    /// What a sector holds: 0 for zeroes, the id of the write that wrote it whole, nil if torn.
    static func decode(_ bytes: ArraySlice<UInt8>, sector number: Int) -> UInt64? {
        if bytes.allSatisfy({ $0 == 0 }) { return 0 }
        let id = bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * $1.offset) }
        return encode(id: id, sectors: number..<(number + 1))[...] == bytes ? id : nil
    }

    struct Write: Sendable {
        var id: UInt64
        var sectors: Range<Int>
        var sent: ContinuousClock.Instant
        var acknowledged: ContinuousClock.Instant
    }

    /// What the clients did, in the order their answers came.
    final class Log: Sendable {
        private let entries = Mutex<(writes: [Write], reads: [Read], failures: [String])>(([], [], []))
        func withLock<T>(_ body: (inout (writes: [Write], reads: [Read], failures: [String])) -> T) -> T {
            entries.withLock { body(&$0) }
        }
    }

    struct Read: Sendable {
        var sectors: Range<Int>
        var sent: ContinuousClock.Instant
        var answered: ContinuousClock.Instant
        var bytes: [UInt8]
    }

    /// What a sector may hold when read over `window` (or afterwards, with an open end): the ids
    /// of writes not overtaken (another write to the sector sent after it was acknowledged)
    /// before the window began, and whether only one is possible.
    static func allowed(_ writes: [Write], sector: Int, sent: ContinuousClock.Instant, answered: ContinuousClock.Instant?) -> (ids: Set<UInt64>, determined: Bool) {
        let touching = writes.filter { $0.sectors.contains(sector) && (answered == nil || $0.sent < answered!) }
        // Overtaken: some other write to this sector was sent after this one was acknowledged,
        // and acknowledged itself before the read was sent.
        let live = touching.filter { write in
            !touching.contains { other in other.sent > write.acknowledged && other.acknowledged < sent }
        }
        var ids = Set(live.map(\.id))
        // No write before the read finished: the sector may still be zero.
        let settled = touching.contains { $0.acknowledged < sent }
        if !settled { ids.insert(0) }
        return (ids, ids.count == 1)
    }

    @Test("every sector read afterwards, and by every read, is a write that may be last, whole; unambiguous sectors exactly it", arguments: backends)
    func overlappingWritesAndReads(_ backend: Backend) async throws {
        let directory = try Tools.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        try await withServer({ try await backend.start(directory) }) { server in
            try await withGateway(["--export", "disk=\(server.uri)", "--pool-size", "4", "--requests-per-connection", "2"]) { gateway in
                let port = gateway.port
                let log = Log()
                try await withThrowingTaskGroup(of: Void.self) { group in
                    for client in 0..<Self.clients {
                        group.addTask {
                            var random = SeededGenerator(seed: UInt64(client + 1))
                            for sequence in 0..<Self.operationsPerClient {
                                let span = Self.randomSpan(&random)
                                let count = span.count
                                let offset = span.lowerBound * Self.sector
                                let sent = ContinuousClock.now
                                if random.next() % 5 < 3 {
                                    let id = UInt64(client + 1) << 32 | UInt64(sequence + 1)
                                    let request = HTTPRequest("PUT", "/exports/disk/data?offset=\(offset)", body: Self.encode(id: id, sectors: span))
                                    let response = try await RawHTTP.send(request, port: port)
                                    let acknowledged = ContinuousClock.now
                                    log.withLock {
                                        if response.status == 200 {
                                            $0.writes.append(Write(id: id, sectors: span, sent: sent, acknowledged: acknowledged))
                                        } else {
                                            $0.failures.append("PUT \(span): \(response.summary)")
                                        }
                                    }
                                } else {
                                    let range = "bytes=\(offset)-\(offset + count * Self.sector - 1)"
                                    let response = try await RawHTTP.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", range)]), port: port)
                                    let answered = ContinuousClock.now
                                    log.withLock {
                                        if response.status == 206, response.body.count == count * Self.sector {
                                            $0.reads.append(Read(sectors: span, sent: sent, answered: answered, bytes: response.body))
                                        } else {
                                            $0.failures.append("GET \(span): \(response.summary)")
                                        }
                                    }
                                }
                            }
                        }
                    }
                    try await group.waitForAll()
                }
                // Then writes one after another and reads of them: however the concurrent phase
                // raced under load, these sectors have one possible value each, so the checks
                // below always have sectors whose exact contents they test.
                var random = SeededGenerator(seed: 99)
                var tail: [Range<Int>] = []
                for sequence in 0..<Self.tailWrites {
                    let span = Self.randomSpan(&random)
                    let id = UInt64(Self.clients + 1) << 32 | UInt64(sequence + 1)
                    let sent = ContinuousClock.now
                    let response = try await RawHTTP.send(HTTPRequest("PUT", "/exports/disk/data?offset=\(span.lowerBound * Self.sector)", body: Self.encode(id: id, sectors: span)), port: port)
                    let acknowledged = ContinuousClock.now
                    #expect(response.status == 200, "\(response.summary)")
                    log.withLock { $0.writes.append(Write(id: id, sectors: span, sent: sent, acknowledged: acknowledged)) }
                    tail.append(span)
                }
                for span in tail {
                    let range = "bytes=\(span.lowerBound * Self.sector)-\(span.upperBound * Self.sector - 1)"
                    let sent = ContinuousClock.now
                    let response = try await RawHTTP.send(HTTPRequest("GET", "/exports/disk/data", headers: [("Range", range)]), port: port)
                    let answered = ContinuousClock.now
                    #expect(response.status == 206 && response.body.count == span.count * Self.sector, "\(response.summary)")
                    log.withLock { $0.reads.append(Read(sectors: span, sent: sent, answered: answered, bytes: response.body)) }
                }
                let tailSectors = Set(tail.flatMap { $0 }).count
                let tailReadSectors = tail.map(\.count).reduce(0, +)
                let (writes, reads, failures) = log.withLock { $0 }
                #expect(failures.isEmpty, "\(failures.prefix(5))")

                // The backend afterwards, read directly.
                let disk = try await readBackend(server.uri, offset: 0, length: Self.sectors * Self.sector)
                let end = ContinuousClock.now
                var determined = 0
                var problems: [String] = []
                for sector in 0..<Self.sectors {
                    let held = Self.decode(disk[(sector * Self.sector)..<((sector + 1) * Self.sector)], sector: sector)
                    let (ids, unique) = Self.allowed(writes, sector: sector, sent: end, answered: nil)
                    if unique { determined += 1 }
                    if held == nil || !ids.contains(held!) {
                        problems.append("sector \(sector) holds \(held.map { String($0, radix: 16) } ?? "torn bytes"), expected one of \(ids.map { String($0, radix: 16) })")
                    }
                }
                var readSectors = 0
                var readDetermined = 0
                for read in reads {
                    for (index, sector) in read.sectors.enumerated() {
                        let held = Self.decode(read.bytes[(index * Self.sector)..<((index + 1) * Self.sector)], sector: sector)
                        let (ids, unique) = Self.allowed(writes, sector: sector, sent: read.sent, answered: read.answered)
                        readSectors += 1
                        if unique { readDetermined += 1 }
                        if held == nil || !ids.contains(held!) {
                            problems.append("a read of sector \(sector) saw \(held.map { String($0, radix: 16) } ?? "torn bytes"), expected one of \(ids.map { String($0, radix: 16) })")
                        }
                    }
                }
                #expect(problems.isEmpty, "\(problems.count) problems: \(problems.prefix(5))")
                // The check has teeth: at least the sequential writes' sectors, and every sector
                // read back after them, had one possible value (how many more depends on how the
                // concurrent phase raced, which load decides).
                #expect(writes.count > 300 && reads.count > 150, "\(writes.count) writes, \(reads.count) reads")
                #expect(determined >= tailSectors, "only \(determined) sectors had one possible value; the sequential writes alone cover \(tailSectors)")
                #expect(readDetermined >= tailReadSectors, "only \(readDetermined) of \(readSectors) sectors read had one possible value; the reads after the sequential writes alone are \(tailReadSectors)")
            }
        }
    }
}
