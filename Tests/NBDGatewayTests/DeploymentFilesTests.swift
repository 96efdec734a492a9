import Foundation
import NBDTestSupport
import Testing

/// Every file under deploy/, checked by the tool that runs here for it (scripts/check-deploy:
/// hadolint, docker-compose config, kubernetes-validate, nginx -t, systemd-analyze verify with
/// the built binary). nginx also runs for real in `ReverseProxyTests`.
@Suite("Deployment files")
struct DeploymentFilesTests {
    @Test("scripts/check-deploy passes every file, one line each")
    func checkDeploy() async throws {
        let script = Paths.repository.appendingPathComponent("scripts/check-deploy").path
        let result = try await runProcess(script, [try Paths.gatewayBinary()], timeout: .seconds(120), check: false)
        #expect(result.status == 0, "check-deploy failed:\n\(result.stdoutText)\n\(result.stderrText)")
        let checked = result.stdoutText.split(separator: "\n").filter { $0.hasPrefix("ok ") }
        for file in ["deploy/Dockerfile", "deploy/Dockerfile.nbdkit", "deploy/compose.yaml", "deploy/kubernetes/deployment.yaml",
                     "deploy/kubernetes/hpa.yaml", "deploy/nginx-reverse-proxy.conf", "deploy/nbd-gateway.service"] {
            #expect(checked.contains { $0.hasPrefix("ok \(file) ") }, "\(file) was not checked:\n\(result.stdoutText)")
        }
    }
}
