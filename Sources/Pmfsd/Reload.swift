// SIGHUP: pmfsd reads its --config file again and applies what can change
// while it serves: guest sockets (new ones start, removed ones stop, changed
// ones are served anew), the settings guests are served with, the log level.
// The pool, data device, host mount and the other fixed settings keep their
// values (the log says which need a restart). A file that does not parse or
// validate changes nothing.
import Glibc
import Logging
import PMFSMetadata
import PMFSServer
import Synchronization

/// A guest listener as a configuration asks for it: settled against the
/// others (devices and set-id where the options do not say), with the
/// settings it is to be served with.
struct PlannedGuest {
    let guest: ConfiguredGuest
    let spec: GuestListenerSpec
    let settings: GuestSettings

    var origin: String { guest.origin }
}

extension ConfiguredGuest {
    /// What `pmfsctl info` shows as the listener's origin.
    var origin: String { name == "command line" ? name : "config (\(name))" }

    /// Where a message about this guest points: its section of the file, or its flag.
    func failure(_ reason: String, file: String?) -> Error {
        guard let file, origin != "command line" else { return ExportError("\(listener): \(reason)") }
        return ConfigFileError(file: file, line: line, key: "guests.\(name)", reason: reason)
    }
}

extension DaemonSettings {
    /// Every configured guest, settled against each other and `others` (the
    /// listeners the control socket added, which keep what they were given).
    func plan(others: [GuestListenerSpec], reloadable: Bool) throws -> [PlannedGuest] {
        var specs = guests.map(\.spec) + others
        GuestListenerSpec.settleSharing(&specs)
        let served = guestSettings(listeners: guests.count, reloadable: reloadable)
        return zip(guests, specs).map { PlannedGuest(guest: $0, spec: $1, settings: served) }
    }
}

extension GuestListenerSpec {
    /// The spec as its options give it, without what `settleSharing` decided.
    var asGiven: GuestListenerSpec {
        var spec = self
        if !namesDevices { spec.policy.devices = false }
        if !namesSetID { spec.policy.setID = false }
        return spec
    }
}

/// The log level every logger of pmfsd reads at each message, so a reload can change it.
final class LogLevelSwitch: Sendable {
    private let raw: Atomic<Int>
    init(_ level: Logger.Level) { raw = Atomic(Self.levels.firstIndex(of: level) ?? 2) }
    private static let levels = Logger.Level.allCases

    var level: Logger.Level {
        get { Self.levels[raw.load(ordering: .relaxed)] }
        set { raw.store(Self.levels.firstIndex(of: newValue) ?? 2, ordering: .relaxed) }
    }
}

/// swift-log's stream handler with its level taken from a `LogLevelSwitch`.
struct SwitchedLogHandler: LogHandler {
    private var stream: StreamLogHandler
    let levels: LogLevelSwitch

    init(label: String, levels: LogLevelSwitch) {
        stream = StreamLogHandler.standardError(label: label)
        stream.logLevel = .trace   // the switch filters
        self.levels = levels
    }

    var logLevel: Logger.Level {
        get { levels.level }
        set { levels.level = newValue }
    }

    var metadata: Logger.Metadata {
        get { stream.metadata }
        set { stream.metadata = newValue }
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { stream[metadataKey: key] }
        set { stream[metadataKey: key] = newValue }
    }

    func log(event: LogEvent) { stream.log(event: event) }
}

/// Re-reads the configuration file (SIGHUP) and applies it to the running daemon.
/// Why a reload changed nothing (the log says the same).
struct ReloadRefused: Error, CustomStringConvertible {
    let description: String
}

final class ConfigReloader: @unchecked Sendable {
    let path: String
    let flags: Pmfsd
    let activated: [Int32]
    let guests: Guests
    let levels: LogLevelSwitch
    let logger: Logger
    /// What is running now (changed only under `serial`).
    private(set) var running: DaemonSettings
    /// SIGHUP and `pmfsctl reload` come on different threads: one reload at a time.
    private let serial = Mutex<Void>(())

    init(path: String, flags: Pmfsd, activated: [Int32], running: DaemonSettings, guests: Guests, levels: LogLevelSwitch, logger: Logger) {
        self.path = path; self.flags = flags; self.activated = activated; self.running = running
        self.guests = guests; self.levels = levels; self.logger = logger
    }

    /// Reads the file and applies it, or logs why not and changes nothing.
    /// `cause` starts the log line ("SIGHUP", "pmfsctl reload"). Returns what
    /// was applied; throws `ReloadRefused` with the reason.
    @discardableResult
    func reload(cause: String) throws(ReloadRefused) -> String {
        try serial.withLock { _ throws(ReloadRefused) in try reloadNow(cause: cause) }
    }

