// pmfsd: serves a pmfs file system to VM guests (vhost-user-fs socket) and on
// the host (/dev/fuse mount), both at once if asked: one live file system.
import ArgumentParser
import CoreMetrics
import Dispatch
import FUSEDevice
import FUSEProtocol
import Glibc
import Logging
import PMFSConcurrency
import PMFSControl
import PMFSCore
import PMFSData
import PMFSMetadata
import PMFSMetrics
import PMFSServer
import Synchronization
import VhostUser

struct Pmfsd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfsd",
        abstract: "Serve a pmfs file system (metadata pool + data device) to guests and on the host.")

    @Option(help: ArgumentHelp("Read the settings from this YAML file (keys: the long option names; guests: a section per socket; see README, \"The configuration file\"); options given here override it. SIGHUP reads it again.", valueName: "file"))
    var config: String?

    @Option(help: "The metadata pool (made by mkfs.pmfs).")
    var pool: String?

    @Option(help: "The data device or preallocated data file.")
    var data: String?

    @Option(help: "Mount the file system here on the host (/dev/fuse).")
    var mount: String?

    @Option(help: "How the host mount takes requests: auto (FUSE over io_uring when the kernel offers it, else /dev/fuse), uring (io_uring or fail) or device (/dev/fuse read/write only). auto and uring turn the fuse module's enable_uring parameter on when run as root.")
    var fuseTransport: String?

    @Option(help: ArgumentHelp("Listen here for QEMU's vhost-user-fs-pci device (a Unix socket path); repeat it to share the file system with several VMs at once. Export options may follow, comma-separated: export=DIR (the guest's root, a directory in the file system), read-only, uid-map=GUEST:HOST:COUNT, gid-map=GUEST:HOST:COUNT (repeatable), devices=allow|deny, setid=allow|strip.", valueName: "path[,option...]"))
    var socket: [String] = []

    @Option(help: ArgumentHelp("Serve a guest on this already listening socket descriptor (as libvirt passes it); may be repeated; the same export options as --socket.", valueName: "n[,option...]"))
    var fd: [String] = []

    @Option(help: "Group allowed to connect to --socket (mode 0660); by default only root can.")
    var socketGroup: String?

    @Flag(help: "Print the vhost-user back-end capabilities as JSON (for libvirt) and exit.")
    var printCapabilities = false

    @Option(help: "The tag guests mount (set on QEMU's device; logged here for reference; default pmfs).")
    var tag: String?

    @Option(help: "Request queues offered to guests (the device's num-request-queues; default 1).")
    var queues: Int?

    @Option(help: "What guests may cache: none, auto (default: names and attributes for 1 s) or always (only writer).")
    var cache: String?

    @Option(help: "Guests' POSIX and flock locks: shared (pmfsd's lock table, seen by the host mount and every guest), local (each guest's kernel keeps its own, as virtiofsd does by default: no round trip per lock, but nobody else sees them) or auto (local when one guest socket is the only client, else shared).")
    var locks: String?

    @Flag(inversion: .prefixedNo, help: "Let guests cache writes in their page cache (FUSE writeback cache, as virtiofsd's -o writeback): faster small writes; the guest's kernel then keeps size and mtime, so use it with a guest that is the only writer.")
    var writeback: Bool?

    @Option(help: "The longest a guest queue's worker polls its ring after a burst before sleeping (default 50; adaptive, 0 while the guest is idle or slow; 0: event driven only).")
    var pollMicroseconds: Int?

    @Option(help: "Write-back cache size, with K/M/G suffix (default 256M).")
    var cacheSize: String?

    @Option(help: "I/O engine: auto (default: inline on memory-backed media, else io_uring), io_uring, threads or inline.")
    var ioEngine: String?

    @Option(help: "Worker threads: readers of /dev/fuse, and per guest the threads for requests that may block (default 4).")
    var workers: Int?

    @Flag(inversion: .prefixedNo, help: "Write-through: no write-back caching of file data (for comparison).")
    var writeThrough: Bool?

    @Option(help: "Log level: trace, debug, info (default), notice, warning, error.")
    var logLevel: String?

    @Option(help: ArgumentHelp("Listen for pmfsctl and libvirt's launches here (a Unix socket, mode 0600, root only); off unless given. \(ControlProtocol.defaultPath) is where pmfsctl and the launcher look first.", valueName: "path"))
    var control: String?

    // libvirt starts a virtiofs binary as `BINARY --fd=N -o source=DIR,... [--thread-pool-size=N] [-d]`:
    // without --pool, pmfsd is then a launcher asking the running pmfsd to serve that socket.
    @Option(name: .customShort("o"), help: ArgumentHelp("libvirt's virtiofs options (source=DIR, cache=, xattr, flock, posix_lock, sandbox=...): with --fd and without --pool, hand the socket to the running pmfsd (see README, \"with libvirt\").", valueName: "option,..."))
    var libvirtOptions: [String] = []

    @Option(help: ArgumentHelp("libvirt's virtiofsd thread count: accepted and ignored (--workers sets the daemon's).", visibility: .hidden))
    var threadPoolSize: Int?

    @Flag(name: .customShort("d"), help: "Debug log level (libvirt's virtiofsd -d).")
    var debug = false

    @Option(help: ArgumentHelp("Serve Prometheus metrics on GET /metrics at this numeric address and port, like 127.0.0.1:9464 or [::1]:9464 (port 0: any free port, logged). Off by default.", valueName: "address:port"))
    var metrics: String?

    @Option(help: "Confinement once set up: namespace (a private mount namespace, every capability but CAP_CHOWN dropped, a system-call allow-list) or none (for debugging).")
    var sandbox: SandboxMode = .namespace

    @Option(help: "With --sandbox namespace, a system call off the allow-list: kill (the process), log (allowed, and logged by the kernel's audit) or none (no filter).")
    var seccomp: SeccompAction = .kill

    @Option(help: .hidden)
    var unmountOnRequest: String?
}

