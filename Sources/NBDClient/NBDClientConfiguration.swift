import NBDProtocol
import NIOCore
import NIOPosix

/// TLS settings for `nbds://` connections (STARTTLS with X.509 certificates).
public struct NBDTLSConfiguration: Hashable, Sendable {
    /// PEM file of CA certificates to trust; nil trusts the system's roots.
    public var caCertificateFile: String?
    /// PEM client certificate, for servers that check clients.
    public var clientCertificateFile: String?
    /// PEM private key of the client certificate.
    public var clientKeyFile: String?
    /// Whether to verify the server's certificate and host name (default true).
    public var verifyPeer: Bool
    /// Host name to check the certificate against; defaults to the URI's host.
    public var serverName: String?

    public init(
        caCertificateFile: String? = nil,
        clientCertificateFile: String? = nil,
        clientKeyFile: String? = nil,
        verifyPeer: Bool = true,
        serverName: String? = nil
    ) {
        self.caCertificateFile = caCertificateFile
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
        self.verifyPeer = verifyPeer
        self.serverName = serverName
    }

    /// Settings from a libnbd-style certificate directory (`ca-cert.pem`, `client-cert.pem`, `client-key.pem`).
    public static func directory(_ path: String, verifyPeer: Bool = true) -> NBDTLSConfiguration {
        let base = path.hasSuffix("/") ? path : path + "/"
        let clientCert = base + "client-cert.pem"
        let clientKey = base + "client-key.pem"
        let hasClient = FileCheck.exists(clientCert) && FileCheck.exists(clientKey)
        return NBDTLSConfiguration(
            caCertificateFile: FileCheck.exists(base + "ca-cert.pem") ? base + "ca-cert.pem" : nil,
            clientCertificateFile: hasClient ? clientCert : nil,
            clientKeyFile: hasClient ? clientKey : nil,
            verifyPeer: verifyPeer
        )
    }
}

/// How an `NBDClient` negotiates and behaves.
public struct NBDClientConfiguration: Sendable {
    /// TLS settings; required for `nbds://` URIs (defaults are derived from the URI when nil).
    public var tls: NBDTLSConfiguration?
    /// Ask the server for structured replies (sparse reads, block status, error messages).
    public var structuredReplies: Bool
    /// Metadata contexts to request; `base:allocation` enables `blockStatus`.
    public var metaContexts: [String]
    /// When not empty: list the contexts the export offers (`NBDExportInfo.availableMetaContexts`)
    /// and request also those whose names start with one of these (e.g. `qemu:dirty-bitmap:`).
    public var listedContextPrefixes: [String] = []
    /// Most requests one connection keeps in flight.
    public var maximumRequestsInFlight: Int
    /// Most payload bytes (read or write) one connection keeps in flight.
    public var maximumBytesInFlight: Int
    /// A request with no reply after this long fails with `.timeout` and closes the connection.
    public var requestTimeout: TimeAmount?
    /// Limit on connecting and negotiating.
    public var connectTimeout: TimeAmount
    /// Where the connection's I/O runs.
    public var eventLoopGroup: any EventLoopGroup
    /// Largest buffer one socket read fills. Replies are handed out as slices of these buffers.
    public var receiveBufferSize: Int
    /// Receive buffers the connection keeps for reuse: one is read into again once every slice
    /// of it has been released. Enough of them to cover what a reader holds at once (say
    /// `window × chunk` of a streaming read) means no allocation, page fault or zeroing per read.
    public var receiveBufferPoolSize: Int
    /// Shared by many connections: the pool beyond one buffer is borrowed from it while
    /// requests are in flight and given back when the connection is idle (see
    /// `NBDReceiveBufferBudget`). Nil: each connection keeps its whole pool.
    public var receiveBufferBudget: NBDReceiveBufferBudget?

    public init(
        tls: NBDTLSConfiguration? = nil,
        structuredReplies: Bool = true,
        metaContexts: [String] = [NBDMetaContext.baseAllocation],
        maximumRequestsInFlight: Int = 64,
        maximumBytesInFlight: Int = 64 << 20,
        requestTimeout: TimeAmount? = nil,
        connectTimeout: TimeAmount = .seconds(30),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        receiveBufferSize: Int = 256 << 10,
        receiveBufferPoolSize: Int = 16
    ) {
        self.tls = tls
        self.structuredReplies = structuredReplies
        self.metaContexts = metaContexts
        self.maximumRequestsInFlight = maximumRequestsInFlight
        self.maximumBytesInFlight = maximumBytesInFlight
        self.requestTimeout = requestTimeout
        self.connectTimeout = connectTimeout
        self.eventLoopGroup = eventLoopGroup
        self.receiveBufferSize = max(4096, receiveBufferSize)
        self.receiveBufferPoolSize = max(1, receiveBufferPoolSize)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

enum FileCheck {
    static func exists(_ path: String) -> Bool { access(path, F_OK) == 0 }
}
