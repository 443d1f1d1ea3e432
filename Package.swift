// swift-tools-version: 6.2
import PackageDescription

/// Every Swift target of ours builds in Swift 6 mode with full strict concurrency,
/// and a warning is a build failure: "no warnings" is checked by the compiler.
let strict: [SwiftSetting] = [
    .treatAllWarnings(as: .error),
]

let package = Package(
    name: "PulseBridge",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "edge-agent", targets: ["edge-agent"]),
        .executable(name: "fleet-manager", targets: ["fleet-manager"]),
        .executable(name: "pulsebridge-bench", targets: ["pulsebridge-bench"]),
        .executable(name: "pulsebridge-demo", targets: ["pulsebridge-demo"]),
        .library(name: "MessageSchema", targets: ["MessageSchema"]),
        .library(name: "MQTT", targets: ["MQTT"]),
        .library(name: "RelayOutput", targets: ["RelayOutput"]),
        .library(name: "EdgeAgent", targets: ["EdgeAgent"]),
        .library(name: "FleetManager", targets: ["FleetManager"]),
        // What a payment server links: signed completions, results, the settlement rule.
        .library(name: "PaymentSDK", targets: ["PaymentSDK"]),
        .executable(name: "payment-server", targets: ["payment-server"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/x-sheep/swift-property-based", from: "2.0.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        // The customer's payment page (payment-server) only.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        // serve's /metrics: Prometheus's text format over swift-metrics' core types.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // NIOCore's SocketAddress (the console's peer address); Hummingbird builds on it already.
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
    ],
    targets: [
        // System libraries. Each is imported by exactly one Swift module family, `internal import`.
        .systemLibrary(
            name: "CMosquitto", pkgConfig: "libmosquitto",
            providers: [.apt(["libmosquitto-dev"])]),
        .systemLibrary(
            name: "CGPIOD", pkgConfig: "libgpiod",
            providers: [.apt(["libgpiod-dev"])]),
        .systemLibrary(
            name: "COpenSSL", pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]),
        .systemLibrary(
            name: "CQREncode", pkgConfig: "libqrencode",
            providers: [.apt(["libqrencode-dev"])]),
        // glibc's posix_spawn_file_actions_addclosefrom_np (declared only under _GNU_SOURCE).
        .systemLibrary(name: "CSpawn"),
        // bcrypt (libxcrypt) for nats-server's users file.
        .systemLibrary(
            name: "CCrypt",
            providers: [.apt(["libcrypt-dev"])]),
        // Ed25519 verification on the payment path (the fastest measured here).
        .systemLibrary(
            name: "CSodium", pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]),

        // Libraries.
        // The one version of a build: a marker in the binary, stamped per release.
        .target(name: "PulseBridgeVersion", swiftSettings: strict),
        // What the daemons share on their command line: log formats (--log-format text|json) and
        // config files (--config FILE.toml, environment variables) under their flags.
        .target(
            name: "DaemonSupport",
            dependencies: [
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        // A pthread-backed lock ThreadSanitizer can see (Synchronization.Mutex it cannot, on Linux).
        .target(name: "Locking", swiftSettings: strict),
        .target(
            name: "MQTT",
            dependencies: ["CMosquitto", "Locking", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "MessageSchema",
            dependencies: ["COpenSSL", "CSodium"],
            swiftSettings: strict),
        // One GPIO line over libgpiod 1.x or 2.x, whichever <gpiod.h> the build finds.
        .target(name: "CGPIOLines", dependencies: ["CGPIOD"]),
        .target(
            name: "RelayOutput",
            dependencies: ["CGPIOLines", "Locking", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        .target(
            name: "EdgeAgent",
            dependencies: [
                "MQTT", "MessageSchema", "RelayOutput", "PulseBridgeVersion", "Locking",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict),
        .target(
            name: "FleetManager",
            dependencies: [
                "MQTT", "MessageSchema", "CQREncode", "PulseBridgeVersion", "Locking", "PaymentSDK", "ChildProcesses", "CSodium", "CCrypt",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        // serve's HTTP side (--http): /metrics now, the operator console next (Hummingbird).
        // HTML escaping, form bodies and security headers, for both web servers.
        .target(
            name: "WebSupport",
            dependencies: [
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
            ],
            swiftSettings: strict),
        .target(
            name: "FleetConsole",
            dependencies: [
                "FleetManager", "MessageSchema", "Locking", "WebSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // The payment-server SDK: MQTT and the protocol types only, so a third party's payment
        // server links neither the registry nor the agent.
        .target(
            name: "PaymentSDK",
            dependencies: ["MQTT", "MessageSchema", "Locking", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),
        // The customer's side: payment page, checkout, providers, customer ledger (Hummingbird).
        .target(
            name: "PaymentServer",
            dependencies: [
                "PaymentSDK", "MessageSchema", "Locking", "DaemonSupport", "WebSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // Starting and stopping child processes without the blocked-signal-mask hang: the
        // agent's supervisor (production) and everything below that starts brokers and agents.
        .target(
            name: "ChildProcesses",
            dependencies: ["CSpawn", "Locking"],
            swiftSettings: strict),
        // A broker on a free loopback port, for tests, the benchmark and the demo
        // (re-exports ChildProcesses).
        .target(
            name: "LocalServices",
            dependencies: ["ChildProcesses", "Locking", .product(name: "Logging", package: "swift-log")],
            swiftSettings: strict),

        // Test helpers shared by the test targets and the benchmark.
        // Thousands of simulated units in one process (MQTT 3.1.1 over NIO, the agent's
        // DecisionCore): for benchmarks and scale tests, never a production dependency.
        .target(
            name: "UnitSimulator",
            dependencies: [
                "EdgeAgent", "MessageSchema", "RelayOutput", "Locking",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ],
            swiftSettings: strict),
        .target(
            name: "TestSupport",
            dependencies: ["MQTT", "LocalServices", "MessageSchema", "RelayOutput", "EdgeAgent", "Locking", "FleetManager", "PaymentSDK"],
            swiftSettings: strict),

        // Executables: thin `@main` commands.
        .executableTarget(
            name: "edge-agent",
            dependencies: [
                "EdgeAgent", "MessageSchema", "RelayOutput", "ChildProcesses", "PulseBridgeVersion", "DaemonSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "fleet-manager",
            dependencies: [
                "FleetManager", "FleetConsole", "MessageSchema", "MQTT", "PulseBridgeVersion", "DaemonSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "payment-server",
            dependencies: [
                "PaymentServer", "PaymentSDK", "PulseBridgeVersion", "DaemonSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        .executableTarget(
            name: "pulsebridge-bench",
            dependencies: [
                "MQTT", "MessageSchema", "RelayOutput", "LocalServices", "EdgeAgent", "FleetManager", "TestSupport", "PaymentSDK", "Locking",
                "UnitSimulator",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // The demo fleet: broker, fleet, three machines with simulated GPIO, payments.
        .executableTarget(
            name: "pulsebridge-demo",
            dependencies: [
                "FleetManager", "EdgeAgent", "MessageSchema", "RelayOutput", "LocalServices", "MQTT", "PaymentSDK", "TestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),
        // The C floor the MQTT benchmark compares against: the same round trip
        // written directly on libmosquitto.
        .executableTarget(
            name: "mqtt-floor",
            dependencies: ["CMosquitto"],
            path: "Sources/CMQTTFloor"),

        // Tests.
        .testTarget(
            name: "MQTTTests",
            dependencies: ["MQTT", "LocalServices", "TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "MessageSchemaTests",
            dependencies: [
                "MessageSchema", "LocalServices",
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            resources: [.copy("Fixtures")],
            swiftSettings: strict),
        .testTarget(
            name: "EdgeAgentTests",
            dependencies: ["EdgeAgent", "MQTT", "MessageSchema", "RelayOutput", "LocalServices", "TestSupport", "DaemonSupport",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PropertyBased", package: "swift-property-based"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "FleetManagerTests",
            dependencies: [
                "FleetManager", "FleetConsole", "EdgeAgent", "MQTT", "MessageSchema", "LocalServices", "TestSupport", "PulseBridgeVersion",
                "PaymentSDK", "UnitSimulator", .product(name: "GRDB", package: "GRDB.swift"),
            ],
            swiftSettings: strict),
        .testTarget(
            name: "PaymentServerTests",
            dependencies: [
                "PaymentServer", "PaymentSDK", "FleetManager", "MessageSchema", "LocalServices", "TestSupport", "MQTT", "Locking",
            ],
            swiftSettings: strict),
        .testTarget(
            name: "ChaosTests",
            dependencies: ["TestSupport"],
            swiftSettings: strict),
        .testTarget(
            name: "DemoTests",
            dependencies: ["LocalServices", "TestSupport", "MessageSchema"],
            swiftSettings: strict),
        .testTarget(
            name: "RelayOutputTests",
            dependencies: ["RelayOutput"],
            swiftSettings: strict),
    ]
)
