/// One HTTP request's life between libmicrohttpd's callbacks and the jobs that answer it, with
/// no I/O: every event is one transition, made under the request's lock, and returns what the
/// adapter must do. Generic over the answer and the upload so that its tests need neither.
///
/// libmicrohttpd calls the access handler once when the headers are in (`headersReceived`),
/// then once per piece of body and once more after the body (`called`). A connection is
/// suspended while a job works or a body waits for its producer or consumer; the machine knows
/// whether it is, so a resume never precedes its suspend and none is ever left over.
struct HTTPRequestStateMachine<Response, Upload> {
    /// What the headers alone decide.
    enum Start {
        /// Answer now, before any body byte is read (a refusal).
        case refuse(Response)
        /// A request whose body (if any) is not read: answered by a job started on the next call.
        case respondLater
        /// A PUT accepted into this upload.
        case upload(Upload)
        /// A PUT that needs async work (opening the export) to decide.
        case decideUpload
    }

    /// What the adapter must do after an event.
    enum Action {
        /// Nothing more; let libmicrohttpd go on.
        case proceed
        /// Queue this answer now (on this call, which carries no body bytes).
        case queue(Response)
        /// Suspend the connection (while holding the lock: no resume may overtake it), then
        /// start the job that decides the upload.
        case suspendAndDecide
        /// Suspend, then start the job that answers the request.
        case suspendAndRespond
        /// Hand this call's body bytes to the upload.
        case offer(Upload)
        /// The body ended: suspend, then start the job that finishes the upload and answers.
        case suspendAndFinish(Upload)
        /// Drop this call's body bytes (nobody reads them).
        case discard
        /// Suspend the connection now (under the lock).
        case suspend
        /// Resume the connection (after releasing the lock).
        case resume

        /// Whether the connection must be suspended before the lock is released.
        var suspends: Bool {
            switch self {
            case .suspend, .suspendAndDecide, .suspendAndRespond, .suspendAndFinish: true
            case .proceed, .queue, .offer, .discard, .resume: false
            }
        }
    }

    private enum State {
        /// Headers are in; the answer starts on the next call (suspending during the first
        /// call makes libmicrohttpd 0.9.75 drop keep-alive).
        case starting
        /// A job is deciding, answering or finishing the upload; the connection is suspended.
        case working(Job)
        /// An answer waits to be queued on the next call without body bytes.
        case answerReady(Response)
        /// A PUT was accepted; no body byte has arrived yet.
        case accepted(Upload)
        /// A PUT body is streaming into its upload.
        case uploading(Upload)
        /// The answer is queued (its body may still be streaming).
        case queued
        /// libmicrohttpd completed the request (answer sent, or client gone).
        case completed
    }

    /// What a job in progress does.
    enum Job: Equatable {
        case deciding
        case responding
        case finishing
    }

    private var state: State = .starting
    /// Whether libmicrohttpd has the connection suspended on our behalf.
    private(set) var isSuspended = false

    init() {}

    /// Whether an answer was queued or the request is over.
    var isAnswered: Bool {
        switch state {
        case .queued, .completed: true
        default: false
        }
    }

    /// The job in progress, if any.
    var job: Job? {
        if case .working(let job) = state { return job }
        return nil
    }

    /// The first call: the headers decided `start`.
    mutating func headersReceived(_ start: Start) -> Action {
        guard case .starting = state else { return .proceed }
        switch start {
        case .refuse(let response):
            state = .queued
            return .queue(response)
        case .respondLater:
            return .proceed
        case .upload(let upload):
            state = .accepted(upload)
            return .proceed
        case .decideUpload:
            state = .working(.deciding)
            isSuspended = true
            return .suspendAndDecide
        }
    }

    /// A later call, with `bodyBytes` bytes of body (0 once the body is over, or before it).
    /// `refusal` answers instead of starting new work (the gateway is shutting down).
    mutating func called(bodyBytes: Int, refusal: Response?) -> Action {
        switch state {
        case .starting:
            if bodyBytes > 0 { return .discard }
            if let refusal {
                state = .queued
                return .queue(refusal)
            }
            state = .working(.responding)
            isSuspended = true
            return .suspendAndRespond
        case .answerReady(let response):
            if bodyBytes > 0 { return .discard }
            state = .queued
            return .queue(response)
        case .accepted(let upload):
            state = .uploading(upload)
            // Called once more before the body (100 Continue goes out now).
            return bodyBytes > 0 ? .offer(upload) : .proceed
        case .uploading(let upload):
            if bodyBytes > 0 { return .offer(upload) }
            // The body is complete: its writes finish in a job (during shutdown too: the
            // writes were acknowledged to nobody yet).
            state = .working(.finishing)
            isSuspended = true
            return .suspendAndFinish(upload)
        case .working, .queued, .completed:
            return .discard
        }
    }

    /// The deciding job's verdict on a PUT: refused, or accepted into an upload.
    mutating func decided(_ verdict: Start) -> Action {
        guard case .working(.deciding) = state else { return .proceed }
        switch verdict {
        case .refuse(let response): state = .answerReady(response)
        case .upload(let upload): state = .accepted(upload)
        case .respondLater, .decideUpload: return .proceed  // Not verdicts.
        }
        return resumeIfSuspended()
    }

    /// A job's answer. Ignored once an answer was queued (shutdown may have answered first).
    mutating func answerReady(_ response: Response) -> Action {
        switch state {
        case .queued, .completed, .answerReady:
            return .proceed
        case .starting, .working, .accepted, .uploading:
            state = .answerReady(response)
            return resumeIfSuspended()
        }
    }

    /// A body producer or an upload must wait: suspend unless already suspended or over.
    mutating func suspendWanted() -> Action {
        if isSuspended { return .proceed }
        if case .completed = state { return .proceed }
        isSuspended = true
        return .suspend
    }

    /// A body producer or an upload can go on: resume if suspended.
    mutating func resumeWanted() -> Action {
        if case .working = state { return .proceed }  // Only the job's end resumes.
        return resumeIfSuspended()
    }

    /// libmicrohttpd completed the request: no more calls, no resume (the connection is gone).
    /// Returns whether it was suspended (its count must drop).
    mutating func completed() -> Bool {
        state = .completed
        defer { isSuspended = false }
        return isSuspended
    }

    /// The grace period is over: a job still working gets `refusal` as its answer, and a
    /// connection waiting on a body producer or an upload is resumed (its stream, cancelled,
    /// then cuts the body).
    mutating func shutdown(refusal: Response) -> Action {
        if case .working = state { state = .answerReady(refusal) }
        return resumeIfSuspended()
    }

    private mutating func resumeIfSuspended() -> Action {
        guard isSuspended, !isCompleted else { return .proceed }
        isSuspended = false
        return .resume
    }

    private var isCompleted: Bool {
        if case .completed = state { return true }
        return false
    }
}
