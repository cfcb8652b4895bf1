// The guest listeners of one pmfsd: those of the command line and those
// given later over the control socket (serve-fd) start the same way here,
// and the control socket lists them.
import FUSEProtocol
import Glibc
import Logging
import PMFSConcurrency
import PMFSControl
import PMFSCore
import PMFSMetadata
import PMFSMetrics
import PMFSServer
import Synchronization
import VhostUser

/// How every guest is served unless its listener's options say otherwise:
/// the daemon's defaults (DaemonSettings.guest), settled for the listeners
/// there are (`DaemonSettings.guestSettings`).
struct GuestSettings: Equatable {
    var tag: String
    var queues: Int
    var cache: PMFSOperations.CachePolicy
    /// "shared" or "local" once settled ("auto" only in DaemonSettings.guest).
    var locks: String
    var writeback: Bool
    var pollMicroseconds: Int
    var workers: Int
    var socketGID: gid_t?
}

/// One socket guests connect to, its back end and the thread accepting on it.
final class GuestListener: @unchecked Sendable {
    let id: Int
    let spec: GuestListenerSpec
    let export: Export
    let backend: VhostUserBackend
    let operations: PMFSOperations
    let thread: JoinableThread
    let origin: String
    let cache: PMFSOperations.CachePolicy
    let locks: String
    /// Where it listens and the settings it was started with: a reload compares them with the file's.
    let target: ListenerTarget
    let settings: GuestSettings
    /// What `info` and `sessions` call it: the path, or the descriptor and the path it is bound to.
    let name: String

    init(id: Int, listener: Listener, spec: GuestListenerSpec, export: Export, backend: VhostUserBackend, operations: PMFSOperations,
         origin: String, cache: PMFSOperations.CachePolicy, locks: String, settings: GuestSettings) {
        self.id = id; self.spec = spec; self.export = export; self.backend = backend; self.operations = operations
        self.origin = origin; self.cache = cache; self.locks = locks; self.settings = settings
        switch listener {
        case .path(let p): target = .path(p)
        case .descriptor(let n): target = .descriptor(n)
        }
        if case .descriptor(let fd) = listener, let path = Self.boundPath(fd) {
            name = "\(backend.socketPath) (\(path))"
        } else {
            name = backend.socketPath
        }
        thread = JoinableThread { backend.serve() }
    }
}

extension GuestListener {
    /// The path an inherited socket is bound to (libvirt's socket under /var/lib/libvirt/qemu), nil if none.
    static func boundPath(_ fd: Int32) -> String? {
        var address = sockaddr_un()
        var length = socklen_t(MemoryLayout<sockaddr_un>.size)
        let rc = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        let header = MemoryLayout<sa_family_t>.size
        guard rc == 0, address.sun_family == sa_family_t(AF_UNIX), Int(length) > header else { return nil }
        let path = withUnsafeBytes(of: address.sun_path) { bytes in
            String(decoding: bytes.prefix(min(Int(length) - header, bytes.count)).prefix { $0 != 0 }, as: UTF8.self)
        }
        return path.isEmpty ? nil : path   // empty: unnamed or abstract
    }
}

final class Guests: @unchecked Sendable {
    let metadata: MetadataStore
    let fs: FileDataTier
    let sessions: SessionGroup
    private let defaultSettings: Mutex<GuestSettings>
    /// How a socket given over the control socket is served (a reload may change it).
    var settings: GuestSettings {
        get { defaultSettings.withLock { $0 } }
        set { defaultSettings.withLock { $0 = newValue } }
    }
    /// The metrics registry, with --metrics.
    let metrics: MetricsRegistry?
    let logger: Logger
    private let running = Mutex<(next: Int, table: [Int: GuestListener])>((1, [:]))
    /// Listeners stopAll stopped, for joinAll.
    private let finishing = Mutex<[GuestListener]>([])
    /// Threads still joining a listener stopped at run time.
    private let reapers = Atomic<Int>(0)
    /// The most listeners at once (each has threads, queues, a session): serve-fd refuses beyond.
    static let maxListeners = 256

    init(metadata: MetadataStore, fs: FileDataTier, sessions: SessionGroup, settings: GuestSettings, metrics: MetricsRegistry?,
         logger: Logger) {
        self.metrics = metrics
        self.metadata = metadata; self.fs = fs; self.sessions = sessions; self.logger = logger
        defaultSettings = Mutex(settings)
    }

