/// Settings of the HTTP listener.
public struct HTTPServerConfiguration: Sendable {
    public var host: String
    /// 0 binds a free port (the server reports the one bound).
    public var port: Int
    /// Threads answering HTTP (each with its own epoll); 1 is one internal thread.
    public var threads: Int
    /// Per-connection memory (headers, upload chunks up to half of it). libmicrohttpd 0.9.75
    /// zeroes all of it after every request, so small is fast for small requests.
    public var connectionMemoryLimit: Int
    /// Seconds an idle keep-alive connection stays open.
    public var connectionTimeout: Int
    /// Seconds a connection has to send a whole request header, a deadline however slowly it
    /// drips (slow or stuck clients hold no slot for long).
    public var headerTimeout: Int = 30
    /// Largest request header section accepted (answered 431 above it).
    public var maximumHeaderBytes: Int
    /// How long requests in progress may take to finish once shutdown begins; after it, those
    /// still waiting on NBD are answered 503 (or their bodies cut) and the server stops.
    public var shutdownGrace: Duration
    /// `--base-path`: every route lives under it ("" or "/prefix", no trailing slash).
    public var basePath: String = ""
    /// Also serve on this Unix socket.
    public var unixSocketPath: String?
    /// Listening sockets handed over by systemd (`LISTEN_FDS`): served instead of host and port.
    public var inheritedSockets: [Int32] = []
    /// PEM certificate chain and key: serve HTTPS instead of HTTP on every TCP listener.
    public var https: HTTPSCredentials?
    /// Most connections open at once, and from one client address.
    public var maximumConnections: Int?
    public var maximumConnectionsPerClient: Int?
    /// Where each finished request is recorded (`--access-log`).
    public var accessLog: AccessLog?
    /// Whose `X-Forwarded-*` headers are believed.
    public var trustedProxies = TrustedProxies()
    /// Origins whose pages may read answers (CORS headers on every answer).
    public var cors = CORSPolicy()

    public init(
        host: String = "127.0.0.1", port: Int = 8080, threads: Int = 2, connectionMemoryLimit: Int = 64 << 10,
        connectionTimeout: Int = 120, maximumHeaderBytes: Int = 16 << 10, shutdownGrace: Duration = .seconds(10)
    ) {
        self.host = host
        self.port = port
        self.threads = threads
        self.connectionMemoryLimit = connectionMemoryLimit
        self.connectionTimeout = connectionTimeout
        self.maximumHeaderBytes = maximumHeaderBytes
        self.shutdownGrace = shutdownGrace
    }
}

/// A certificate chain and its private key, in PEM.
public struct HTTPSCredentials: Sendable {
    public var certificatePEM: String
    public var keyPEM: String

    public init(certificatePEM: String, keyPEM: String) {
        self.certificatePEM = certificatePEM
        self.keyPEM = keyPEM
    }
}