    private func reloadNow(cause: String) throws(ReloadRefused) -> String {
        logger.notice("\(cause): reading \(path) again")
        var next: DaemonSettings
        do {
            let file = try ConfigFile.load(path: path)
            next = try DaemonSettings.make(flags, file: file, activated: activated)
            keepFixedSettings(&next)
            try applyGuests(next)
        } catch {
            let refused = ReloadRefused(description: "configuration refused: \(error); the running configuration stays")
            logger.error("\(refused.description)")
            throw refused
        }
        let level = levels.level
        if next.logLevel != level {
            // Said at the more verbose of the two levels, so the line shows.
            let line = "log level \(next.logLevel) (was \(level))"
            if next.logLevel < level { levels.level = next.logLevel }
            logger.notice("\(line)")
            levels.level = next.logLevel
        }
        guests.settings = next.guestSettings(listeners: next.guests.count, reloadable: true)
        running = next
        let applied = "configuration \(path) applied: \(guests.listeners.count) guest socket(s)"
        logger.notice("\(applied)")
        return applied
    }

    /// The pool, data device, mount and the rest are opened once: a new value
    /// is logged as needing a restart, and the running one stays.
    private func keepFixedSettings(_ next: inout DaemonSettings) {
        for (old, new) in zip(running.fixed, next.fixed) where old.value != new.value {
            logger.warning("\(new.key): \(new.value) in \(path) needs a restart of pmfsd; \(old.value) stays until then")
        }
        next.pool = running.pool; next.data = running.data; next.mount = running.mount
        next.fuseTransport = running.fuseTransport; next.cacheBytes = running.cacheBytes; next.ioEngine = running.ioEngine
        next.writeThrough = running.writeThrough; next.workers = running.workers; next.metrics = running.metrics; next.control = running.control
    }

    /// Starts the new guest sockets, stops the removed ones and serves the
    /// changed ones anew; a socket whose settings did not change is not touched.
    /// Every export is opened before anything stops, so a missing directory
    /// refuses the whole file.
    private func applyGuests(_ next: DaemonSettings) throws {
        let all = guests.listeners
        let configured = all.filter { $0.origin == "command line" || $0.origin.hasPrefix("config (") }
        let others = all.filter { g in !configured.contains { $0 === g } }.map(\.spec)
        let planned = try next.plan(others: others, reloadable: true)
        let byTarget = Dictionary(configured.map { ($0.target, $0) }, uniquingKeysWith: { a, _ in a })
        var stopping: [GuestListener] = []
        var starting: [PlannedGuest] = []
        for p in planned {
            let now = byTarget[p.guest.listener]
            if let now, now.spec.asGiven == p.spec.asGiven, now.settings == p.settings, now.origin == p.origin {
                // Its own section did not change: it is not disturbed, even
                // where sharing now settles devices or set-id otherwise.
                if now.spec != p.spec {
                    logger.notice("\(now.name): devices and set-id, as its export's sharing now settles them, apply when it is served anew (devices:, setid: decide for it)")
                }
                continue
            }
            if case .descriptor(let n) = p.guest.listener {
                // An inherited socket closed by a stop cannot be opened again.
                logger.warning("fd \(n): \(now == nil ? "not served since the start" : "its options changed"); an inherited socket is taken only at start: restart pmfsd to apply this")
                continue
            }
            if let now { stopping.append(now) }
            starting.append(p)
        }
        let wanted = Set(planned.map(\.guest.listener))
        stopping += configured.filter { !wanted.contains($0.target) }
        let exports = try openExports(starting)
        for g in stopping { guests.stop(g.id) }
        for (p, export) in zip(starting, exports) {
            do {
                try guests.start(p.guest.listener.listener, spec: p.spec, export: export, origin: p.origin, settings: p.settings)
            } catch {
                logger.error("\(p.guest.failure("\(error)", file: path)); not served")
                if export.confined { try? guests.metadata.unpin(export.root, count: 1) }
            }
        }
    }

    /// The exports of `planned`, all or none (each is pinned while open).
    private func openExports(_ planned: [PlannedGuest]) throws -> [Export] {
        var opened: [Export] = []
        for p in planned {
            do {
                opened.append(try Export.open(p.spec.policy, in: guests.metadata))
            } catch {
                for e in opened where e.confined { try? guests.metadata.unpin(e.root, count: 1) }
                throw p.guest.failure("\(error)", file: path)
            }
        }
        return opened
    }
}
