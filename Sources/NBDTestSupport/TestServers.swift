import CSpawn
import Foundation
import NIOCore
import Synchronization
import NIOPosix

/// Test support: real NBD servers and peer tools for the test suites (not shipped in products).

/// A real NBD server started for one test and stopped by PID when the test is done.
public final class TestServer: Sendable {
    public let uri: String
    public let pid: pid_t
    public let directory: URL

    public init(uri: String, pid: pid_t, directory: URL) {
        self.uri = uri
        self.pid = pid
        self.directory = directory
    }

    /// Stops the server (SIGTERM to its PID) and removes its files.
    public func stop() {
        kill(pid, SIGTERM)
        try? FileManager.default.removeItem(at: directory)
    }
}

public struct TestFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

private let handedOutPorts = Mutex<Set<Int>>([])

public enum Tools {
    /// The Debian package of each outside command the tests use (`scripts/install-deps`
    /// installs and checks them all).
    public static let packages: [String: String] = [
        "nbdkit": "nbdkit", "qemu-img": "qemu-utils", "qemu-nbd": "qemu-utils", "nbd-server": "nbd-server",
        "nbdcopy": "libnbd-bin", "nbdinfo": "libnbd-bin", "nbdsh": "libnbd-bin", "fio": "fio", "curl": "curl",
        "wrk": "wrk", "nginx": "nginx", "openssl": "openssl", "python3": "python3", "sh": "dash", "od": "coreutils",
        "systemd-socket-activate": "systemd", "systemd-analyze": "systemd", "docker-compose": "docker-compose",
    ]

    /// What a missing tool or capability says: what is missing and the package that provides it.
    public static func missing(_ what: String, package: String) -> TestFailure {
        TestFailure("\(what) is missing (provided by \(package); scripts/install-deps installs and checks it)")
    }

    /// The absolute path of a command on PATH; a missing tool fails the test, naming its package.
    public static func path(_ name: String) throws -> String {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"] {
            let candidate = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw missing("the command \(name)", package: packages[name] ?? "an unknown package")
    }

    /// Fails unless qemu-img has its curl block driver for `protocol` (http, https), which
    /// Debian ships apart from qemu-img itself.
    public static func requireQemuDriver(_ protocol: String) async throws {
        let probe = try await run("qemu-img", ["info", "--image-opts", "driver=\(`protocol`),url=\(`protocol`)://127.0.0.1:9/x"], check: false)
        let answer = String(decoding: probe.stderr + probe.stdout, as: UTF8.self).lowercased()
        if answer.contains("unknown driver") || answer.contains("unknown protocol") || answer.contains("not found") {
            throw missing("qemu-img's \(`protocol`) driver", package: "qemu-block-extra")
        }
    }

    /// Runs a command to completion without blocking the cooperative pool; returns its output.
    ///
    /// posix_spawn + waitpid on NIO's thread pool, with output going to files: Foundation's
    /// Process waits for inherited descriptors to close, which a daemonising server never does.
    @discardableResult
    public static func run(_ name: String, _ arguments: [String], check: Bool = true) async throws -> (status: Int32, stdout: Data, stderr: Data) {
        let executable = name.hasPrefix("/") ? name : try path(name)
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let outPath = directory.appendingPathComponent("stdout").path
        let errPath = directory.appendingPathComponent("stderr").path
        let status = try await NIOThreadPool.singleton.runIfActive { () throws -> Int32 in
            let pid = try Tools.spawn(executable, arguments, stdoutPath: outPath, stderrPath: errPath)
            var status: Int32 = 0
            while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
            // WIFEXITED / WEXITSTATUS, spelled out (the C macros are not imported).
            return status & 0x7f == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        }
        let stdout = (try? Data(contentsOf: URL(fileURLWithPath: outPath))) ?? Data()
        let stderr = (try? Data(contentsOf: URL(fileURLWithPath: errPath))) ?? Data()
        if check && status != 0 {
            throw TestFailure("\(name) \(arguments.joined(separator: " ")) exited \(status): \(String(decoding: stderr, as: UTF8.self))")
        }
        return (status, stdout, stderr)
    }

