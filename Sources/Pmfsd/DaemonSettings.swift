// What pmfsd runs with: its flags over its configuration file over the
// defaults, checked in one place, so a bad value is refused the same way
// whether a flag or the file gave it (naming the flag, or the file's line).
import ArgumentParser
import FUSEDevice
import Glibc
import Logging
import PMFSData
import PMFSMetadata
import PMFSServer

struct DaemonSettings {
    // Fixed while pmfsd runs: a reload that changes them is told to restart.
    var pool: String
    var data: String
    var mount: String?
    var fuseTransport: FUSETransportChoice
    var cacheBytes: Int
    var ioEngine: IOEngineChoice
    var writeThrough: Bool
    var workers: Int
    var metrics: String?
    var control: String?
    // Applied by a reload.
    var logLevel: Logger.Level
    /// How guests are served unless their options say otherwise. Its locks
    /// may be auto (settled per listener set, see `guestSettings`); its
    /// workers are set from `workers` there too.
    var guest: GuestSettings
    /// The longest a queue worker polls by default: the window adapts (as
    /// KVM's halt polling, whose default ceiling is 200 µs) and stays 0 for a
    /// guest that is idle or slower than this. Measured (tools/bench/vhost.sh):
    /// a wake-up costs ~50 µs here, so back-to-back requests gain most.
    static let defaultPollMicroseconds = 50
    /// The listeners' group as given (`guest.socketGID` is its number).
    var socketGroup: String?
    /// The guest listeners of the file, then those of --socket and --fd (which win over the file's for one target).
    var guests: [ConfiguredGuest]

    /// The settings a reload cannot change, by key, for the log.
    var fixed: [(key: String, value: String)] {
        [("pool", pool), ("data", data), ("mount", mount ?? "(none)"), ("fuse-transport", fuseTransport.rawValue),
         ("cache-size", "\(cacheBytes)"), ("io-engine", ioEngine.rawValue), ("write-through", "\(writeThrough)"),
         ("workers", "\(workers)"), ("metrics", metrics ?? "(off)"), ("control", control ?? "(off)")]
    }
}

/// Picks each setting from a flag, else the file, else the default, and
/// checks it; an error names where the bad value came from.
struct SettingSource {
    let file: ConfigFile?

    func value<T, U>(_ key: String, flag: T?, file fileValue: (ConfigFile) -> T?, default fallback: T, _ reason: String,
                     _ convert: (T) -> U?) throws -> U {
        if let flag {
            guard let u = convert(flag) else { throw ValidationError("--\(key): \(reason)") }
            return u
        }
        if let file, let v = fileValue(file) {
            guard let u = convert(v) else { throw file.error(key, reason) }
            return u
        }
        guard let u = convert(fallback) else { throw ValidationError("--\(key): \(reason)") }
        return u
    }

    func string(_ key: String, _ flag: String?, default fallback: String, _ reason: String = "", valid: (String) -> Bool = { _ in true }) throws -> String {
        try value(key, flag: flag, file: { $0.string(key) }, default: fallback, reason) { valid($0) ? $0 : nil }
    }

    func optionalString(_ key: String, _ flag: String?) -> String? { flag ?? file?.string(key) }

    func int(_ key: String, _ flag: Int?, default fallback: Int, _ range: ClosedRange<Int>) throws -> Int {
        try value(key, flag: flag, file: { $0.int(key) }, default: fallback, "must be \(range.lowerBound)...\(range.upperBound)") {
            range.contains($0) ? $0 : nil
        }
    }

    func bool(_ key: String, _ flag: Bool?, default fallback: Bool) -> Bool { flag ?? file?.bool(key) ?? fallback }
}

