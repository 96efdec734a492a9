// swift-tools-version:6.0
import PackageDescription

let strictSwift6: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "swift-nbd",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "NBDProtocol", targets: ["NBDProtocol"]),
        .library(name: "NBDClient", targets: ["NBDClient"]),
        .executable(name: "nbd", targets: ["nbd"]),
        .executable(name: "nbd-bench", targets: ["nbd-bench"]),
        .library(name: "NBDGateway", targets: ["NBDGateway"]),
        .executable(name: "nbd-gateway", targets: ["nbd-gateway"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "4.5.2"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
    ],
    targets: [
        // Wire format, incremental decoders and state machines: no I/O.
        .target(
            name: "NBDProtocol",
            dependencies: [.product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strictSwift6
        ),
        // Transport (TCP, Unix socket, TLS) and the public async client API.
        .target(
            name: "NBDClient",
            dependencies: [
                "NBDProtocol",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strictSwift6
        ),
        // libsodium, for BLAKE2b (crypto_generichash).
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),
        // ovirt-imageio-compatible block checksums: digests and the block plan, no I/O.
        .target(
            name: "NBDChecksum",
            dependencies: [
                "NBDProtocol",
                "CSodium",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            swiftSettings: strictSwift6
        ),
        .executableTarget(
            name: "nbd",
            dependencies: [
                "CMalloc",
                "NBDClient",
                "NBDProtocol",
                "NBDChecksum",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: strictSwift6
        ),
        .executableTarget(
            name: "nbd-bench",
            dependencies: [
                "NBDClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSwift6
        ),
        // libmicrohttpd, through a shim for its variadic calls; only the gateway's adapter imports it.
        .systemLibrary(name: "CMicroHTTPD", pkgConfig: "libmicrohttpd", providers: [.apt(["libmicrohttpd-dev"])]),
        // glibc's malloc_trim and mallopt: the gateway gives freed buffers back when it goes quiet,
        // nbd copy keeps them for reuse.
        .systemLibrary(name: "CMalloc"),
        // The REST gateway: routes (no sockets), connection pools, streaming, the libmicrohttpd adapter.
        .target(
            name: "NBDGateway",
            dependencies: [
                "NBDProtocol",
                "NBDClient",
                "NBDChecksum",
                "CMicroHTTPD",
                "CMalloc",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Crypto", package: "swift-crypto"),
            ],
            // The disk browser's files, compiled into the binary (no build step, nothing fetched).
            resources: [.embedInCode("UI/index.html"), .embedInCode("UI/app.js"), .embedInCode("UI/style.css")],
            swiftSettings: strictSwift6
        ),
        .executableTarget(
            name: "nbd-gateway",
            dependencies: [
                "NBDGateway",
                "CSpawn",
                "NBDClient",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            // In the executable itself: no resource bundle to install beside it (and no Foundation for Bundle).
            resources: [.embedInCode("openapi.yaml")],
            swiftSettings: strictSwift6
        ),
        // posix_spawn without leaking our descriptors into children (daemons would hold our sockets).
        .target(name: "CSpawn"),
        // Starts real NBD servers and peer tools for the tests (by PID, on Unix sockets or free ports).
        .target(
            name: "NBDTestSupport",
            dependencies: [
                "CSpawn", .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            ],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "NBDGatewayTests",
            dependencies: [
                "CSpawn",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                "NBDGateway",
                "NBDTestSupport",
                "NBDClient",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "NBDProtocolTests",
            dependencies: ["NBDProtocol", "NBDTestSupport", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: strictSwift6
        ),
        .testTarget(
            name: "NBDClientTests",
            dependencies: [
                "nbd",
                "NBDTestSupport",
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                "NBDClient",
                "NBDChecksum",
                "NBDProtocol",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strictSwift6
        ),
    ]
)
