import Logging
import Synchronization

/// Which failures are logged: the first of a cause (a status on an export), then, for the
/// rest of a window, only a count. An outage that fails a hundred thousand requests writes a
/// few lines, not a hundred thousand. Pure: the caller passes the time and logs what returns.
struct FailureLogStateMachine: Sendable {
    /// What failed: an answer's status, for an export (nil: not about one).
    struct Cause: Hashable, Sendable {
        var status: Int
        var export: String?
    }

    /// A line to log.
    enum Line: Equatable, Sendable {
        /// The first failure of its cause in a window: log it in full.
        case first(Cause)
        /// More failures of the cause followed the first within `over`.
        case repeated(Cause, count: Int, over: Duration)
    }

    private struct Window: Sendable {
        var start: ContinuousClock.Instant
        var suppressed: Int
    }

    /// How long failures of one cause are only counted after the first is logged.
    let window: Duration
    private var windows: [Cause: Window] = [:]

    init(window: Duration = .seconds(5)) {
        self.window = window
    }

    /// A request failed.
    mutating func failed(_ cause: Cause, now: ContinuousClock.Instant) -> [Line] {
        guard let open = windows[cause] else {
            windows[cause] = Window(start: now, suppressed: 0)
            return [.first(cause)]
        }
        if now - open.start < window {
            windows[cause]?.suppressed += 1
            return []
        }
        windows[cause] = Window(start: now, suppressed: 0)
        return summary(cause, open, now) + [.first(cause)]
    }

    /// Time passed: windows that are over report their counts and close.
    mutating func tick(now: ContinuousClock.Instant) -> [Line] {
        var lines: [Line] = []
        for (cause, open) in windows where now - open.start >= window {
            lines += summary(cause, open, now)
            windows[cause] = nil
        }
        return lines
    }

    /// Reports every window with a count, over or not (at shutdown), and closes them all.
    mutating func drain(now: ContinuousClock.Instant) -> [Line] {
        defer { windows.removeAll() }
        return windows.flatMap { summary($0.key, $0.value, now) }
    }

    private func summary(_ cause: Cause, _ open: Window, _ now: ContinuousClock.Instant) -> [Line] {
        open.suppressed > 0 ? [.repeated(cause, count: open.suppressed, over: now - open.start)] : []
    }
}

/// The failure log of the routes: `FailureLogStateMachine` behind a lock, writing to a logger.
/// Per-request detail of every failure goes to debug.
final class FailureLog: Sendable {
    private let machine = Mutex(FailureLogStateMachine())
    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func failed(_ request: GatewayRequest, status: Int, export: String?) {
        let cause = FailureLogStateMachine.Cause(status: status, export: export)
        let lines = machine.withLock { $0.failed(cause, now: .now) }
        let detail: Logger.Metadata = ["request_id": "\(request.requestID)", "method": "\(request.method)", "path": "\(request.rawPath)", "status": "\(status)"]
        logger.debug("request failed", metadata: detail)
        write(lines, detail: detail)
    }

    /// Reports the windows that are over (the service calls it every second).
    func tick() {
        write(machine.withLock { $0.tick(now: .now) }, detail: [:])
    }

    /// Reports every count still open (at shutdown).
    func drain() {
        write(machine.withLock { $0.drain(now: .now) }, detail: [:])
    }

    private func write(_ lines: [FailureLogStateMachine.Line], detail: Logger.Metadata) {
        for line in lines {
            switch line {
            case .first:
                logger.warning("request failed", metadata: detail)
            case .repeated(let cause, let count, let over):
                logger.warning("more requests failed the same way", metadata: [
                    "status": "\(cause.status)", "export": "\(cause.export ?? "-")", "count": "\(count)",
                    "seconds": "\(over.components.seconds)",
                ])
            }
        }
    }
}
