@testable import NBDGateway
import Testing

/// Exact transitions of one HTTP request's life, with strings for answers and uploads.
@Suite("HTTPRequestStateMachine")
struct HTTPRequestStateMachineTests {
    typealias Machine = HTTPRequestStateMachine<String, String>

    /// A compact name for an action, to compare whole sequences.
    static func name(_ action: Machine.Action) -> String {
        switch action {
        case .proceed: "proceed"
        case .queue(let response): "queue(\(response))"
        case .suspendAndDecide: "suspendAndDecide"
        case .suspendAndRespond: "suspendAndRespond"
        case .offer(let upload): "offer(\(upload))"
        case .suspendAndFinish(let upload): "suspendAndFinish(\(upload))"
        case .discard: "discard"
        case .suspend: "suspend"
        case .resume: "resume"
        }
    }

    @Test("GET: starts on the call after the headers, answers after the job, queues on the next call")
    func simpleRequest() {
        var machine = Machine()
        #expect(Self.name(machine.headersReceived(.respondLater)) == "proceed")
        #expect(!machine.isSuspended)
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: nil)) == "suspendAndRespond")
        #expect(machine.isSuspended && machine.job == .responding)
        #expect(Self.name(machine.answerReady("200")) == "resume")
        #expect(!machine.isSuspended)
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: nil)) == "queue(200)")
        #expect(machine.isAnswered)
        // A late answer (shutdown answered first, say) changes nothing.
        #expect(Self.name(machine.answerReady("late")) == "proceed")
        #expect(machine.completed() == false)
    }

    @Test("a body nobody reads is discarded, before and after the answer is ready")
    func discardedBody() {
        var machine = Machine()
        _ = machine.headersReceived(.respondLater)
        #expect(Self.name(machine.called(bodyBytes: 100, refusal: nil)) == "discard")
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: nil)) == "suspendAndRespond")
        #expect(Self.name(machine.called(bodyBytes: 10, refusal: nil)) == "discard")
        _ = machine.answerReady("200")
        #expect(Self.name(machine.called(bodyBytes: 10, refusal: nil)) == "discard")
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: nil)) == "queue(200)")
    }

    @Test("shutting down: a request not started yet is refused on its next call")
    func refusedDuringShutdown() {
        var machine = Machine()
        _ = machine.headersReceived(.respondLater)
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: "503")) == "queue(503)")
        #expect(machine.isAnswered && !machine.isSuspended)
    }

    @Test("a refusal from the headers is queued at once, on the first call")
    func refusedFromHeaders() {
        var machine = Machine()
        #expect(Self.name(machine.headersReceived(.refuse("416"))) == "queue(416)")
        #expect(machine.isAnswered)
        #expect(Self.name(machine.called(bodyBytes: 5, refusal: nil)) == "discard")
    }

    @Test("PUT decided at once: 100 Continue call, body offered, finished in a job, answered")
    func acceptedUpload() {
        var machine = Machine()
        #expect(Self.name(machine.headersReceived(.upload("u"))) == "proceed")
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: nil)) == "proceed")  // before the body
        #expect(Self.name(machine.called(bodyBytes: 4096, refusal: nil)) == "offer(u)")
        // Writes fall behind: the upload suspends, then wakes the connection.
        #expect(Self.name(machine.suspendWanted()) == "suspend")
        #expect(Self.name(machine.suspendWanted()) == "proceed")  // never twice
        #expect(Self.name(machine.resumeWanted()) == "resume")
        #expect(Self.name(machine.resumeWanted()) == "proceed")  // never twice
        #expect(Self.name(machine.called(bodyBytes: 100, refusal: nil)) == "offer(u)")
        // Shutdown does not refuse a body in progress: its writes finish.
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: "503")) == "suspendAndFinish(u)")
        #expect(machine.job == .finishing)
        // A wake from the upload while it finishes does not resume: only the answer does.
        #expect(Self.name(machine.resumeWanted()) == "proceed")
        #expect(Self.name(machine.answerReady("200")) == "resume")
        #expect(Self.name(machine.called(bodyBytes: 0, refusal: nil)) == "queue(200)")
    }

    @Test("PUT decided by a job: suspended on the first call, then accepted or refused")
    func decidedUpload() {
        var accepted = Machine()
        #expect(Self.name(accepted.headersReceived(.decideUpload)) == "suspendAndDecide")
        #expect(accepted.isSuspended && accepted.job == .deciding)
        #expect(Self.name(accepted.decided(.upload("u"))) == "resume")
        #expect(Self.name(accepted.called(bodyBytes: 10, refusal: nil)) == "offer(u)")

        var refused = Machine()
        _ = refused.headersReceived(.decideUpload)
        #expect(Self.name(refused.decided(.refuse("403"))) == "resume")
        #expect(Self.name(refused.called(bodyBytes: 0, refusal: nil)) == "queue(403)")
        // A second verdict, or a verdict when nothing is deciding, is ignored.
        #expect(Self.name(refused.decided(.upload("u"))) == "proceed")
    }

    @Test("a streaming answer: the content reader suspends, the producer resumes")
    func streamingAnswer() {
        var machine = Machine()
        _ = machine.headersReceived(.respondLater)
        _ = machine.called(bodyBytes: 0, refusal: nil)
        _ = machine.answerReady("206 stream")
        _ = machine.called(bodyBytes: 0, refusal: nil)
        #expect(Self.name(machine.suspendWanted()) == "suspend")
        #expect(Self.name(machine.resumeWanted()) == "resume")
        #expect(Self.name(machine.suspendWanted()) == "suspend")
        // The client went away while suspended: the count of suspended connections must drop,
        // and nothing resumes a completed request.
        #expect(machine.completed() == true)
        #expect(Self.name(machine.resumeWanted()) == "proceed")
        #expect(Self.name(machine.suspendWanted()) == "proceed")
    }

    @Test("grace period over: a job still working is answered with the refusal; a waiting stream is resumed")
    func shutdown() {
        var working = Machine()
        _ = working.headersReceived(.respondLater)
        _ = working.called(bodyBytes: 0, refusal: nil)
        #expect(Self.name(working.shutdown(refusal: "503")) == "resume")
        #expect(Self.name(working.called(bodyBytes: 0, refusal: nil)) == "queue(503)")
        #expect(Self.name(working.answerReady("200")) == "proceed")  // the job's late answer

        var streaming = Machine()
        _ = streaming.headersReceived(.respondLater)
        _ = streaming.called(bodyBytes: 0, refusal: nil)
        _ = streaming.answerReady("206")
        _ = streaming.called(bodyBytes: 0, refusal: nil)
        _ = streaming.suspendWanted()
        #expect(Self.name(streaming.shutdown(refusal: "503")) == "resume")
        #expect(Self.name(streaming.shutdown(refusal: "503")) == "proceed")

        var idle = Machine()
        _ = idle.headersReceived(.respondLater)
        #expect(Self.name(idle.shutdown(refusal: "503")) == "proceed")
    }
}
