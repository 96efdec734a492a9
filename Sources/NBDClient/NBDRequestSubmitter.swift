import NBDProtocol
import NIOCore
import Synchronization

/// Hands requests from any task to the channel's event loop in batches: one wake-up and one
/// flush (one `writev`) for however many requests arrived meanwhile, instead of one each.
final class NBDRequestSubmitter: Sendable {
    private struct State {
        var queue: [NBDCommandRequest] = []
        var scheduled = false
    }

    private let channel: any Channel
    private let state = Mutex(State())

    init(channel: any Channel) {
        self.channel = channel
    }

    func submit(_ request: NBDCommandRequest) {
        let schedule = state.withLock { state -> Bool in
            state.queue.append(request)
            guard !state.scheduled else { return false }
            state.scheduled = true
            return true
        }
        if schedule {
            channel.eventLoop.execute { self.drain() }
        }
    }

    /// On the event loop: writes every queued request, then flushes once.
    private func drain() {
        let batch = state.withLock { state -> [NBDCommandRequest] in
            state.scheduled = false
            defer { state.queue.removeAll(keepingCapacity: true) }
            return state.queue
        }
        // On the loop the channel cannot close under us: if it is open now, every write
        // reaches the handler, which completes each request's promise.
        guard channel.isActive else {
            for request in batch {
                request.promise.fail(NBDError(.disconnected, "the connection is closed"))
            }
            return
        }
        for request in batch {
            channel.write(NBDChannelCommand.request(request), promise: nil)
        }
        channel.flush()
    }
}
