import Metrics
import NBDClient

/// One export's NBD metrics: connections open, failed connects, bytes moved, NBD errors by
/// name. Made when the export first negotiates, so names nobody serves (a mistyped URL that
/// probes the backends) never become series.
struct PoolMetrics: Sendable {
    let export: String
    let connections: Gauge
    let connectFailures: Counter
    let bytesRead: Counter
    let bytesWritten: Counter

    init(export: String) {
        self.export = export
        let dimensions = [("export", export)]
        connections = Gauge(label: "nbd_gateway_nbd_connections", dimensions: dimensions)
        connectFailures = Counter(label: "nbd_gateway_nbd_connect_failures_total", dimensions: dimensions)
        bytesRead = Counter(label: "nbd_gateway_nbd_read_bytes_total", dimensions: dimensions)
        bytesWritten = Counter(label: "nbd_gateway_nbd_written_bytes_total", dimensions: dimensions)
    }

    /// An NBD command failed: counted under the server's error name (`EIO`, ...) or the
    /// client's code (`timeout`, `connection_lost`, ...). Rare, so the handle is looked up each time.
    func failed(_ error: NBDError) {
        Counter(label: "nbd_gateway_nbd_errors_total", dimensions: [("export", export), ("error", error.nbdErrorName ?? error.code.name)])
            .increment()
    }
}
