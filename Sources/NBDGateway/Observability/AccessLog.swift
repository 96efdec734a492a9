#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// One finished request, as `--access-log` records it.
public struct AccessLogEntry: Sendable {
    /// Seconds since the epoch when the request's headers arrived.
    public var time: Double
    public var method: String
    public var path: String
    public var status: Int
    public var bytesIn: UInt64
    public var bytesOut: UInt64
    public var durationSeconds: Double
    public var requestID: String
    public var export: String?
    public var token: String?
    public var client: String

    /// One JSON object, no newline.
    public var json: String {
        JSON.Value.object([
            ("time", .string(Self.timestamp(time))),
            ("method", .string(method)),
            ("path", .string(path)),
            ("status", .int(UInt64(max(status, 0)))),
            ("bytes_in", .int(bytesIn)),
            ("bytes_out", .int(bytesOut)),
            ("duration_us", .int(UInt64(max(0, durationSeconds * 1_000_000).rounded()))),
            ("request_id", .string(requestID)),
            ("export", export.map { .string($0) } ?? .null),
            ("token", token.map { .string($0) } ?? .null),
            ("client", .string(client)),
        ]).rendered
    }

    /// RFC 3339 in UTC with milliseconds: `2026-11-29T20:31:02.118Z`.
    static func timestamp(_ seconds: Double) -> String {
        var whole = time_t(seconds.rounded(.down))
        let millis = Int((seconds - Double(whole)) * 1000)
        var parts = tm()
        gmtime_r(&whole, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2)).\(pad(Int32(millis), 3))Z"
    }
}

/// Where access-log lines go: a file opened for appending (reopened on SIGHUP, for
/// logrotate), or standard output. Each line is one `write`, so lines never interleave.
public final class AccessLog: Sendable {
    private let path: String?
    private let descriptor: Mutex<Int32>

    /// `-` is standard output.
    public init(path: String) throws(AccessLogError) {
        if path == "-" {
            self.path = nil
            descriptor = Mutex(STDOUT_FILENO)
        } else {
            self.path = path
            descriptor = Mutex(try Self.open(path))
        }
    }

    private static func open(_ path: String) throws(AccessLogError) -> Int32 {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw AccessLogError(path: path, errno: errno) }
        return fd
    }

    /// Opens the file anew (after logrotate moved it); the old descriptor is closed.
    public func reopen() throws(AccessLogError) {
        guard let path else { return }
        let fresh = try Self.open(path)
        let old = descriptor.withLock { fd in
            defer { fd = fresh }
            return fd
        }
        close(old)
    }

    public func write(_ entry: AccessLogEntry) {
        var line = entry.json
        line.append("\n")
        descriptor.withLock { fd in
            line.withUTF8 { bytes in
                guard let base = bytes.baseAddress else { return }
                var offset = 0
                while offset < bytes.count {
                    let written = Glibc.write(fd, base + offset, bytes.count - offset)
                    if written < 0 && errno == EINTR { continue }
                    guard written > 0 else { return }  // Disk full or closed: drop the line, keep serving.
                    offset += written
                }
            }
        }
    }

    deinit {
        descriptor.withLock { fd in if fd != STDOUT_FILENO { close(fd) } }
    }
}

public struct AccessLogError: Error, CustomStringConvertible {
    public let path: String
    public let errno: Int32
    public var description: String { "cannot open the access log \(path): \(String(cString: strerror(errno)))" }
}
