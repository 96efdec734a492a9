import ArgumentParser
import CSpawn
// FoundationEssentials, not Foundation: Foundation brings ICU, whose libraries cost the
// process about 7 MiB of resident memory for nothing a gateway uses.
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NBDClient

enum ProcessEnvironment {
    static var values: [String: String] { ProcessInfo.processInfo.environment }
}

enum OpenAPIDocument {
    /// The contract, compiled into the executable (the repository's top-level openapi.yaml
    /// links to it).
    static func load() throws -> String {
        let text = String(decoding: PackageResources.openapi_yaml, as: UTF8.self)
        guard !text.isEmpty else { throw ValidationError("the openapi.yaml resource is empty") }
        return text
    }
}

/// The disk the gateway serves when given no backend: an nbdkit memory disk it starts on a
/// private Unix socket and stops on exit.
///
/// nbdkit's `--exit-with-parent` ties it to the *thread* that started it (PR_SET_PDEATHSIG),
/// so a dedicated thread starts it and stays, waiting for it: the disk lives exactly as long
/// as the gateway process.
struct EmbeddedDisk: Sendable {
    /// The one export it serves, listed by `GET /exports`.
    static let exportName = "disk0"
    /// The server (its listing names `exportName`).
    let uri: NBDURI
    let pid: pid_t
    let directory: String
    /// Yields once, when nbdkit has exited.
    let exited: AsyncStream<Void>

    static func start(logger: Logger) async throws -> EmbeddedDisk {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("nbd-gateway-\(getpid())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let socket = directory + "/nbd.sock"
        // The exportname filter makes nbdkit list one named export and refuse other names
        // (the memory plugin alone answers to any name and lists only "").
        let arguments = [
            "nbdkit", "-f", "--exit-with-parent", "-U", socket, "--filter=exportname", "memory", "size=1G",
            "exportname=\(exportName)", "exportname-list=explicit", "exportname-strict=true",
            "exportdesc=fixed:embedded nbdkit memory disk",
        ]
        let (exited, exit) = AsyncStream.makeStream(of: Void.self)
        let pid: pid_t = try await withCheckedThrowingContinuation { continuation in
            let started = KeeperThread.start(named: "nbdkit-keeper") {
                let pid: pid_t
                do {
                    pid = try spawn(arguments)
                } catch {
                    continuation.resume(throwing: error)
                    exit.finish()
                    return
                }
                continuation.resume(returning: pid)
                var status: Int32 = 0
                while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                exit.yield()
                exit.finish()
            }
            if !started {
                continuation.resume(throwing: NBDError(.connectionFailed, "cannot start a thread to keep nbdkit"))
                exit.finish()
            }
        }
        let uri = NBDURI(transport: .unix(path: socket))
        let exportURI = NBDURI(transport: .unix(path: socket), exportName: exportName)
        let disk = EmbeddedDisk(uri: uri, pid: pid, directory: directory, exited: exited)
        // nbdkit listens a moment after it starts: try until it answers (bounded).
        var lastError: (any Error)?
        for _ in 0..<250 {
            do {
                let client = try await NBDClient.connect(to: exportURI)
                await client.disconnect()
                logger.info("started embedded nbdkit memory disk", metadata: ["pid": "\(pid)", "socket": "\(socket)"])
                return disk
            } catch {
                lastError = error
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        await disk.stop()
        throw lastError ?? NBDError(.connectionFailed, "embedded nbdkit did not start")
    }

    func stop() async {
        kill(pid, SIGTERM)
        for await _ in exited {}
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Starts nbdkit with none of our descriptors and default signal handling (see cspawn.h).
    private static func spawn(_ arguments: [String]) throws -> pid_t {
        let candidates: [String] = ["/usr/bin/nbdkit", "/usr/sbin/nbdkit", "/usr/local/bin/nbdkit"]
        guard let path = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw NBDError(.connectionFailed, "nbdkit is not installed (scripts/install-deps installs it)")
        }
        let argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        let result = argv.withUnsafeBufferPointer { cspawn_spawn(&pid, path, $0.baseAddress, environ, -1, nil, nil) }
        guard result == 0 else { throw NBDError(.connectionFailed, "cannot start nbdkit: error \(result)") }
        return pid
    }
}

/// A thread of its own (detached) for work that must stay on one thread for its whole life.
enum KeeperThread {
    private final class Body: Sendable {
        let name: String
        let run: @Sendable () -> Void
        init(name: String, run: @escaping @Sendable () -> Void) {
            self.name = name
            self.run = run
        }
    }

    /// Starts `body` on a new thread; false if none could be created.
    static func start(named name: String, _ body: @escaping @Sendable () -> Void) -> Bool {
        let box = Unmanaged.passRetained(Body(name: name, run: body))
        var thread = pthread_t()
        let result = pthread_create(&thread, nil, { argument in
            guard let argument else { return nil }
            let body = Unmanaged<Body>.fromOpaque(argument).takeRetainedValue()
            cspawn_name_thread(body.name)
            body.run()
            return nil
        }, box.toOpaque())
        guard result == 0 else {
            box.release()
            return false
        }
        pthread_detach(thread)
        return true
    }
}

/// A small text file read whole (auth files, certificates), failing with the system's words.
enum TextFile {
    struct Failure: Error, CustomStringConvertible {
        let code: Int32
        var description: String { String(cString: strerror(code)) }
    }

    static func read(_ path: String) throws(Failure) -> String {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw Failure(code: errno) }
        defer { close(descriptor) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(descriptor, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw Failure(code: errno)
            }
            if count == 0 { break }
            bytes += chunk[..<count]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

enum StandardOutput {
    /// Makes the "listening on" line visible at once when stdout is a pipe.
    static func flush() { fflush(nil) }  // nil flushes every output stream, stdout included.
}
