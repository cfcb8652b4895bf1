// pmfsd's life: options and file → settings → what it opens and serves → the
// signal loop → a clean shutdown. Each phase undoes what it began if it fails.
import ArgumentParser
import CoreMetrics
import Dispatch
import FUSEDevice
import FUSEProtocol
import Glibc
import Logging
import PMFSCore
import PMFSConcurrency
import PMFSData
import PMFSMetadata
import PMFSMetrics
import PMFSServer
import VhostUser

/// The pool, its exports, the data device and the file-system core, open.
struct OpenedFileSystem {
    let metadata: MetadataStore
    let exports: [Export]
    let device: DataDevice
    let fs: FileDataTier
}

/// The host's FUSE mount and the operations behind it.
struct HostMount {
    let mount: FUSEMount
    let operations: PMFSOperations
}

/// The metrics registry (nil with no --metrics) and its HTTP endpoint.
struct MetricsSetup {
    let registry: MetricsRegistry?
    let endpoint: MetricsEndpoint?
    var factory: MetricsFactory { registry ?? NOOPMetricsHandler.instance }
}

extension Pmfsd {
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
        var signals = Self.blockStopAndReloadSignals()
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
        let metrics = try Self.startMetrics(settings, logger: logger)
        defer { metrics.endpoint?.stop() }
        do {
            try serve(settings, planned: planned, activated: activated, metrics: metrics, signals: &signals, levels: levels, logger: logger)
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

    /// SIGTERM/SIGINT (stop) and SIGHUP (reload) are taken by one thread with
    /// sigwait: blocked here, before any thread exists, so every thread
    /// inherits the mask and none dies of them.
    static func blockStopAndReloadSignals() -> sigset_t {
        var signals = sigset_t()
        sigemptyset(&signals)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&signals, s) }
        pthread_sigmask(SIG_BLOCK, &signals, nil)
        return signals
    }

    /// The endpoint listens before the pool is opened: an address in use
    /// fails the start at once, with nothing to undo.
    static func startMetrics(_ settings: DaemonSettings, logger: Logger) throws -> MetricsSetup {
        let address: MetricsAddress?
        do { address = try settings.metrics.map { try MetricsAddress.parse($0) } } catch { throw failure(error) }
        guard let address else { return MetricsSetup(registry: nil, endpoint: nil) }
        let registry = MetricsRegistry()
        let endpoint: MetricsEndpoint
        do { endpoint = try MetricsEndpoint(at: address) { registry.render() } } catch { throw failure(error) }
        logger.notice("metrics on http://\(endpoint.address)/metrics")
        return MetricsSetup(registry: registry, endpoint: endpoint)
    }

    /// Opens, serves until a stop signal or the host mount's end, shuts down.
    private func serve(_ settings: DaemonSettings, planned: [PlannedGuest], activated: [Int32], metrics: MetricsSetup,
                       signals: inout sigset_t, levels: LogLevelSwitch, logger: Logger) throws {
        let opened = try Self.openFileSystem(settings, planned: planned, metrics: metrics, file: config, logger: logger)
        let sessions = SessionGroup()
        let host = try settings.mount.map {
            try Self.mountHost(at: $0, opened.fs, sessions: sessions, settings: settings, metrics: metrics, logger: logger)
        }
        // One back end per socket: each VM is a FUSE session of its own.
        let guestDefaults = settings.guestSettings(listeners: planned.count, reloadable: config != nil)
        let guests = Guests(metadata: opened.metadata, fs: opened.fs, sessions: sessions, settings: guestDefaults, metrics: metrics.registry,
                            logger: logger)
        for (p, export) in zip(planned, opened.exports) {
            try guests.start(p.guest.listener.listener, spec: p.spec, export: export, origin: p.origin, settings: p.settings)
        }
        let reloader = config.map {
            ConfigReloader(path: $0, flags: self, activated: activated, running: settings, guests: guests, levels: levels, logger: logger)
        }
        let controlServer: ControlServer?
        do {
            controlServer = try settings.control.map { path in
                let commands = ControlCommands(guests: guests, pool: settings.pool, data: settings.data, mount: host?.mount.mountPoint,
                                               hostOperations: host?.operations, hostServer: host?.mount.server, hostTransport: host?.mount.counters,
                                               reloader: reloader, registry: metrics.registry)
                return try ControlServer(path: path, handler: commands, logger: logger)
            }
        } catch {
            host?.mount.unmount()
            guests.stopAll()
            throw failure(error)
        }
        controlServer?.start()
        if let controlServer { logger.notice("control socket \(controlServer.path)") }
        do { try Sandbox.enter(sandbox, seccomp: seccomp, hostMount: host?.mount, logger: logger) } catch {
            host?.mount.unmount()
            controlServer?.stop()
            guests.stopAll()
            throw failure(error)
        }
        opened.fs.startBackgroundWriter()
        logger.notice("serving \(settings.pool) (engine \(opened.device.engine.name), cache \(settings.cacheBytes >> 20) MiB)")
        Self.serveUntilStopped(host: host?.mount, controlServer: controlServer, guests: guests, reloader: reloader, fs: opened.fs,
                               status: "serving \(settings.pool)", workers: settings.workers, signals: signals, logger: logger)
        guests.joinAll()
        host?.operations.stopListening()
        try Self.shutDown(opened, logger: logger)
    }

    /// The pool, every export directory (all must exist before anything is
    /// served), the data device and the core.
    static func openFileSystem(_ settings: DaemonSettings, planned: [PlannedGuest], metrics: MetricsSetup, file: String?,
                               logger: Logger) throws -> OpenedFileSystem {
        guard let header = try DataDeviceHeader.read(from: settings.data) else {
            throw PoolError.dataDevice(path: settings.data, reason: "no pmfs header (not made by mkfs.pmfs)")
        }
        let metadata = try MetadataStore.open(poolPath: settings.pool, dataDevice: header, logger: Logger(label: "pmfs.metadata"))
        if metadata.recoveredFromUncleanShutdown {
            logger.notice("recovered after an unclean stop: \(metadata.reclaimedOrphans) orphan(s) reclaimed")
        }
        var exports: [Export] = []
        do {
            for p in planned {
                do { exports.append(try Export.open(p.spec.policy, in: metadata)) } catch { throw p.guest.failure("\(error)", file: file) }
            }
        } catch {
            try? metadata.close()
            throw failure(error)
        }
        let device = try DataDevice(path: settings.data, engine: settings.ioEngine, metrics: metrics.factory)
        var options = FileDataTier.Options()
        options.cacheBytes = settings.cacheBytes
        options.writeBack = !settings.writeThrough
        options.backgroundWriterLater = true   // started after the sandbox
        let fs = try FileDataTier(metadata: metadata, device: device, options: options, metrics: metrics.factory)
        if let registry = metrics.registry { collectFileSystemGauges(fs, into: registry) }
        return OpenedFileSystem(metadata: metadata, exports: exports, device: device, fs: fs)
    }

    /// The host mount, its transport negotiated; the host kernel hears of the
    /// guests' changes at once (FUSE notifications).
    static func mountHost(at mountPoint: String, _ fs: FileDataTier, sessions: SessionGroup, settings: DaemonSettings, metrics: MetricsSetup,
                          logger: Logger) throws -> HostMount {
        DeadMount.detach(at: mountPoint, logger: logger)
        let operations = PMFSOperations(metadata: fs.metadata, fs: fs, group: sessions)
        let transport = settings.fuseTransport
        if transport != .device { allowRingTransport(logger: logger) }
        let offered = FUSEServer.defaultCapabilities | (transport == .device ? 0 : FUSEServer.overIOURing)
        let sessionMetrics = metrics.registry.map { FUSERequestMetrics(session: "host", factory: $0) }
        let server = FUSEServer(operations: operations, offered: offered, metrics: sessionMetrics)
        if let registry = metrics.registry { collectSessionGauges(session: "host", operations, server, into: registry) }
        let mount = try FUSEMount(mountPoint: mountPoint, server: server, fsName: "pmfs")
        let how: String
        do {
            how = try mount.negotiate(transport, blockingThreads: settings.workers, pollMicroseconds: settings.guest.pollMicroseconds)
        } catch {
            mount.unmount()
            throw error
        }
        operations.listen(FUSENotificationSink { [mount] in mount.notify($0) })
        logger.notice("host mount on \(mount.mountPoint): \(how)")
        return HostMount(mount: mount, operations: operations)
    }

    /// Serves until SIGTERM/SIGINT (or, with a host mount, until it is
    /// unmounted); SIGHUP reads the configuration again meanwhile. Returns with
    /// the host mount, the control socket and every guest socket stopped.
    static func serveUntilStopped(host: FUSEMount?, controlServer: ControlServer?, guests: Guests, reloader: ConfigReloader?, fs: FileDataTier,
                                  status: String, workers: Int, signals: sigset_t, logger: Logger) {
        let done = DispatchSemaphore(value: 0)
        let notifier = ServiceNotifier()
        var signals = signals
        // It waits for a signal until the process ends (an outside umount ends
        // the daemon without one), so no one joins it.
        let signalThread = JoinableThread.detached {
            var which: Int32 = 0
            while sigwait(&signals, &which) == 0 && which == SIGHUP {
                guard let reloader else {
                    logger.notice("SIGHUP: no --config file to read again")
                    continue
                }
                notifier?.reloading()
                _ = try? reloader.reload(cause: "SIGHUP")
                notifier?.ready(status: status)
            }
            logger.notice("signal \(which): stopping")
            notifier?.stopping()
            host?.stop()
            controlServer?.stop()
            guests.stopAll()
            done.signal()
        }
        guard signalThread else {
            logger.error("cannot start the signal thread: stopping")
            host?.stop(); controlServer?.stop(); guests.stopAll()
            return
        }
        // The mount exists and every guest socket listens: clients may come.
        notifier?.ready(status: status)
        // Alive means the engine answers: a deadlock on its lock stops the pings.
        notifier?.startWatchdog { (try? fs.getattr(1)) != nil }
        guard let host else {
            done.wait()
            return
        }
        host.serve(workers: workers)   // returns when unmounted (by us or by umount)
        let c = host.counters
        logger.notice("host mount: \(c.viaRing) request(s) over io_uring, \(c.viaDevice) over /dev/fuse; \(c.offloaded) ring request(s) ran on pool threads; \(c.groupedFsyncs) fsync(s) in \(c.fsyncGroups) group commit(s)")
        controlServer?.stop()
        guests.stopAll()
    }

    /// Writes back and closes. Cached writes that cannot all be written back
    /// are said, and the pool is left marked in use so the next start recovers.
    static func shutDown(_ opened: OpenedFileSystem, logger: Logger) throws {
        do {
            try opened.fs.shutdown()
        } catch {
            logger.error("writing back at shutdown failed: \(error); the pool is left for recovery")
            opened.device.close()
            opened.metadata.closeUnclean()
            throw ExitCode(1)
        }
        opened.device.close()
        try opened.metadata.close()
        logger.notice("stopped cleanly")
    }
}
