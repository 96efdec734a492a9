import Foundation
import NBDTestSupport
import Testing

/// schemathesis (PyPI) against the live gateway and openapi.yaml, every check, a fixed seed and
/// budget (scripts/contract-check: once plain, once with a token and CORS): no failure.
@Suite("Contract fuzzing with schemathesis", .timeLimit(.minutes(4)))
struct ContractFuzzTests {
    @Test("scripts/contract-check: every operation, all checks, 0 failures")
    func schemathesis() async throws {
        let script = Paths.repository.appendingPathComponent("scripts/contract-check").path
        let result = try await runProcess(script, [try Paths.gatewayBinary()], timeout: .seconds(220), check: false)
        let summaries = result.stdoutText.split(separator: "\n").filter { $0.hasPrefix("schemathesis: ") }
        for line in summaries { print(line) }
        #expect(result.status == 0, "contract-check failed:\n\(result.stdoutText.suffix(6000))\n\(result.stderrText.suffix(3000))")
        #expect(summaries.count == 2 && summaries.allSatisfy { $0.contains(" 0 failures") }, "\(summaries)")
    }
}