    /// Starts a child (see `cspawn_spawn`: no inherited descriptors, default signals) and
    /// returns its PID. `environment` nil passes ours on.
    public static func spawn(
        _ executable: String, _ arguments: [String], environment: [String]? = nil,
        stdoutDescriptor: Int32 = -1, stdoutPath: String? = nil, stderrPath: String? = nil
    ) throws -> pid_t {
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup($0) } + [nil] }
        defer {
            argv.forEach { free($0) }
            envp?.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = argv.withUnsafeBufferPointer { argvBuffer in
            if let envp {
                return envp.withUnsafeBufferPointer { envpBuffer in
                    cspawn_spawn(&pid, executable, argvBuffer.baseAddress, envpBuffer.baseAddress, stdoutDescriptor, stdoutPath, stderrPath)
                }
            }
            return cspawn_spawn(&pid, executable, argvBuffer.baseAddress, environ, stdoutDescriptor, stdoutPath, stderrPath)
        }
        guard result == 0 else { throw TestFailure("cannot run \(executable): error \(result)") }
        return pid
    }

    /// An executable of this package that SwiftPM built: next to the running test bundle, or
    /// in `packageRoot`'s `.build/debug`.
    public static func builtExecutable(_ name: String, packageRoot: URL) throws -> String {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name).path,
            packageRoot.appendingPathComponent(".build/debug/\(name)").path,
        ]
        guard let found = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
            throw TestFailure("\(name) is not built (looked in \(candidates)); run swift build --build-tests")
        }
        return found
    }

    /// The bytes a file has on disk (its holes take none).
    public static func allocatedBytes(_ file: URL) throws -> Int {
        var status = stat()
        guard stat(file.path, &status) == 0 else { throw TestFailure("stat \(file.path)") }
        return Int(status.st_blocks) * 512
    }

    public static func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("nbd-test-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// The PID a daemonised server wrote. The server is already listening when this is called
    /// (its launcher exited after binding); nbdkit and nbd-server write the file just after
    /// forking, so it may lag by a moment: this wait only learns the PID to stop it later.
    public static func readPID(_ url: URL) async throws -> pid_t {
        for _ in 0..<1000 {
            if let text = try? String(contentsOf: url, encoding: .utf8),
               let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                return pid
            }
            try await Task.sleep(for: .milliseconds(5))
        }
        throw TestFailure("no pid file at \(url.path)")
    }

    /// A TCP port that was free a moment ago (the kernel picks it), never handed out twice in
    /// one test run (the kernel may offer a just-closed port again to the next caller).
    public static func freePort() async throws -> Int {
        for _ in 0..<100 {
            // A plain socket without SO_REUSEADDR: the kernel then skips ports still held by
            // connections in TIME_WAIT, which a server binding without the option would trip on.
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw TestFailure("socket failed: \(errno)") }
            defer { close(fd) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { address in
                    bind(fd, address, length) == 0 && getsockname(fd, address, &length) == 0
                }
            }
            guard bound else { throw TestFailure("bind failed: \(errno)") }
            let port = Int(UInt16(bigEndian: address.sin_port))
            if handedOutPorts.withLock({ $0.insert(port).inserted }) { return port }
        }
        throw TestFailure("no free TCP port")
    }
}

public enum Servers {
    /// nbdkit in the background on a Unix socket (or TCP when `tcp`); it returns once listening.
    public static func nbdkit(_ arguments: [String], tcp: Bool = false, exportName: String = "", extraOptions: [String] = []) async throws -> TestServer {
        let directory = try Tools.temporaryDirectory()
        let pidFile = directory.appendingPathComponent("nbdkit.pid")
        if !tcp {
            let socket = directory.appendingPathComponent("nbd.sock").path
            // Without -f nbdkit forks once its socket is listening; the parent's exit is our signal.
            try await Tools.run("nbdkit", ["-P", pidFile.path, "-U", socket] + extraOptions + arguments)
            return TestServer(uri: "nbd+unix:///\(exportName)?socket=\(socket)", pid: try await Tools.readPID(pidFile), directory: directory)
        }
        // A port free a moment ago can be taken again before nbdkit binds it: try a few.
        var uri = ""
        for attempt in 1...5 {
            let port = try await Tools.freePort()
            let result = try await Tools.run("nbdkit", ["-P", pidFile.path, "-i", "127.0.0.1", "-p", String(port)] + extraOptions + arguments, check: attempt == 5)
            if result.status == 0 {
                uri = "nbd://127.0.0.1:\(port)/\(exportName)"
                break
            }
        }
        return TestServer(uri: uri, pid: try await Tools.readPID(pidFile), directory: directory)
    }

    /// qemu-nbd serving `image` (an --image-opts string when `imageOptions`), persistent, on a Unix socket.
    public static func qemuNBD(
        image: String, imageOptions: Bool = false, readOnly: Bool = false, format: String? = "raw", extraArguments: [String] = []
    ) async throws -> TestServer {
        let directory = try Tools.temporaryDirectory()
        let pidFile = directory.appendingPathComponent("qemu-nbd.pid")
        let socket = directory.appendingPathComponent("nbd.sock").path
        // --shared: several clients at once (qemu-nbd serves one by default).
        var arguments = ["--fork", "--pid-file=\(pidFile.path)", "-k", socket, "-t", "--shared=16"]
        if readOnly { arguments.append("--read-only") }
        arguments += extraArguments
        if imageOptions {
            arguments += ["--image-opts", image]
        } else {
            if let format { arguments += ["-f", format] }
            arguments.append(image)
        }
        try await Tools.run("qemu-nbd", arguments)
        return TestServer(uri: "nbd+unix:///?socket=\(socket)", pid: try await Tools.readPID(pidFile), directory: directory)
    }

