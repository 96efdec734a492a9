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
    /// Largest request header section accepted (answered 431 above it).
    public var maximumHeaderBytes: Int
    /// How long requests in progress may take to finish once shutdown begins; after it, those
    /// still waiting on NBD are answered 503 (or their bodies cut) and the server stops.
    public var shutdownGrace: Duration

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
