import FUSEDevice
import Glibc

/// How one walk of a pool went.
enum WalkEnd: Equatable {
    /// The walking child's end: exit 0 clean, 2 errors, 3 not opened.
    case walked(ChildEnd)
    /// pmfsd, serving the pool, failed: it died, hung or did not stop cleanly.
    case daemon(String)
}

extension Run {
    /// Walks the pool through the engine in a child, or (`--through mount`)
    /// through a host mount that a real pmfsd serves.
    func walk(_ pool: String, _ data: String, _ work: String, _ report: String, tag: String) -> WalkEnd {
        unlink(report)
        guard through == .mount else {
            return .walked(spawn(selfExecutable(), ["walk", "--pool", pool, "--data", data, "--report", report, "--tag", tag], timeout: timeout))
        }
        return walkServed(pool, data, mountPoint: "\(work)/mnt", log: "\(work)/pmfsd-\(tag).log", report, tag: tag)
    }

    /// pmfsd serves the pool on `mountPoint`; a child walks the mount. pmfsd
    /// must outlive the walk, answer it in time, and stop cleanly on SIGTERM.
    /// A pool it refuses must be refused as a start failure (exit 1).
    private func walkServed(_ pool: String, _ data: String, mountPoint: String, log: String, _ report: String, tag: String) -> WalkEnd {
        guard let daemon = start(siblingExecutable("pmfsd"), ["--pool", pool, "--data", data, "--mount", mountPoint, "--log-level", "error"], output: log) else {
            return .daemon("pmfsd could not be started")
        }
        switch waitForMount(mountPoint, daemon) {
        case .some(.exited(1)):
            writeText(report, "not opened: \(readText(log).suffix(300))")
            return .walked(.exited(3))
        case .some(let end):
            return .daemon("pmfsd ended before mounting: \(end): \(readText(log).suffix(300))")
        case nil:
            break
        }
        let connection = FUSEConnection.mounted(at: mountPoint)
        guard let walker = start(selfExecutable(), ["walk-mount", "--root", mountPoint, "--report", report, "--tag", tag]) else {
            return .daemon("the walker could not be started")
        }
        let walk = wait(walker, timeout: timeout, killing: false)
        if walk == .timedOut {
            // A process waiting on a request pmfsd has taken cannot be killed
            // until the connection is aborted.
            connection?.abort()
            kill(walker, SIGKILL)
            kill(daemon, SIGKILL)
            _ = wait(walker, timeout: timeout, killing: true)
            _ = wait(daemon, timeout: timeout, killing: true)
            detach(mountPoint)
            return .daemon("pmfsd did not answer the walk within \(timeout) s")
        }
        if case .some(let end) = ended(daemon) {
            detach(mountPoint)
            return .daemon("pmfsd died during the walk (\(end)): \(readText(log).suffix(300))")
        }
        kill(daemon, SIGTERM)
        let stop = wait(daemon, timeout: timeout, killing: true)
        detach(mountPoint)
        guard stop == .exited(0) else { return .daemon("pmfsd did not stop cleanly after the walk (\(stop)): \(readText(log).suffix(300))") }
        return .walked(walk)
    }

    /// nil once `mountPoint` is mounted, or how pmfsd ended before that.
    private func waitForMount(_ mountPoint: String, _ daemon: pid_t) -> ChildEnd? {
        let deadline = now() + timeout
        while now() < deadline {
            if isMounted(mountPoint) { return nil }
            if let end = ended(daemon) { return end }
            usleep(5000)
        }
        kill(daemon, SIGKILL)
        _ = wait(daemon, timeout: timeout, killing: true)
        detach(mountPoint)
        return .timedOut
    }

    /// How `pid` ended, if it has (reaped), else nil.
    private func ended(_ pid: pid_t) -> ChildEnd? {
        let end = wait(pid, timeout: 0, killing: false)
        return end == .timedOut ? nil : end
    }

    private func isMounted(_ path: String) -> Bool {
        var here = stat(), parent = stat()
        return stat(path, &here) == 0 && stat(path + "/..", &parent) == 0 && here.st_dev != parent.st_dev
    }

    /// A mount a killed pmfsd left behind goes (lazily: nothing may be using it by then).
    private func detach(_ path: String) {
        if isMounted(path) || access(path, F_OK) != 0 { umount2(path, Int32(MNT_DETACH)) }
    }
}