/// Gauges read when the metrics are scraped, never on the request path.
extension Pmfsd {
    static func collectFileSystemGauges(_ fs: FileDataTier, into registry: MetricsRegistry) {
        func gauge(_ name: String) -> Gauge { Gauge(label: name, factory: registry) }
        let frames = gauge("pmfs_cache_frames"), used = gauge("pmfs_cache_frames_used"), dirty = gauge("pmfs_cache_frames_dirty")
        let inodes = gauge("pmfs_inodes"), freeInodes = gauge("pmfs_inodes_free")
        let blocks = gauge("pmfs_data_blocks"), freeBlocks = gauge("pmfs_data_blocks_free"), blockSize = gauge("pmfs_data_block_size_bytes")
        let poolBytes = gauge("pmfs_pool_bytes"), poolObjectBytes = gauge("pmfs_pool_object_bytes")
        let committed = CoreMetrics.Counter(label: "pmfs_pool_transactions_total", dimensions: [("outcome", "committed")], factory: registry)
        let aborted = CoreMetrics.Counter(label: "pmfs_pool_transactions_total", dimensions: [("outcome", "aborted")], factory: registry)
        let reported = Mutex((committed: UInt64(0), aborted: UInt64(0)))
        registry.onScrape(key: "file system") {
            // The pool counts; the counters move by what it counted since the last scrape.
            let now = fs.metadata.transactionCounts
            reported.withLock { last in
                if now.committed > last.committed { committed.increment(by: Int64(clamping: now.committed - last.committed)) }
                if now.aborted > last.aborted { aborted.increment(by: Int64(clamping: now.aborted - last.aborted)) }
                last = (max(last.committed, now.committed), max(last.aborted, now.aborted))
            }
            let cache = fs.cacheUsage
            frames.record(cache.frames); used.record(cache.used); dirty.record(cache.dirty)
            let s = fs.metadata.statistics()
            inodes.record(s.totalInodes); freeInodes.record(s.freeInodes)
            blocks.record(s.totalBlocks); freeBlocks.record(s.freeBlocks); blockSize.record(s.blockSize)
            poolBytes.record(s.poolBytes); poolObjectBytes.record(s.poolObjectBytes)
        }
    }

    static func collectSessionGauges(session: String, _ operations: PMFSOperations, _ server: FUSEServer, into registry: MetricsRegistry) {
        let handles = Gauge(label: "pmfs_open_handles", dimensions: [("session", session)], factory: registry)
        let inFlight = Gauge(label: "pmfs_fuse_requests_in_flight", dimensions: [("session", session)], factory: registry)
        registry.onScrape(key: "session \(session)") {
            handles.record(operations.openHandleCount)
            inFlight.record(server.requestsInFlight)
        }
    }

