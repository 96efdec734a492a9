import ArgumentParser
import Logging
import NBDClient

@main
struct NBDTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nbd",
        abstract: "Talk to NBD servers: list exports, show metadata, read, write, map allocation.",
        subcommands: [ListCommand.self, InfoCommand.self, ReadCommand.self, WriteCommand.self, MapCommand.self, ChecksumCommand.self, CopyCommand.self]
    )
}

/// Options every subcommand takes.
struct ConnectionOptions: ParsableArguments {
    @Argument(help: "NBD URI: nbd://host[:port]/export, nbds://..., nbd+unix:///export?socket=PATH")
    var uri: String

    @OptionGroup var client: ClientOptions

    var clientConfiguration: NBDClientConfiguration { client.configuration }

    func connect() async throws -> NBDClient {
        try await client.connect(to: uri)
    }
}

/// How to connect: TLS and the reply timeout.
struct ClientOptions: ParsableArguments {
    @Option(name: .customLong("tls-ca"), help: "PEM file of CA certificates to trust (nbds://).")
    var tlsCA: String?

    @Option(name: .customLong("tls-cert"), help: "PEM client certificate (nbds://).")
    var tlsCertificate: String?

    @Option(name: .customLong("tls-key"), help: "PEM client private key (nbds://).")
    var tlsKey: String?

    @Flag(name: .customLong("tls-no-verify"), help: "Do not verify the server's certificate.")
    var tlsNoVerify = false

    @Option(help: "Seconds to wait for each reply (default: no limit).")
    var timeout: Int?

    var configuration: NBDClientConfiguration {
        var configuration = NBDClientConfiguration()
        if tlsCA != nil || tlsCertificate != nil || tlsKey != nil || tlsNoVerify {
            configuration.tls = NBDTLSConfiguration(
                caCertificateFile: tlsCA, clientCertificateFile: tlsCertificate, clientKeyFile: tlsKey, verifyPeer: !tlsNoVerify
            )
        }
        configuration.requestTimeout = timeout.map { .seconds(Int64($0)) }
        return configuration
    }

    var logger: Logger {
        var logger = Logger(label: "nbd")
        logger.logLevel = .warning
        return logger
    }

    func connect(to uri: String) async throws -> NBDClient {
        try await NBDClient.connect(to: uri, configuration: configuration, logger: logger)
    }
}

func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let error as ExitCode {
        throw error
    } catch {
        // NBDError's description names the NBD error (EIO, NBD_REP_ERR_POLICY, ...).
        StandardStreams.writeError("nbd: \(error)\n")
        throw ExitCode(1)
    }
}
