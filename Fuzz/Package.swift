// swift-tools-version:6.0
// libFuzzer targets over the protocol module and the gateway's HTTP parsing (no I/O): built with `--sanitize=fuzzer
// --sanitize=address` by scripts/fuzz, which also runs them over Fuzz/Corpus.
import Foundation
import PackageDescription

// A path dependency is named after its directory (the checkout's name, whatever it is).
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()
let protocolModule: Target.Dependency = .product(name: "NBDProtocol", package: root)

let fuzzTarget: [SwiftSetting] = [.swiftLanguageMode(.v6), .unsafeFlags(["-parse-as-library"])]

let package = Package(
    name: "nbd-fuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .executableTarget(name: "FuzzReplyDecoder", dependencies: [protocolModule], swiftSettings: fuzzTarget),
        .executableTarget(name: "FuzzHandshake", dependencies: [protocolModule], swiftSettings: fuzzTarget),
        .executableTarget(name: "FuzzURI", dependencies: [protocolModule], swiftSettings: fuzzTarget),
        .executableTarget(name: "FuzzConnection", dependencies: [protocolModule], swiftSettings: fuzzTarget),
        // The gateway's pure HTTP parsing, compiled from its own files (symlinks into
        // Sources/NBDGateway): the gateway module itself would bring libmicrohttpd and NIO.
        .target(name: "GatewayParsing", dependencies: [protocolModule], swiftSettings: [.swiftLanguageMode(.v6)]),
        .executableTarget(name: "FuzzRanges", dependencies: ["GatewayParsing"], swiftSettings: fuzzTarget),
        .executableTarget(name: "FuzzRequestTarget", dependencies: ["GatewayParsing"], swiftSettings: fuzzTarget),
        .executableTarget(name: "FuzzHTTPRequest", dependencies: ["GatewayParsing"], swiftSettings: fuzzTarget),
    ]
)
