import ArgumentParser
#if canImport(Glibc)
import Glibc
#endif
import Logging
import NBDGateway
import ServiceLifecycle
import UnixSignals

/// Files the gateway reads at start and again on SIGHUP.
enum Reloadable {
    static func accessFile(_ path: String) throws -> AccessFile {
        let text: String
        do {
            text = try TextFile.read(path)
        } catch {
            throw ValidationError("cannot read the auth file \(path): \(error)")
        }
        do {
            return try AccessFile(parsing: text)
        } catch {
            throw ValidationError("the auth file \(path) does not parse: \(error)")
        }
    }

    static func credentials(certificate: String, key: String) throws -> HTTPSCredentials {
        func read(_ path: String, _ what: String) throws -> String {
            do {
                return try TextFile.read(path)
            } catch {
                throw ValidationError("cannot read the HTTPS \(what) \(path): \(error)")
            }
        }
        let certificatePEM = try read(certificate, "certificate")
        let keyPEM = try read(key, "key")
        guard certificatePEM.contains("-----BEGIN CERTIFICATE-----") else { throw ValidationError("\(certificate) holds no PEM certificate") }
        guard keyPEM.contains("PRIVATE KEY-----") else { throw ValidationError("\(key) holds no PEM private key") }
        return HTTPSCredentials(certificatePEM: certificatePEM, keyPEM: keyPEM)
    }
}

/// SIGHUP: reloads the auth file and the HTTPS credentials, and reopens the access log. What
/// does not load is logged with its reason and the old settings stay in force.
struct Reloader: Service {
    let settings: GatewayCommand.Settings
    let access: AccessControl?
    let accessLog: AccessLog?
    let service: GatewayService
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            reload()
        }
    }

    func reload() {
        if let access, let path = settings.authFile {
            do {
                let file = try Reloadable.accessFile(path)
                access.replace(with: file)
                logger.notice("reloaded the auth file", metadata: ["tokens": "\(file.entries.count)"])
            } catch {
                logger.error("kept the old tokens", metadata: ["reason": "\(error)"])
            }
        }
        if let certificate = settings.httpsCert, let key = settings.httpsKey {
            do {
                try service.reloadCredentials(try Reloadable.credentials(certificate: certificate, key: key))
                logger.notice("reloaded the HTTPS certificate and key for new connections")
            } catch {
                logger.error("kept the old HTTPS certificate and key", metadata: ["reason": "\(error)"])
            }
        }
        do {
            try accessLog?.reopen()
        } catch {
            logger.error("kept writing the old access log", metadata: ["reason": "\(error)"])
        }
    }
}

/// systemd socket activation: the listening sockets passed as descriptors 3… when LISTEN_PID
/// names this process.
enum SocketActivation {
    static func sockets() -> [Int32] {
        let environment = ProcessEnvironment.values
        guard let pid = environment["LISTEN_PID"].flatMap(Int32.init), pid == getpid(),
              let count = environment["LISTEN_FDS"].flatMap(Int32.init), count > 0
        else { return [] }
        // Children (the embedded nbdkit) must not think the sockets are theirs.
        unsetenv("LISTEN_PID")
        unsetenv("LISTEN_FDS")
        unsetenv("LISTEN_FDNAMES")
        return (0..<count).map { 3 + $0 }
    }
}
