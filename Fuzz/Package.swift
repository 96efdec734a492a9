// swift-tools-version:6.0
// libFuzzer targets over the protocol module (no I/O): built with `--sanitize=fuzzer
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
    ]
)
