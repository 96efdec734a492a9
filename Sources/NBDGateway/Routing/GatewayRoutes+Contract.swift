import NIOCore

extension GatewayRoutes {
    /// The contract as served: with a `servers` entry naming where this gateway is reached (its
    /// base path, and the scheme and host a trusted proxy says the client used).
    func servedContract(_ request: GatewayRequest) -> GatewayResponse {
        let document = settings.openAPIDocument
        let entry = "servers:\n  - url: \"\(publicURL(request))\"\n"
        let served: String
        if let paths = document.firstRange(of: "\npaths:") {
            served = document[..<paths.lowerBound] + "\n" + entry + document[document.index(after: paths.lowerBound)...]
        } else {
            served = document
        }
        return GatewayResponse(status: 200, headers: [("Content-Type", "application/yaml")], body: .bytes(ByteBuffer(string: served)))
    }

    /// `scheme://host/base-path`, or the base path alone when the request names no host.
    func publicURL(_ request: GatewayRequest) -> String {
        func first(_ name: String) -> String? {
            guard request.isFromTrustedProxy, let value = request.header(name) else { return nil }
            return value.split(separator: ",").first.map { $0.trimmingCharacters(in: " \t") }
        }
        let ownScheme = request.isSecure ? "https" : "http"
        let scheme = first("X-Forwarded-Proto").flatMap { ["http", "https"].contains($0.lowercased()) ? $0.lowercased() : nil } ?? ownScheme
        let host = (first("X-Forwarded-Host") ?? request.header("Host")).flatMap { host in
            // Only what a host and port can hold: nothing a client sends ends up as YAML.
            host.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte | 0x20 >= 0x61 && byte | 0x20 <= 0x7A) || ".-:[]_".utf8.contains(byte)
            } && !host.isEmpty ? host : nil
        }
        guard let host else { return settings.basePath.isEmpty ? "/" : settings.basePath }
        return "\(scheme)://\(host)\(settings.basePath)"
    }
}
