import NBDProtocol

/// The resources of the contract, recognised from the raw (still percent-encoded) path.
enum Route: Equatable {
    case exports
    case export(String)
    case data(String)
    case extents(String)
    case flush(String)
    case trim(String)
    case zero(String)
    /// The block checksum of a range, and the algorithms it offers.
    case checksum(String)
    case checksumAlgorithms(String)
    case health
    case ready
    case metrics
    case openAPI
    /// The disk browser: its page (`/`) and files (`/ui/…`).
    case page
    case asset(String)
    /// The base path without its trailing slash: redirected to the page.
    case baseRedirect

    /// Methods each resource defines (the `Allow` header of a 405).
    var allowed: [String] {
        switch self {
        case .data: ["GET", "HEAD", "PUT", "OPTIONS"]
        case .flush, .trim, .zero: ["POST"]
        default: ["GET", "HEAD"]
        }
    }

    /// The export's name as sent (still percent-encoded).
    var rawExportName: String? {
        switch self {
        case .export(let name), .data(let name), .extents(let name), .flush(let name), .trim(let name), .zero(let name),
             .checksum(let name), .checksumAlgorithms(let name): name
        default: nil
        }
    }

    /// Why an export name in a path is refused (a 400).
    struct BadExportName: Error, Equatable {
        let message: String
    }

    /// The decoded export name; refused when it is not valid percent-encoded UTF-8 or too long.
    func decodedExportName() throws(BadExportName) -> String? {
        guard let raw = rawExportName else { return nil }
        guard let name = NBDURI.percentDecode(Substring(raw)) else {
            throw BadExportName(message: "the export name is not valid percent-encoded UTF-8")
        }
        guard name.utf8.count <= NBDWire.maximumStringLength else {
            throw BadExportName(message: "the export name is longer than \(NBDWire.maximumStringLength) bytes")
        }
        return name
    }

    /// Parses a raw path; `nil` is a 404. Names stay encoded until `exportName()`.
    static func parse(_ rawPath: String) -> Route? {
        switch rawPath {
        case "": return .baseRedirect
        case "/": return .page
        case "/ui/app.js", "/ui/style.css": return .asset(String(rawPath.dropFirst("/ui/".count)))
        case "/exports": return .exports
        case "/healthz": return .health
        case "/readyz": return .ready
        case "/metrics": return .metrics
        case "/openapi.yaml": return .openAPI
        default: break
        }
        // "/exports/NAME[/RESOURCE[/algorithms]]" splits into "", "exports", NAME[, RESOURCE[,
        // "algorithms"]] (on the UTF-8 bytes: "/" never occurs inside a multi-byte character).
        let segments = rawPath.utf8.split(separator: UInt8(ascii: "/"), maxSplits: 4, omittingEmptySubsequences: false)
        guard segments.count >= 3, segments[0].isEmpty, segments[1].elementsEqual("exports".utf8) else { return nil }
        guard let name = String(segments[2]) else { return nil }
        if segments.count == 3 { return .export(name) }
        if segments.count == 5 {
            return segments[3].elementsEqual("checksum".utf8) && segments[4].elementsEqual("algorithms".utf8) ? .checksumAlgorithms(name) : nil
        }
        switch String(segments[3]) {
        case "data": return .data(name)
        case "extents": return .extents(name)
        case "flush": return .flush(name)
        case "trim": return .trim(name)
        case "zero": return .zero(name)
        case "checksum": return .checksum(name)
        default: return nil
        }
    }
}