extension DaemonSettings {
    /// The settings of `flags` over `file` (nil: no --config).
    /// `activated`: the sockets systemd passed; those neither names are guest sockets for the whole tree.
    static func make(_ flags: Pmfsd, file: ConfigFile?, activated: [Int32] = []) throws -> DaemonSettings {
        let source = SettingSource(file: file)
        guard let pool = source.optionalString("pool", flags.pool), let data = source.optionalString("data", flags.data) else {
            throw ValidationError(file == nil ? "--pool and --data are required" : "--pool and --data are required (or pool: and data: in \(file!.path))")
        }
        let transport = try source.value("fuse-transport", flag: flags.fuseTransport, file: { $0.string("fuse-transport") }, default: "auto",
                                         "must be auto, uring or device") { FUSETransportChoice(rawValue: $0) }
        let cacheBytes = try source.value("cache-size", flag: flags.cacheSize, file: { $0.string("cache-size") }, default: "256M",
                                          "a size of at least 64K, like 256M") { text -> Int? in
            guard let size = ByteSize.parse(text), size >= 64 << 10, size <= 1 << 46 else { return nil }
            return Int(size)
        }
        let engine = try source.value("io-engine", flag: flags.ioEngine, file: { $0.string("io-engine") }, default: "auto",
                                      "must be auto, io_uring, threads or inline") { IOEngineChoice(rawValue: $0) }
        let cache = try source.value("cache", flag: flags.cache, file: { $0.string("cache") }, default: "auto",
                                     "must be none, auto or always") { PMFSOperations.CachePolicy(rawValue: $0) }
        let locks = try source.string("locks", flags.locks, default: "auto", "must be auto, shared or local") { ["auto", "shared", "local"].contains($0) }
        let level: Logger.Level = flags.debug ? .debug : try source.value("log-level", flag: flags.logLevel, file: { $0.string("log-level") }, default: "info",
                                                                            "must be trace, debug, info, notice, warning, error or critical") { Logger.Level(rawValue: $0) }
        var settings = DaemonSettings(
            pool: pool, data: data, mount: source.optionalString("mount", flags.mount), fuseTransport: transport, cacheBytes: cacheBytes,
            ioEngine: engine, writeThrough: source.bool("write-through", flags.writeThrough, default: false),
            workers: try source.int("workers", flags.workers, default: 4, 1...256),
            metrics: source.optionalString("metrics", flags.metrics), control: source.optionalString("control", flags.control),
            logLevel: level,
            guest: GuestSettings(
                tag: try source.string("tag", flags.tag, default: "pmfs", "1-36 bytes (virtio-fs tag)") { (1...36).contains($0.utf8.count) },
                queues: try source.int("queues", flags.queues, default: 1, 1...64), cache: cache, locks: locks,
                writeback: source.bool("writeback", flags.writeback, default: false),
                pollMicroseconds: try source.int("poll-microseconds", flags.pollMicroseconds, default: Self.defaultPollMicroseconds, 0...1_000_000),
                workers: 0, socketGID: nil),
            socketGroup: source.optionalString("socket-group", flags.socketGroup), guests: [])
        if flags.socketGroup == nil, let file, settings.socketGroup != nil, (try? settings.socketGID()) == nil {
            throw file.error("socket-group", "no group \(settings.socketGroup!)")
        }
        settings.guest.socketGID = try settings.socketGID()
        let named = Set(flags.fd.compactMap { Int32($0.prefix { $0 != "," }) })
            .union((file?.guests ?? []).compactMap { if case .descriptor(let n) = $0.listener { n } else { nil } })
        let fds = flags.fd + activated.filter { !named.contains($0) }.map { String($0) }
        settings.guests = try mergeGuests(file: file?.guests ?? [], commandLine: Pmfsd.listeners(sockets: flags.socket, fds: fds, settle: false))
        return settings
    }

    /// The file's guests, each replaced by a --socket/--fd for the same target (the flag wins).
    static func mergeGuests(file: [ConfiguredGuest], commandLine: [(Listener, GuestListenerSpec)]) throws -> [ConfiguredGuest] {
        let given = commandLine.map { listener, spec in
            let target: ListenerTarget = switch listener {
            case .path(let p): .path(p)
            case .descriptor(let n): .descriptor(n)
            }
            return ConfiguredGuest(name: "command line", line: nil, listener: target, spec: spec)
        }
        let paths = given.map(\.listener)
        guard Set(paths).count == paths.count else { throw ValidationError("--socket/--fd: each path or descriptor once") }
        return file.filter { !paths.contains($0.listener) } + given
    }

    /// The group that may connect to path sockets (nil: root only).
    func socketGID() throws -> gid_t? {
        guard let socketGroup else { return nil }
        if let g = getgrnam(socketGroup) { return g.pointee.gr_gid }
        if let n = gid_t(socketGroup) { return n }
        throw ValidationError("--socket-group: no group \(socketGroup)")
    }

    /// What auto means for locks: local only when one guest socket is the only
    /// client and must stay so (no host mount, control socket or file whose
    /// reload could add another), where its kernel sees every lock there is.
    func guestLocks(listeners: Int, reloadable: Bool) -> String {
        guard guest.locks == "auto" else { return guest.locks }
        return mount == nil && listeners == 1 && control == nil && !reloadable ? "local" : "shared"
    }

    /// How guests are served unless their options say otherwise.
    func guestSettings(listeners: Int, reloadable: Bool) -> GuestSettings {
        var settled = guest
        settled.locks = guestLocks(listeners: listeners, reloadable: reloadable)
        settled.workers = workers
        return settled
    }
}
