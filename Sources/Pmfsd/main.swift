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

    @Option(help: "I/O engine: auto (default), io_uring or threads.")
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

    func run() throws {
        if let unmountOnRequest { throw Sandbox.unmountOnRequest(unmountOnRequest) }
        if printCapabilities {
            print("{\n  \"type\": \"fs\"\n}")
            return
        }
        if pool == nil && config == nil && !libvirtOptions.isEmpty {
            throw LibvirtLauncher(fds: fd, options: libvirtOptions, threadPoolSize: threadPoolSize, debug: debug, control: control).run()
        }
        guard libvirtOptions.isEmpty else { throw ValidationError("-o is libvirt's launch (with --fd and without --pool)") }
        // SIGTERM/SIGINT (stop) and SIGHUP (reload) are taken by one thread with
        // sigwait: blocked here, before any thread exists, so every thread
        // inherits the mask and none dies of them.
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        let file: ConfigFile?
        do { file = try config.map { try ConfigFile.load(path: $0) } } catch { throw failure(error) }
        // Sockets systemd listens on for us; an fd the flags or the file name gets their options.
        let activated = SocketActivation.descriptors()
        let settings: DaemonSettings
        do { settings = try DaemonSettings.make(self, file: file, activated: activated) } catch let e as ValidationError { throw e } catch { throw failure(error) }
        let levels = LogLevelSwitch(settings.logLevel)
        LoggingSystem.bootstrap { SwitchedLogHandler(label: $0, levels: levels) }
        let logger = Logger(label: "pmfsd")
        if let file { logger.notice("configuration \(file.path): \(file.values.count) setting(s), \(file.guests.count) guest(s)") }
        guard settings.mount != nil || !settings.guests.isEmpty else {
            throw ValidationError("nothing to serve: give --mount DIR, --socket PATH (or --fd N), or both (or mount: and guests: in --config)")
        }
        let planned: [PlannedGuest]
        do { planned = try settings.plan(others: [], reloadable: config != nil) } catch { throw failure(error) }
        let pool = settings.pool, data = settings.data, mount = settings.mount, workers = settings.workers
        // The endpoint listens before the pool is opened: an address in use
        // fails the start at once, with nothing to undo.
        let metricsAddress: MetricsAddress?
        do { metricsAddress = try settings.metrics.map { try MetricsAddress.parse($0) } } catch { throw failure(error) }
        let registry = metricsAddress.map { _ in MetricsRegistry() }
        let factory: MetricsFactory = registry ?? NOOPMetricsHandler.instance
        var endpoint: MetricsEndpoint? = nil
        if let metricsAddress, let registry {
            let listening: MetricsEndpoint
            do { listening = try MetricsEndpoint(at: metricsAddress) { registry.render() } } catch { throw failure(error) }
            logger.notice("metrics on http://\(listening.address)/metrics")
            endpoint = listening
        }
        defer { endpoint?.stop() }
        do {
            guard let header = try DataDeviceHeader.read(from: data) else {
                throw PoolError.dataDevice(path: data, reason: "no pmfs header (not made by mkfs.pmfs)")
            }
            let metadata = try MetadataStore.open(poolPath: pool, dataDevice: header, logger: Logger(label: "pmfs.metadata"))
            if metadata.recoveredFromUncleanShutdown {
                logger.notice("recovered after an unclean stop: \(metadata.reclaimedOrphans) orphan(s) reclaimed")
            }
            // Every export directory must exist before anything is served.
            var exports: [Export] = []
            do {
                for p in planned {
                    do { exports.append(try Export.open(p.spec.policy, in: metadata)) } catch { throw p.guest.failure("\(error)", file: config) }
                }
            } catch {
                try? metadata.close()
                throw failure(error)
            }
            let device = try DataDevice(path: data, engine: settings.ioEngine, metrics: factory)
            var options = FileSystem.Options()
            options.cacheBytes = settings.cacheBytes
            options.writeBack = !settings.writeThrough
            options.backgroundWriterLater = true   // started after the sandbox
            let fs = try FileSystem(metadata: metadata, device: device, options: options, metrics: factory)
            if let registry { Self.collectFileSystemGauges(fs, into: registry) }
            let sessions = SessionGroup()
            var host: FUSEMount? = nil
            var hostOperations: PMFSOperations? = nil
            if let mount {
                DeadMount.detach(at: mount, logger: logger)
                let operations = PMFSOperations(metadata: metadata, fs: fs, group: sessions)
                let transport = settings.fuseTransport
                if transport != .device { allowRingTransport(logger: logger) }
                let offered = FUSEServer.defaultCapabilities | (transport == .device ? 0 : FUSEServer.overIOURing)
                let sessionMetrics = registry.map { FUSERequestMetrics(session: "host", factory: $0) }
                let server = FUSEServer(operations: operations, offered: offered, metrics: sessionMetrics)
                if let registry { Self.collectSessionGauges(session: "host", operations, server, into: registry) }
                let m = try FUSEMount(mountPoint: mount, server: server, fsName: "pmfs")
                let how: String
                do {
                    how = try m.negotiate(transport, blockingThreads: workers)
                } catch {
                    m.unmount()
                    throw error
                }
                // The host kernel hears of the guests' changes at once (FUSE notifications).
                operations.listen(FUSENotificationSink { [m] in m.notify($0) })
                host = m
                hostOperations = operations
                logger.notice("host mount on \(m.mountPoint): \(how)")
            }
            // One back end per socket: each VM is a FUSE session of its own.
            let guestDefaults = try settings.guestSettings(listeners: planned.count, reloadable: config != nil)
            let guests = Guests(metadata: metadata, fs: fs, sessions: sessions, settings: guestDefaults, metrics: registry, logger: logger)
            for (p, export) in zip(planned, exports) {
                try guests.start(p.guest.listener.listener, spec: p.spec, export: export, origin: p.origin, settings: p.settings)
            }
            let reloader = config.map {
                ConfigReloader(path: $0, flags: self, activated: activated, running: settings, guests: guests, levels: levels, logger: logger)
            }
            let controlServer: ControlServer?
            do {
                controlServer = try settings.control.map { path in
                    let commands = ControlCommands(guests: guests, pool: pool, data: data, mount: host?.mountPoint, hostOperations: hostOperations,
                                                   hostServer: host?.server, reloader: reloader)
                    return try ControlServer(path: path, handler: commands, logger: logger)
                }
            } catch {
                host?.unmount()
                guests.stopAll()
                throw failure(error)
            }
            controlServer?.start()
            if let controlServer { logger.notice("control socket \(controlServer.path)") }
            do { try Sandbox.enter(sandbox, seccomp: seccomp, hostMount: host, logger: logger) } catch {
                host?.unmount()
                controlServer?.stop()
                guests.stopAll()
                throw failure(error)
            }
            fs.startBackgroundWriter()
            logger.notice("serving \(pool) (engine \(device.engine.name), cache \(settings.cacheBytes >> 20) MiB)")

            // SIGHUP: read the configuration again. SIGTERM / SIGINT: unmount
            // and stop listening; then shut down cleanly.
            let done = DispatchSemaphore(value: 0)
            let notifier = ServiceNotifier()
            let signalThread = JoinableThread {
                var which: Int32 = 0
                while sigwait(&signals, &which) == 0 && which == SIGHUP {
                    guard let reloader else {
                        logger.notice("SIGHUP: no --config file to read again")
                        continue
                    }
                    notifier?.reloading()
                    _ = try? reloader.reload(cause: "SIGHUP")
                    notifier?.ready(status: "serving \(pool)")
                }
                logger.notice("signal \(which): stopping")
                notifier?.stopping()
                host?.stop()
                controlServer?.stop()
                guests.stopAll()
                done.signal()
            }
            signalThread.start()
            // The mount exists and every guest socket listens: clients may come.
            notifier?.ready(status: "serving \(pool)")
            // Alive means the engine answers: a deadlock on its lock stops the pings.
            notifier?.startWatchdog { (try? fs.getattr(1)) != nil }
            if let host {
                host.serve(workers: workers)   // returns when unmounted (by us or by umount)
                logger.notice("host mount: \(host.counters.viaRing) request(s) over io_uring, \(host.counters.viaDevice) over /dev/fuse; \(host.counters.offloaded) ring request(s) ran on pool threads; \(host.counters.groupedFsyncs) fsync(s) in \(host.counters.fsyncGroups) group commit(s)")
                controlServer?.stop()
                guests.stopAll()
            } else {
                done.wait()
            }
            guests.joinAll()
            hostOperations?.stopListening()
            do {
                try fs.shutdown()
            } catch {
                // Cached writes could not all be written back: say so, and leave
                // the pool marked in use so the next start recovers.
                logger.error("writing back at shutdown failed: \(error); the pool is left for recovery")
                device.close()
                metadata.closeUnclean()
                throw ExitCode(1)
            }
            device.close()
            try metadata.close()
            logger.notice("stopped cleanly")
        } catch let e as PoolError {
            throw failure(e)
        } catch let e as FUSEMountError {
            throw failure(e)
        } catch let e as VhostError {
            throw failure(e)
        } catch let e as DataDeviceError {
            throw failure(e)
        }
    }
}

/// Gauges read when the metrics are scraped, never on the request path.
extension Pmfsd {
    static func collectFileSystemGauges(_ fs: FileSystem, into registry: MetricsRegistry) {
        func gauge(_ name: String) -> Gauge { Gauge(label: name, factory: registry) }
        let frames = gauge("pmfs_cache_frames"), used = gauge("pmfs_cache_frames_used"), dirty = gauge("pmfs_cache_frames_dirty")
        let inodes = gauge("pmfs_inodes"), freeInodes = gauge("pmfs_inodes_free")
        let blocks = gauge("pmfs_data_blocks"), freeBlocks = gauge("pmfs_data_blocks_free"), blockSize = gauge("pmfs_data_block_size_bytes")
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
        registry.onScrape(key: "vhost \(session)") {
            connected.record(backend.isConnected ? 1 : 0)
            queues.record(backend.runningQueues)
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
