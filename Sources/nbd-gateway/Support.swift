import ArgumentParser
import CSpawn
import Foundation
import Logging
import NBDClient

enum ProcessEnvironment {
    static var values: [String: String] { ProcessInfo.processInfo.environment }
}

enum OpenAPIDocument {
    /// The contract, shipped as a resource (the repository's top-level openapi.yaml links to it).
    static func load() throws -> String {
        guard let url = Bundle.module.url(forResource: "openapi", withExtension: "yaml"),
              let text = try? String(contentsOf: url, encoding: .utf8), !text.isEmpty
        else { throw ValidationError("the openapi.yaml resource is missing from the installation") }
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
            let keeper = Thread {
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
            keeper.name = "nbdkit-keeper"
            keeper.start()
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

enum StandardOutput {
    /// Makes the "listening on" line visible at once when stdout is a pipe.
    static func flush() { fflush(nil) }  // nil flushes every output stream, stdout included.
}