    /// Starts serving guests on `listener` with the export `export` (already
    /// opened, so its directory is pinned); returns the listener's id.
    @discardableResult
    func start(_ listener: Listener, spec: GuestListenerSpec, export: Export, origin: String, settings given: GuestSettings? = nil) throws -> GuestListener {
        let settings = given ?? self.settings
        guard running.withLock({ $0.table.count }) < Self.maxListeners else {
            throw ExportError("pmfsd serves \(Self.maxListeners) guest sockets already")
        }
        let cache = spec.cache ?? settings.cache
        let locks = spec.locks ?? settings.locks
        let operations = PMFSOperations(metadata: metadata, fs: fs, group: sessions, export: export)
        operations.setCachePolicy(cache)
        var offered = FUSEServer.defaultCapabilities | (settings.writeback ? FUSEServer.writebackCache : 0)
        if locks == "local" { offered &= ~FUSEServer.remoteLocks }
        let session = Self.sessionLabel(listener)
        let server = FUSEServer(operations: operations, offered: offered,
                                metrics: metrics.map { FUSERequestMetrics(session: session, factory: $0) })
        let backend: VhostUserBackend
        switch listener {
        case .path(let path):
            backend = try VhostUserBackend(socketPath: path, server: server, requestQueues: settings.queues)
            if let gid = settings.socketGID { try backend.allowGroup(gid) }
        case .descriptor(let n):
            backend = try VhostUserBackend(listeningSocket: n, server: server, requestQueues: settings.queues)
        }
        backend.pollMicroseconds = settings.pollMicroseconds
        backend.requestThreads = settings.workers
        // A guest that reboots or a QEMU that goes away ends its FUSE session.
        backend.onSessionEnd = { operations.endSession() }
        if let metrics {
            Pmfsd.collectSessionGauges(session: session, operations, server, into: metrics)
            Pmfsd.collectVhostGauges(session: session, backend, into: metrics)
        }
        let guest = running.withLock { state in
            defer { state.next += 1 }
            let g = GuestListener(id: state.next, listener: listener, spec: spec, export: export, backend: backend, operations: operations,
                                  origin: origin, cache: cache, locks: locks, settings: settings)
            state.table[g.id] = g
            return g
        }
        guest.thread.start()
        logger.notice("vhost-user-fs socket \(guest.name) (listener \(guest.id), tag \(settings.tag), \(settings.queues) request queue(s), cache=\(cache.rawValue), locks \(locks)\(settings.writeback ? ", writeback" : ""), \(Pmfsd.describe(export.policy)))")
        return guest
    }

    /// The metrics' session label: the socket path, or the descriptor (as the back
    /// end names it). A bare name gets "./", so no path can pass for "host" or a descriptor.
    static func sessionLabel(_ listener: Listener) -> String {
        switch listener {
        case .path(let path): path.contains("/") ? path : "./" + path
        case .descriptor(let n): "descriptor \(n)"
        }
    }

    /// Stops listening on one socket (its guest, if connected, loses the
    /// device) and lets go of its export directory once its thread is done.
    func stop(_ id: Int) {
        guard let guest = running.withLock({ $0.table.removeValue(forKey: id) }) else { return }
        logger.notice("listener \(id) (\(guest.name)): no longer served")
        guest.backend.stop()
        // Joined on a thread of its own: the control socket's thread must not
        // wait for a session to end. That thread is counted (`stopAll` waits
        // for the count), not joined.
        reapers.add(1, ordering: .sequentiallyConsistent)
        let started = JoinableThread.detached { [self] in
            guest.thread.join()
            if guest.export.confined {
                do { try metadata.unpin(guest.export.root, count: 1) } catch { logger.debug("unpin export \(guest.export.root): \(error)") }
            }
            reapers.subtract(1, ordering: .sequentiallyConsistent)
        }
        if !started {
            guest.thread.join()
            reapers.subtract(1, ordering: .sequentiallyConsistent)
        }
    }

    /// Ends the session of listener `id`'s connected guest, as its going away
    /// would; the socket keeps listening. nil if there is no such listener.
    func endSession(_ id: Int, asker: String) -> VhostUserBackend.DisconnectOutcome? {
        guard let guest = running.withLock({ $0.table[id] }) else { return nil }
        logger.notice("listener \(id) (\(guest.name)): ending its guest's session (asked by \(asker))")
        return guest.backend.disconnect(timeout: .seconds(5))
    }

    /// Stops every listener (SIGTERM).
    func stopAll() {
        let all = running.withLock { state in
            defer { state.table.removeAll() }
            return Array(state.table.values)
        }
        all.forEach { $0.backend.stop() }
        finishing.withLock { $0 += all }
    }

    /// Waits for every listener's thread (after stopAll).
    func joinAll() {
        finishing.withLock { list in
            list.forEach { $0.thread.join() }
            list.removeAll()
        }
        while reapers.load(ordering: .sequentiallyConsistent) > 0 { usleep(10_000) }
    }

    /// The specs of the listeners serving now (for settling a new export's sharing).
    var runningSpecs: [GuestListenerSpec] { running.withLock { $0.table.values.sorted { $0.id < $1.id }.map(\.spec) } }

    var listeners: [GuestListener] { running.withLock { $0.table.values.sorted { $0.id < $1.id } } }

    func listenerInfo() -> [ListenerInfo] {
        listeners.map { g in
            ListenerInfo(id: g.id, socket: g.name, export: g.export.policy.path, readOnly: g.export.policy.readOnly,
                         cache: g.cache.rawValue, locks: g.locks, origin: g.origin)
        }
    }

    func sessionInfo() -> [SessionInfo] {
        listeners.map { g in
            let s = g.operations.status
            return SessionInfo(session: s.session, listener: g.id, socket: g.name, export: g.export.policy.path,
                               connected: s.since != nil, since: s.since, openHandles: s.openHandles, heldInodes: s.heldInodes,
                               lockRecords: s.lockRecords, requests: g.backend.server.requestsTaken, queues: g.backend.runningQueues)
        }
    }

    /// Each listener's session: requests taken and in flight (relaxed atomics, read as they are).
    func sessionCounts() -> [SessionCounts] {
        listeners.map { g in
            SessionCounts(session: g.operations.session, name: g.name, requests: g.backend.server.requestsTaken,
                          inFlight: g.backend.server.requestsInFlight)
        }
    }
}
