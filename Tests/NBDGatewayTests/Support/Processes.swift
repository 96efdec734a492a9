import Foundation
import NBDTestSupport
import NIOPosix
import Synchronization

/// Threads for the blocking work of these tests (waitpid, blocking sockets, pipe reads), so
/// they never block the cooperative pool nor queue behind NIO's small default pool (2 threads
/// on a 2-core machine), where one slow child would stall every other test.
let blockingPool: NIOThreadPool = {
    let pool = NIOThreadPool(numberOfThreads: 64)
    pool.start()
    return pool
}()

/// Where things are in the repository.
enum Paths {
    /// The package root (this file is Tests/NBDGatewayTests/Support/Processes.swift).
    static let repository = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// The contract the gateway must match.
    static var openAPI: URL { repository.appendingPathComponent("openapi.yaml") }

    /// The `nbd-gateway` executable SwiftPM built next to this test bundle.
    static func gatewayBinary() throws -> String {
        try Tools.builtExecutable("nbd-gateway", packageRoot: repository)
    }

    /// The `nbd` tool SwiftPM built next to this test bundle.
    static func toolBinary() throws -> String {
        try Tools.builtExecutable("nbd", packageRoot: repository)
    }
}

/// A size field of `/proc/PID/status` (`VmRSS`, `VmHWM`, ...), in KiB.
func processStatusKiB(_ pid: pid_t, _ field: String) throws -> Int {
    let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("\(field):") }),
          let kilobytes = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    else { throw TestFailure("no \(field) in /proc/\(pid)/status") }
    return kilobytes
}

/// Decodes a waitpid status: the exit code, or 128 + the signal.
private func exitCode(_ status: Int32) -> Int32 {
    status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
}

/// Waits until `pid` exits; returns its exit code. On a thread of its own: in a pool busy with
/// blocking sockets the wait could start late and make a prompt exit look slow.
private func waitForExit(_ pid: pid_t, exitedAt: ExitClock? = nil) async throws -> Int32 {
    await withCheckedContinuation { continuation in
        let waiter = Thread {
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 {
                if errno != EINTR {
                    continuation.resume(returning: -1)
                    return
                }
            }
            exitedAt?.mark()
            continuation.resume(returning: exitCode(status))
        }
        waiter.name = "waitpid \(pid)"
        waiter.start()
    }
}

/// Waits for `pid` to exit; after `timeout` it is sent SIGKILL (and waited for). Returns the
/// exit code and whether the timeout fired.
/// When a child was seen to exit, noted by the waiting thread itself (the task that reads it
/// may run later, when the cooperative pool is busy).
final class ExitClock: Sendable {
    private let instant = Mutex<ContinuousClock.Instant?>(nil)
    func mark() { instant.withLock { $0 = .now } }
    var exitedAt: ContinuousClock.Instant? { instant.withLock { $0 } }
}

private func waitForExit(_ pid: pid_t, timeout: Duration, exitedAt: ExitClock? = nil) async throws -> (status: Int32, timedOut: Bool) {
    try await withThrowingTaskGroup(of: Int32?.self) { group in
        group.addTask { try await waitForExit(pid, exitedAt: exitedAt) }
        group.addTask {
            // A deadline, not synchronisation: only a hung child gets here.
            try? await Task.sleep(for: timeout)
            if Task.isCancelled { return nil }
            kill(pid, SIGKILL)
            return nil
        }
        var status: Int32?
        var timedOut = false
        while let result = try await group.next() {
            if let result {
                status = result
                group.cancelAll()
            } else if status == nil {
                timedOut = true
            }
        }
        return (status ?? -1, timedOut)
    }
}

struct ProcessResult: Sendable {
    var status: Int32
    var stdout: Data
    var stderr: Data
    var stdoutText: String { String(decoding: stdout, as: UTF8.self) }
    var stderrText: String { String(decoding: stderr, as: UTF8.self) }
}

