extension NBDClient {
    /// Closes the socket now, without waiting for replies or sending NBD_CMD_DISC: every
    /// request in flight fails (`.connectionLost`). For shutdowns that cannot wait any longer.
    public func abort() async {
        try? await channel.close()
    }
}
