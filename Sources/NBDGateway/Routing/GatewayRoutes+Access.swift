import Synchronization

extension Route {
    /// Whether this method on this resource changes the disk (an `ro` token may not).
    func writes(method: String) -> Bool {
        switch self {
        case .data: method == "PUT"
        case .flush, .trim, .zero: method == "POST"
        default: false
        }
    }

    /// Routes that stay open with `--auth-file`: they name no export.
    var isPublic: Bool {
        switch self {
        case .health, .ready, .openAPI, .page, .asset, .baseRedirect: true
        default: false
        }
    }
}

extension GatewayRoutes {
    /// With `--auth-file`: the request's token, checked once its route is known and before
    /// anything else. An export the token may not see does not exist for it (404, as for any
    /// unknown name); a read-only token asking to write is refused (403 `access_denied`).
    @discardableResult
    func authorize(_ request: GatewayRequest, _ route: Route) throws(GatewayError) -> AccessGrant? {
        guard let access = settings.access, !route.isPublic else { return nil }
        guard let grant = access.authenticate(request) else {
            throw .unauthorized(request.header("Authorization") == nil ? "a token is needed (Authorization: Bearer TOKEN)" : "the token is not valid")
        }
        switch route {
        case .metrics:
            guard grant.isOperator else { throw .accessDenied("/metrics needs a token for every export (*)") }
        case .exports, .health, .ready, .openAPI, .page, .asset, .baseRedirect:
            break
        case .export, .data, .extents, .flush, .trim, .zero, .checksum, .checksumAlgorithms:
            let name = try exportName(route) ?? ""
            guard grant.exports.contains(name) else { throw .unknownExport(name) }
            if route.writes(method: request.method) && !grant.mayWrite {
                throw .accessDenied("the token may only read export \"\(name)\"", export: name)
            }
        }
        return grant
    }

    /// With `--max-in-flight`: a place among the requests that wait for NBD work, or a 503
    /// before any work starts. When it returns true the caller calls `inFlight.release()` once
    /// its answer is ready.
    func admit(_ route: Route) throws(GatewayError) -> Bool {
        guard let maximum = settings.maximumInFlight, route.needsBackend else { return false }
        guard inFlight.admit(maximum: maximum) else {
            metrics.overloaded.increment()
            throw .unavailable("\(maximum) requests are waiting for the disks already (--max-in-flight)", code: .overloaded)
        }
        return true
    }
}

extension Route {
    /// Routes whose answer waits on an NBD server.
    var needsBackend: Bool {
        switch self {
        case .health, .metrics, .openAPI, .page, .asset, .baseRedirect: false
        default: true
        }
    }
}

/// Counts requests between admission and their answer; never queues.
final class InFlightLimit: Sendable {
    private let count = Atomic<Int>(0)

    func admit(maximum: Int) -> Bool {
        if count.add(1, ordering: .relaxed).newValue > maximum {
            count.subtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    func release() { count.subtract(1, ordering: .relaxed) }

    var current: Int { count.load(ordering: .relaxed) }
}
