// pmfsd as libvirt starts a virtiofs binary:
//   pmfsd --fd=N -o source=DIR[,cache=...][,sandbox=...][,xattr|no_xattr][,flock|no_flock][,posix_lock|no_posix_lock]
//         [--thread-pool-size=N] [-d]
// A pool is served by one pmfsd only, so this process serves nothing itself:
// it asks the running pmfsd (its control socket) to serve socket N with DIR,
// a directory under that daemon's host mount, as the guest's root, and stays
// until libvirt stops it (SIGTERM) — then the daemon stops listening on N.
import ArgumentParser
import Glibc
import Logging
import PMFSConcurrency
import PMFSControl

struct LibvirtLauncher {
    let fds: [String]
    let options: [String]
    let threadPoolSize: Int?
    let debug: Bool
    let control: String?

    /// What libvirt asked for, in pmfs's terms.
    struct Request: Equatable {
        var source: String?
        var cache: String?
        /// "shared" or "local" when libvirt said anything about locks.
        var locks: String?
        /// Lines for the log: what was accepted as is or ignored.
        var notes: [String] = []
    }

    /// Runs until SIGTERM/SIGINT (exit 0) or until the daemon goes (exit 1).
    func run() -> ExitCode {
        var stopSignals = sigset_t()
        sigemptyset(&stopSignals)
        sigaddset(&stopSignals, SIGTERM)
        sigaddset(&stopSignals, SIGINT)
        pthread_sigmask(SIG_BLOCK, &stopSignals, nil)
        let level: Logger.Level = debug ? .debug : .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "pmfsd.launcher")
        do {
            let fd = try Self.descriptor(fds)
            let request = try Self.parse(options)
            request.notes.forEach { logger.info("\($0)") }
            if let threadPoolSize { logger.info("--thread-pool-size=\(threadPoolSize) ignored: the daemon's --workers applies") }
            guard let source = request.source else { throw ControlError("-o source=DIR is missing") }
            let (client, info, export) = try Self.findDaemon(serving: source, control: control)
            let path = client.path
            guard Self.isListeningSocket(fd) else { throw ControlError("--fd=\(fd) is not a listening socket") }
            var exportOptions = ["export=\(export)"]
            if let cache = request.cache { exportOptions.append("cache=\(cache)") }
            if let locks = request.locks { exportOptions.append("locks=\(locks)") }
            let reply = try client.callOK(ControlRequest(command: "serve-fd", options: exportOptions.joined(separator: ",")), passing: fd)
            // The daemon has its own copy: when it closes it, no one listens on the socket any more.
            close(fd)
            logger.notice("pmfsd \(info.pid) serves \(source) (export \(export)) on listener \(reply.listener ?? 0) until this process stops")
            // Waits for a stop signal until the process ends, so no one joins it.
            JoinableThread.detached {
                var which: Int32 = 0
                sigwait(&stopSignals, &which)
                logger.notice("signal \(which): the daemon stops serving \(source)")
                exit(0)
            }
            client.waitUntilClosed()
            throw ControlError("the pmfsd at \(path) closed the connection (stopped?): \(source) is no longer served")
        } catch let e as ControlError {
            return failure(e)
        } catch {
            return failure(error)
        }
    }

    /// The pmfsd whose host mount holds `source`: the one --control or
    /// PMFS_CONTROL names, else any answering on a `*control.sock` in
    /// /run/pmfs (libvirt gives a virtiofs binary no way to name one, and
    /// each file system has its own daemon).
    static func findDaemon(serving source: String, control: String?) throws -> (ControlClient, DaemonInfo, String) {
        func ask(_ path: String) throws -> (ControlClient, DaemonInfo) {
            let client = try ControlClient(path: path)
            guard let info = try client.callOK(ControlRequest(command: "info")).info else { throw ControlError("the pmfsd at \(path) sent no info") }
            return (client, info)
        }
        let named = control ?? getenv("PMFS_CONTROL").map { String(cString: $0) }.flatMap { $0.isEmpty ? nil : $0 }
        if let named {
            let (client, info): (ControlClient, DaemonInfo)
            do { (client, info) = try ask(named) } catch {
                throw ControlError("\(error) (is the pmfsd serving the file system running with --control \(named)?)")
            }
            guard let mount = info.mount else { throw ControlError("the pmfsd at \(named) has no host mount, so no directory can name an export") }
            return (client, info, try export(source: source, mount: mount))
        }
        var mounts: [String] = []
        for path in controlSockets(in: runDirectory) {
            guard let (client, info) = try? ask(path), let mount = info.mount else { continue }
            mounts.append(mount)
            if let e = try? export(source: source, mount: mount) { return (client, info, e) }
        }
        guard !mounts.isEmpty else {
            throw ControlError("no pmfsd answers on a control socket in \(runDirectory) (start it with --control \(ControlProtocol.defaultPath), or set PMFS_CONTROL)")
        }
        guard realPath(source) != nil else { throw ControlError("source=\(source): \(String(cString: strerror(errno)))") }
        throw ControlError("source=\(source) is not inside the pmfs mount of any running pmfsd (\(mounts.joined(separator: ", ")))")
    }

    static let runDirectory = "/run/pmfs"

    /// The default socket first, then the others, by name.
    static func controlSockets(in directory: String) -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix("control.sock") { names.append(directory + "/" + name) }
        }
        return names.sorted { ($0 == ControlProtocol.defaultPath ? 0 : 1, $0) < ($1 == ControlProtocol.defaultPath ? 0 : 1, $1) }
    }

    /// libvirt passes exactly one `--fd=N`.
    static func descriptor(_ fds: [String]) throws -> Int32 {
        guard fds.count == 1, let n = Int32(fds[0]), n >= 0 else {
            throw ControlError("libvirt's launch takes one --fd=N (a listening socket), got \(fds.isEmpty ? "none" : fds.joined(separator: " "))")
        }
        return n
    }

    /// The `-o` options (each comma-separated; libvirt doubles a comma inside the source path).
    static func parse(_ options: [String]) throws -> Request {
        var r = Request()
        var lockOn = false, lockOff = false
        for item in options.flatMap(splitEscaped) where !item.isEmpty {
            let key = item.split(separator: "=", maxSplits: 1).first.map(String.init) ?? item
            let value = item.count > key.count ? String(item.dropFirst(key.count + 1)) : nil
            switch key {
            case "source":
                guard let value, !value.isEmpty else { throw ControlError("-o source= needs a directory") }
                r.source = value
            case "cache":
                switch value {
                case "none", "never": r.cache = "none"
                case "auto", "metadata": r.cache = "auto"
                case "always": r.cache = "always"
                default: throw ControlError("-o cache=\(value ?? ""): pmfs knows none, auto and always")
                }
            case "xattr":
                r.notes.append("xattr: pmfs always serves extended attributes")
            case "no_xattr":
                r.notes.append("no_xattr ignored: pmfs always serves extended attributes")
            case "posix_lock", "flock":
                lockOn = true
            case "no_posix_lock", "no_flock":
                lockOff = true
            case "sandbox":
                r.notes.append("sandbox=\(value ?? "") ignored: the daemon is one process for every guest; its own options set its confinement")
            default:
                r.notes.append("-o \(item) ignored: pmfs has no such option")
            }
        }
        // pmfs's lock table takes POSIX and flock locks together: any of them on means shared.
        if lockOn {
            r.locks = "shared"
            r.notes.append("locks: shared (pmfsd's lock table: the host mount and every guest see each other's POSIX and flock locks)")
            if lockOff { r.notes.append("one lock kind on and one off: pmfs shares both") }
        } else if lockOff {
            r.locks = "local"
            r.notes.append("locks: local (the guest's kernel keeps its own)")
        }
        return r
    }

    /// Splits at single commas; ",," is a comma (qemu's escaping, which libvirt uses).
    static func splitEscaped(_ text: String) -> [String] {
        var parts: [String] = [], current = ""
        var chars = text[...]
        while let c = chars.popFirst() {
            if c == "," {
                if chars.first == "," { current.append(","); chars.removeFirst() } else { parts.append(current); current = "" }
            } else {
                current.append(c)
            }
        }
        parts.append(current)
        return parts
    }

    /// The export path of `source` inside the daemon's mount: `/` for the
    /// mount itself, `/a/b` for MOUNT/a/b (symbolic links resolved first).
    static func export(source: String, mount: String) throws -> String {
        guard let real = realPath(source) else { throw ControlError("source=\(source): \(String(cString: strerror(errno)))") }
        guard let root = realPath(mount) else { throw ControlError("the daemon's mount \(mount): \(String(cString: strerror(errno)))") }
        if real == root { return "/" }
        let prefix = root.hasSuffix("/") ? root : root + "/"
        guard real.hasPrefix(prefix) else {
            throw ControlError("source=\(source) is not inside the pmfs mount \(root): only directories of the served file system can be exported")
        }
        let relative = String(real.dropFirst(prefix.count))
        guard !relative.contains(",") else { throw ControlError("source=\(source): pmfs export paths cannot contain a comma") }
        return "/" + relative
    }

    static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }

    static func isListeningSocket(_ fd: Int32) -> Bool { ControlCommands.isListeningStream(fd) }
}
