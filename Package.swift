// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "pmfs",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "pmfsd", targets: ["Pmfsd"]),
        .executable(name: "pmfsctl", targets: ["PmfsCtl"]),
        .executable(name: "mkfs.pmfs", targets: ["MkfsPmfs"]),
        .executable(name: "fsck.pmfs", targets: ["FsckPmfs"]),
        .executable(name: "pmfs-inspect", targets: ["PmfsInspect"]),
        .executable(name: "pmfs-torture", targets: ["PmfsTorture"]),
        .executable(name: "pmfs-damage-fuzz", targets: ["PmfsDamageFuzz"]),
        .executable(name: "pmfs-crash-writer", targets: ["PmfsCrashWriter"]),
        .executable(name: "pmfs-bench-data", targets: ["PmfsDataBench"]),
        .executable(name: "pmfs-bench-vhost", targets: ["PmfsVhostBench"]),
        .library(name: "PMFSMetadata", targets: ["PMFSMetadata"]),
        .library(name: "PMFSCheck", targets: ["PMFSCheck"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.0"),
        // pmfsd --config: the file's values (YAML trait) and, through Yams, each key's line.
        .package(url: "https://github.com/apple/swift-configuration", from: "1.4.0", traits: ["YAML"]),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // Locks, conditions, threads and the monotonic clock every module uses
        // (the bottom of the module graph: depends on nothing of pmfs).
        .target(name: "PMFSConcurrency", dependencies: ["CPMFSConcurrency"]),
        // Thread naming (GNU extensions Glibc's module lacks), for PMFSConcurrency only.
        .target(name: "CPMFSConcurrency"),
        // C shims over libpmemobj and the on-media structures (fixed layout).
        .target(
            name: "CPMDK",
            linkerSettings: [.linkedLibrary("pmemobj"), .linkedLibrary("pmem")]
        ),
        // C shims over liburing (feature macros, flag macros, O_DIRECT).
        .target(
            name: "CURing",
            linkerSettings: [.linkedLibrary("uring")]
        ),
        // The data tier's I/O: the data device and its io_uring / thread-pool engines.
        .target(
            name: "PMFSData",
            dependencies: [
                "CURing", "PMFSConcurrency",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        // The file-system core: file data (cache, write-back, fsync) over the
        // metadata engine and the data tier.
        .target(
            name: "PMFSCore",
            dependencies: [
                "PMFSConcurrency", "PMFSMetadata", "PMFSData",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ]
        ),
        // The FUSE kernel ABI (linux/fuse.h) and mount constants.
        .target(name: "CFUSE"),
        // The transport-independent FUSE engine: decode, dispatch, encode.
        .target(name: "FUSEProtocol", dependencies: ["CFUSE", "PMFSConcurrency", .product(name: "CoreMetrics", package: "swift-metrics")]),
        // pmfsd's metrics: the swift-metrics backend (swift-prometheus plus a
        // lock-free latency histogram) and the HTTP endpoint (swift-nio).
        .target(
            name: "PMFSMetrics",
            dependencies: [
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // pmfs behind the FUSE engine: FUSE operations over the metadata engine and the core.
        .target(
            name: "PMFSServer",
            dependencies: [
                "FUSEProtocol", "CFUSE", "PMFSConcurrency", "PMFSCore", "PMFSMetadata",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The host transport: /dev/fuse, mount(2), worker threads; FUSE over io_uring.
        .target(
            name: "FUSEDevice",
            dependencies: ["FUSEProtocol", "CFUSE", "CURing", "PMFSConcurrency", .product(name: "Logging", package: "swift-log")]
        ),
        // C helpers for vhost-user: SCM_RIGHTS, ring memory ordering, eventfd.
        .target(name: "CVhost"),
        // The guest transport: a vhost-user-fs backend over split virtqueues.
        .target(
            name: "VhostUser",
            dependencies: ["CVhost", "FUSEProtocol", "PMFSConcurrency", .product(name: "Logging", package: "swift-log")]
        ),
        // A vhost-user front end that plays QEMU and the guest (memfd memory,
        // split rings, eventfds): the daemon-side benchmark and transport tests.
        .target(name: "VhostUserFrontEnd", dependencies: ["CVhost", "CFUSE", "PMFSConcurrency"], path: "Testing/VhostUserFrontEnd"),
        // Per-request latency of a vhost-user-fs back end (pmfsd or virtiofsd): tools/bench/vhost.sh.
        .executableTarget(
            name: "PmfsVhostBench",
            dependencies: ["VhostUserFrontEnd", "CFUSE", "PMFSConcurrency", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Benchmarks/PmfsVhostBench"
        ),
        // The persistent-memory metadata engine: inodes, directories, extents, free space.
        .target(
            name: "PMFSMetadata",
            dependencies: [
                "CPMDK", "PMFSConcurrency",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The checker behind fsck.pmfs: numbered passes over a pool, repair with -y.
        .target(
            name: "PMFSCheck",
            dependencies: ["PMFSMetadata", "CPMDK"]
        ),
        // pmfsd's confinement: mount namespace, capabilities, seccomp allow-list (libseccomp).
        .target(name: "CSandbox", linkerSettings: [.linkedLibrary("seccomp")]),
        // pmfsd's control socket protocol (JSON lines) and its client.
        .target(name: "PMFSControl", dependencies: ["CVhost"]),
        // pmfsctl: what a running pmfsd serves, over its control socket.
        .executableTarget(
            name: "PmfsCtl",
            dependencies: ["PMFSControl", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "Pmfsd",
            dependencies: [
                "PMFSServer", "FUSEDevice", "VhostUser", "FUSEProtocol", "PMFSConcurrency", "PMFSCore", "PMFSData", "PMFSMetadata", "PMFSControl", "PMFSMetrics", "CSandbox",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Configuration", package: "swift-configuration"),
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .executableTarget(
            name: "MkfsPmfs",
            dependencies: [
                "PMFSConcurrency", "PMFSMetadata",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "FsckPmfs",
            dependencies: [
                "PMFSMetadata", "PMFSCheck",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Linux headers Glibc's module lacks (xattr calls, SEEK_DATA/SEEK_HOLE), for the damage fuzzer's mount walk.
        .target(name: "CLinux", path: "Testing/CLinux"),
        // The pool-damage fuzzer (runs fsck.pmfs, pmfsd and itself as children).
        .executableTarget(
            name: "PmfsDamageFuzz",
            dependencies: [
                "PMFSConcurrency", "PMFSMetadata", "PMFSCore", "PMFSData", "FUSEDevice", "CFUSE", "CPMDK", "CLinux",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Testing/PmfsDamageFuzz"
        ),
        .executableTarget(
            name: "PmfsInspect",
            dependencies: [
                "PMFSMetadata", "CPMDK", "PMFSControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Child process of the crash tests: random namespace operations until killed.
        .executableTarget(
            name: "PmfsTorture",
            dependencies: [
                "PMFSConcurrency", "PMFSMetadata",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            path: "Testing/PmfsTorture"
        ),
        // Kills pmfs-torture at random points and checks the pool after each kill.
        // Depends on it for its model (and so that it is built before the tests).
        .testTarget(
            name: "CrashTests",
            dependencies: [
                "PMFSMetadata", "PMFSCheck", "PmfsTorture",
                .product(name: "SystemPackage", package: "swift-system"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        // The data-tier benchmark against ext4 (tools/bench/data.sh).
        .executableTarget(
            name: "PmfsDataBench",
            dependencies: [
                "PMFSConcurrency", "PMFSCore", "PMFSData", "PMFSMetadata",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Benchmarks/PmfsDataBench"
        ),
        // Child process of the data crash tests: writes and fsyncs until killed.
        .executableTarget(
            name: "PmfsCrashWriter",
            dependencies: [
                "PMFSCore", "PMFSData", "PMFSMetadata",
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Testing/PmfsCrashWriter"
        ),
        .testTarget(
            name: "PMFSCoreTests",
            // The crash tests run the writer, so it is built before them.
            dependencies: ["PMFSConcurrency", "PMFSCore", "PMFSData", "PMFSMetadata", "PMFSCheck", "PmfsCrashWriter"]
        ),
        // Builders of the FUSE messages the engine's tests send (shared by three test targets).
        .target(name: "FUSETestSupport", dependencies: ["FUSEProtocol", "CFUSE"], path: "Tests/Support/FUSETestSupport"),
        // A formatted pool and data file on /dev/shm served by a FileSystem (ServerTests, TransportTests).
        .target(name: "FileSystemTestSupport", dependencies: ["PMFSCore", "PMFSData", "PMFSMetadata"], path: "Tests/Support/FileSystemTestSupport"),
        // What pmfs's io_uring rings refuse (their restrictions), on the bare C shim.
        .testTarget(name: "RingTests", dependencies: ["CURing"]),
        // Malformed FUSE messages and hostile descriptor chains; the host mount over FUSE io_uring.
        .testTarget(
            name: "TransportTests",
            dependencies: ["FUSEProtocol", "CFUSE", "FUSETestSupport", "FileSystemTestSupport", "VhostUser", "VhostUserFrontEnd", "FUSEDevice", "PMFSConcurrency", "PMFSServer", "PMFSCore", "PMFSData", "PMFSMetadata", "Pmfsd", "PmfsCtl", "MkfsPmfs"]
        ),
        // Host mount and a second session on one file system (real /dev/fuse).
        .testTarget(
            name: "ServerTests",
            dependencies: ["PMFSServer", "FUSEDevice", "FUSEProtocol", "CFUSE", "FUSETestSupport", "FileSystemTestSupport", "PMFSConcurrency", "PMFSCore", "PMFSData", "PMFSMetadata"]
        ),
        .testTarget(
            name: "PMFSMetadataTests",
            dependencies: ["PMFSMetadata", "PMFSCheck", "CPMDK"]
        ),
        // The metrics backend, names and --metrics parsing; the endpoint over real sockets.
        .testTarget(
            name: "MetricsTests",
            dependencies: ["PMFSMetrics", "FUSEProtocol", "CFUSE", "FUSETestSupport", "PMFSConcurrency", .product(name: "CoreMetrics", package: "swift-metrics")]
        ),
        // pmfsd's configuration file: parsing, validation, what a reload changes.
        .testTarget(
            name: "ConfigTests",
            dependencies: ["Pmfsd", "PMFSServer"]
        ),
        // The concurrency kit: exclusion under contention, timed waits, threads.
        .testTarget(name: "ConcurrencyTests", dependencies: ["PMFSConcurrency", "CPMFSConcurrency"]),
        .testTarget(
            name: "PMFSCheckTests",
            dependencies: ["PMFSCheck", "PMFSConcurrency", "PMFSMetadata", "CPMDK"]
        ),
        // Runs the built mkfs.pmfs and pmfs-inspect; depending on them gets them built first.
        .testTarget(
            name: "ToolsTests",
            dependencies: ["PMFSMetadata", "MkfsPmfs", "PmfsInspect", "Pmfsd", "FsckPmfs", "PmfsDamageFuzz"]
        ),
        .executableTarget(
            name: "MetadataBenchmarks",
            dependencies: [
                "PMFSMetadata",
                .product(name: "Benchmark", package: "benchmark"),
            ],
            path: "Benchmarks/MetadataBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
        // The request path without a transport: time and heap allocations per FUSE request.
        .executableTarget(
            name: "RequestPathBenchmarks",
            dependencies: [
                "FUSEProtocol", "CFUSE", "PMFSServer", "PMFSCore", "PMFSData", "PMFSMetadata", "PMFSMetrics",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
            ],
            path: "Benchmarks/RequestPathBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        ),
    ]
)