    /// nbd-server with named exports (name → file), listing allowed or not, on a Unix socket.
    public static func nbdServer(exports: [(name: String, file: String, readOnly: Bool)], allowList: Bool) async throws -> TestServer {
        let directory = try Tools.temporaryDirectory()
        let socket = directory.appendingPathComponent("nbd.sock").path
        let pidFile = directory.appendingPathComponent("nbd-server.pid")
        var config = "[generic]\n    allowlist = \(allowList)\n    unixsock = \(socket)\n"
        for export in exports {
            config += "[\(export.name)]\n    exportname = \(export.file)\n    readonly = \(export.readOnly)\n"
        }
        let configFile = directory.appendingPathComponent("nbd-server.conf")
        try config.write(to: configFile, atomically: true, encoding: .utf8)
        // nbd-server forks after it set up its socket; the parent's exit is our signal.
        try await Tools.run("nbd-server", ["-C", configFile.path, "-p", pidFile.path])
        return TestServer(uri: "nbd+unix:///?socket=\(socket)", pid: try await Tools.readPID(pidFile), directory: directory)
    }
}

/// Runs `body` with a server, always stopping the server afterwards.
public func withServer<T>(_ start: () async throws -> TestServer, _ body: (TestServer) async throws -> T) async throws -> T {
    let server = try await start()
    do {
        let result = try await body(server)
        server.stop()
        return result
    } catch {
        server.stop()
        throw error
    }
}

/// A seeded generator (xorshift64), so what a test does reproduces run after run.
public struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    public init(seed: UInt64) {
        state = seed | 1
    }

    public mutating func next() -> UInt64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return state
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
public func randomBytes(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var generator = SeededGenerator(seed: seed)
    var bytes = [UInt8](repeating: 0, count: count)
    for index in 0..<count {
        bytes[index] = UInt8(truncatingIfNeeded: generator.next())
    }
    return bytes
}

/// The bytes nbdkit's pattern plugin serves: each 8-byte word holds its own offset, big-endian.
public func patternBytes(offset: UInt64, length: Int) -> [UInt8] {
    (0..<length).map { index in
        let position = offset + UInt64(index)
        let word = position & ~7
        let shift = (7 - (position & 7)) * 8
        return UInt8(truncatingIfNeeded: word >> shift)
    }
}

/// Sends one command to nbdkit's pause filter (`pause-control=SOCKET`) and waits for its echo:
/// "p" answers "P" once the requests received before it are done (later ones are held until
/// resumed), "r" answers "R" and lets them go. An echo that takes over 60 s fails. It talks to
/// the socket on an event loop: no child process and no thread pool, which other tests' waits
/// for their children can keep busy for longer than a test may hold a pause.
public func nbdkitPauseControl(_ socket: URL, _ command: String) async throws {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(unixDomainSocketPath: socket.path) { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
        }
    let answer = try await withThrowingTaskGroup(of: String?.self) { group in
        group.addTask {
            try await channel.executeThenClose { inbound, outbound in
                try await outbound.write(ByteBuffer(string: command))
                for try await reply in inbound where reply.readableBytes > 0 {
                    return String(buffer: reply.getSlice(at: reply.readerIndex, length: 1) ?? ByteBuffer())
                }
                return ""
            }
        }
        group.addTask {
            try await Task.sleep(for: .seconds(60))
            return nil
        }
        let first = try await group.next() ?? nil
        group.cancelAll()
        return first
    }
    guard let answer else { throw TestFailure("nbdkit's pause filter did not answer \"\(command)\" within 60 s") }
    guard answer == command.uppercased() else {
        throw TestFailure("nbdkit's pause filter answered \"\(answer)\" to \"\(command)\"")
    }
}

/// Polls `condition` every 50 ms for up to `seconds`: waiting on what a process does, not a
/// fixed sleep.
public func waitUntil(_ what: @autoclosure () -> String, seconds: Int = 10, _ condition: () async throws -> Bool) async throws {
    let limit = seconds * TestTiming.scale
    let deadline = ContinuousClock.now + .seconds(limit)
    while ContinuousClock.now < deadline {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(50))
    }
    throw TestFailure("\(what()): not within \(limit) s")
}