    static func collectVhostGauges(session: String, _ backend: VhostUserBackend, into registry: MetricsRegistry) {
        let connected = Gauge(label: "pmfs_vhost_connected", dimensions: [("session", session)], factory: registry)
        let queues = Gauge(label: "pmfs_vhost_queues_running", dimensions: [("session", session)], factory: registry)
        let depth = Gauge(label: "pmfs_vhost_queue_depth", dimensions: [("session", session)], factory: registry)
        registry.onScrape(key: "vhost \(session)") {
            connected.record(backend.isConnected ? 1 : 0)
            queues.record(backend.runningQueues)
            depth.record(backend.queuedRequests)
        }
    }
}

extension Pmfsd {
    /// The guest sockets and descriptors with their export policies, from
    /// `PATH[,option...]` and `N[,option...]`.
    static func listeners(sockets: [String], fds: [String], settle: Bool = true) throws -> [(Listener, GuestListenerSpec)] {
        var listeners: [Listener] = []
        var specs: [GuestListenerSpec] = []
        for text in sockets {
            do {
                let spec = try GuestListenerSpec.parse(text)
                listeners.append(.path(spec.target))
                specs.append(spec)
            } catch { throw ExportError("--socket \(text): \(error)") }
        }
        for text in fds {
            do {
                let spec = try GuestListenerSpec.parse(text)
                guard let n = Int32(spec.target), n >= 0 else { throw ExportError("'\(spec.target)' is not a descriptor number") }
                listeners.append(.descriptor(n))
                specs.append(spec)
            } catch { throw ExportError("--fd \(text): \(error)") }
        }
        if settle { GuestListenerSpec.settleSharing(&specs) }
        return Array(zip(listeners, specs))
    }

    /// One line for the log: what the guest sees and may do.
    static func describe(_ p: ExportPolicy) -> String {
        var parts = ["export \(p.path)"]
        if p.readOnly { parts.append("read-only") }
        if !p.uids.isIdentity { parts.append("uid map " + p.uids.ranges.map { "\($0.guest):\($0.host):\($0.count)" }.joined(separator: ",")) }
        if !p.gids.isIdentity { parts.append("gid map " + p.gids.ranges.map { "\($0.guest):\($0.host):\($0.count)" }.joined(separator: ",")) }
        parts.append(p.devices ? "devices allowed" : "no devices")
        parts.append(p.setID ? "set-id allowed" : "set-id stripped")
        return parts.joined(separator: ", ")
    }
}

/// A failure to start or serve: the message to stderr and a non-zero exit, so
/// a service manager or script sees it (ArgumentParser's CleanExit would print
/// to stdout and exit 0). Written directly: the C `stderr` global is not
/// concurrency-safe in Swift 6.
func failure(_ error: Error) -> ExitCode {
    var text = "pmfsd: \(error)\n"
    text.withUTF8 { _ = write(STDERR_FILENO, $0.baseAddress, $0.count) }
    return .failure
}

/// The kernel offers FUSE over io_uring only while the fuse module's
/// enable_uring parameter is Y: as root, turn it on (system-wide; it stays on)
/// and say so.
func allowRingTransport(logger: Logger) {
    switch FUSERingParameter.isEnabled() {
    case nil:
        logger.info("this kernel has no FUSE over io_uring (\(FUSERingParameter.path) is missing)")
    case false?:
        guard geteuid() == 0 else {
            logger.info("FUSE over io_uring is off (\(FUSERingParameter.path) is N) and only root may turn it on")
            return
        }
        let e = FUSERingParameter.enable()
        if e == 0 {
            logger.notice("turned FUSE over io_uring on: wrote Y to \(FUSERingParameter.path) (system-wide)")
        } else {
            logger.warning("could not turn FUSE over io_uring on (\(FUSERingParameter.path)): \(String(cString: strerror(e)))")
        }
    case true?:
        break
    }
}

/// Where a guest's QEMU connects.
enum Listener {
    case path(String)
    case descriptor(Int32)
}

Pmfsd.main()