/// Runs a command to completion with a deadline (the child is killed after `timeout`), its
/// output captured in files. Like `Tools.run`, but bounded in time and on our own threads.
@discardableResult
func runProcess(_ name: String, _ arguments: [String], timeout: Duration = .seconds(60), check: Bool = true, environment: [String: String] = [:]) async throws -> ProcessResult {
    let executable = name.hasPrefix("/") ? name : try Tools.path(name)
    let directory = try Tools.temporaryDirectory()
    defer { try? FileManager.default.removeItem(at: directory) }
    let outPath = directory.appendingPathComponent("stdout").path
    let errPath = directory.appendingPathComponent("stderr").path
    var variables = ProcessInfo.processInfo.environment
    for (key, value) in environment { variables[key] = value }
    let environmentList = variables.map { "\($0.key)=\($0.value)" }
    let pid = try Tools.spawn(executable, arguments, environment: environmentList, stdoutPath: outPath, stderrPath: errPath)
    let (status, timedOut) = try await waitForExit(pid, timeout: timeout)
    let stdout = (try? Data(contentsOf: URL(fileURLWithPath: outPath))) ?? Data()
    let stderr = (try? Data(contentsOf: URL(fileURLWithPath: errPath))) ?? Data()
    let commandLine = "\(name) \(arguments.joined(separator: " "))"
    if timedOut {
        throw TestFailure("\(commandLine) did not finish within \(timeout) (killed): \(String(decoding: stderr, as: UTF8.self))")
    }
    if check && status != 0 {
        throw TestFailure("\(commandLine) exited \(status): \(String(decoding: stderr, as: UTF8.self))")
    }
    return ProcessResult(status: status, stdout: stdout, stderr: stderr)
}

/// A long-running child (the gateway under test): stdout on a pipe we read lines from,
/// stderr in a file, stopped by PID.
final class BackgroundProcess: Sendable {
    let pid: pid_t
    let stderrPath: String
    private let stdoutDescriptor: Int32
    private let stopped = Mutex(false)

    init(_ executable: String, _ arguments: [String], stderrPath: String) throws {
        var fds: [Int32] = [0, 0]
        // A socket pair rather than a pipe, for SOCK_CLOEXEC (Glibc's module does not export
        // pipe2): no other child spawned meanwhile (daemons!) may inherit the write end, or
        // the stream would never reach end-of-file.
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw TestFailure("socketpair failed: \(errno)")
        }
        let (readEnd, writeEnd) = (fds[0], fds[1])
        let spawned: pid_t
        do {
            spawned = try Tools.spawn(executable, arguments, stdoutDescriptor: writeEnd, stderrPath: stderrPath)
        } catch {
            close(writeEnd)
            close(readEnd)
            throw error
        }
        close(writeEnd)
        pid = spawned
        stdoutDescriptor = readEnd
        self.stderrPath = stderrPath
    }

    /// Reads stdout until a line containing `marker` arrives (bounded by `timeout`); returns that line.
    func waitForLine(containing marker: String, timeout: Duration) async throws -> String {
        try await lines(through: marker, timeout: timeout).last ?? ""
    }

    /// Reads stdout until a line containing `marker` arrives (bounded by `timeout`); returns
    /// every line read, that one last.
    func lines(through marker: String, timeout: Duration) async throws -> [String] {
        let fd = stdoutDescriptor
        let deadline = ContinuousClock.now + timeout
        return try await blockingPool.runIfActive {
            var pending: [UInt8] = []
            var lines: [String] = []
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                while let newline = pending.firstIndex(of: 10) {
                    let line = String(decoding: pending[..<newline], as: UTF8.self)
                    pending.removeSubrange(...newline)
                    lines.append(line)
                    if line.contains(marker) { return lines }
                }
                let remaining = deadline - ContinuousClock.now
                let milliseconds = max(0, Int32(remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000))
                guard milliseconds > 0 else { throw TestFailure("no line containing \"\(marker)\" within \(timeout)") }
                var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let ready = poll(&descriptor, 1, milliseconds)
                if ready < 0 && errno == EINTR { continue }
                guard ready > 0 else { continue }
                let count = read(fd, &chunk, chunk.count)
                if count < 0 && errno == EINTR { continue }
                guard count > 0 else { throw TestFailure("the process closed stdout before printing \"\(marker)\"") }
                pending += chunk[0..<count]
            }
        }
    }

    /// What the process wrote on stderr so far.
    var stderrText: String {
        (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? ""
    }

    /// SIGTERM (graceful), then SIGKILL if it has not exited within `timeout`. Idempotent.
    @discardableResult
    func stop(timeout: Duration = .seconds(10)) async -> (status: Int32, timedOut: Bool) {
        let (status, timedOut, _) = await stopTimed(timeout: timeout)
        return (status, timedOut)
    }

    /// `stop`, also telling how long the process took to exit after SIGTERM.
    func stopTimed(timeout: Duration = .seconds(10)) async -> (status: Int32, timedOut: Bool, took: Duration?) {
        let first = stopped.withLock { stopped -> Bool in
            defer { stopped = true }
            return !stopped
        }
        guard first else { return (0, false, nil) }
        let exit = ExitClock()
        let sent = ContinuousClock.now
        kill(pid, SIGTERM)
        let result: (status: Int32, timedOut: Bool) = (try? await waitForExit(pid, timeout: timeout, exitedAt: exit)) ?? (-1, false)
        close(stdoutDescriptor)
        return (result.status, result.timedOut, exit.exitedAt.map { $0 - sent })
    }
}
