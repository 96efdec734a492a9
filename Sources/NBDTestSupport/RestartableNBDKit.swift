import Foundation
import Synchronization

/// nbdkit on a fixed Unix socket that a test kills (SIGKILL) and starts again on it: a backend
/// crash and its return, as clients of the socket see them.
public final class RestartableNBDKit: Sendable {
    /// Holds the socket, the PID file and whatever the test puts there; removed by `stop()`.
    public let directory: URL
    public let socket: String
    private let arguments: [String]
    private let pid = Mutex<pid_t>(0)

    /// Starts nbdkit with the plugin and arguments `arguments` returns, given the directory
    /// (for files the plugin serves).
    public init(_ arguments: (URL) throws -> [String]) async throws {
        directory = try Tools.temporaryDirectory()
        socket = directory.appendingPathComponent("nbd.sock").path
        self.arguments = try arguments(directory)
        try await start()
    }

    public var uri: String { "nbd+unix:///?socket=\(socket)" }

    public func start() async throws {
        try? FileManager.default.removeItem(atPath: socket)  // Left behind by a SIGKILL.
        let pidFile = directory.appendingPathComponent("nbdkit.pid")
        // The last run's file would give its PID (nbdkit writes the file just after forking).
        try? FileManager.default.removeItem(at: pidFile)
        try await Tools.run("nbdkit", ["-P", pidFile.path, "-U", socket] + arguments)
        let started = try await Tools.readPID(pidFile)
        pid.withLock { $0 = started }
    }

    /// SIGKILL, then waits until the process is gone or a zombie (its parent, not us, reaps it).
    public func crash() async throws {
        let victim = pid.withLock { $0 }
        kill(victim, SIGKILL)
        try await waitUntil("nbdkit \(victim) is gone") {
            guard let stat = try? String(contentsOfFile: "/proc/\(victim)/stat", encoding: .utf8) else { return true }
            return stat.split(separator: ")").last?.split(separator: " ").first == "Z"
        }
    }

    public func stop() {
        kill(pid.withLock { $0 }, SIGTERM)
        try? FileManager.default.removeItem(at: directory)
    }
}
