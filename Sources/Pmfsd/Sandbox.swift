// pmfsd's sandbox, entered once everything is set up (pool and data device
// open, host mount made, guest, control and metrics sockets listening), as
// virtiofsd confines itself before serving: a private mount namespace, every
// capability but those serving needs dropped, and a seccomp allow-list of the
// system calls the serving threads make. design/architecture.md, "The sandbox".
import ArgumentParser
import CSandbox
import FUSEDevice
import Glibc
import Logging

/// --sandbox.
enum SandboxMode: String, ExpressibleByArgument, CaseIterable {
    /// Mount namespace, capabilities and seccomp (per --seccomp).
    case namespace
    /// None of it: for debugging (strace, gdb, finding a call the list lacks).
    case none
}

/// --seccomp: what a system call off the allow-list does.
enum SeccompAction: String, ExpressibleByArgument, CaseIterable {
    /// The kernel kills the whole process (SIGSYS).
    case kill
    /// The call is allowed and the kernel's audit logs it (dmesg: type=1326).
    case log
    /// No filter.
    case none
}

struct SandboxError: Error, CustomStringConvertible {
    let description: String
    init(_ step: String, errno e: Int32) { description = "sandbox: \(step): \(String(cString: strerror(e)))" }
}

/// What pmfsd asks of its unmount helper, one byte each.
enum UnmountHelperRequest: UInt8 {
    /// Detach the host's mount (at stop).
    case unmount = 0x75        // "u"
    /// End the FUSE connection: users kept the unmounted mount alive too long.
    case abortConnection = 0x61   // "a"
}

enum Sandbox {
    /// What the serving threads still need; every other capability goes.
    /// CAP_CHOWN: a guest socket bound after start (a reload) with
    /// --socket-group is given to a group pmfsd is not a member of. Unmounting
    /// at stop is the unmount helper's, so CAP_SYS_ADMIN goes; serve-fd takes
    /// a descriptor already open; no file is opened by path but the
    /// configuration and sockets in root's directories, which root owns.
    static let keptCapabilities: [(number: Int32, name: String)] = [(0, "CAP_CHOWN")]

    static let sysAdmin: UInt64 = 1 << 21

    /// PMFS_SANDBOX_TEST_HOOK=1 at start: the control socket's hidden
    /// `sandbox-test-forbidden-call` makes its thread call personality(2).
    static let testHookEnabled = getenv("PMFS_SANDBOX_TEST_HOOK").map { String(cString: $0) == "1" } ?? false

    static func enter(_ mode: SandboxMode, seccomp: SeccompAction, hostMount: FUSEMount?, logger: Logger) throws {
        guard mode == .namespace else {
            logger.notice("sandbox off (--sandbox none): all capabilities kept, no system-call filter")
            return
        }
        var done: [String] = []
        if csandbox_effective_capabilities() & sysAdmin != 0 {
            if let hostMount { try startUnmountHelper(for: hostMount) }
            // The host's mount was made in the host's namespace, so the host keeps
            // it; the copy in the new namespace is detached, as only the host uses it.
            let rc = csandbox_enter_namespace(hostMount?.mountPoint)
            guard rc == 0 else { throw SandboxError("private mount namespace", errno: -rc) }
            warnUnreached("the host's mount namespace", logger)
            done.append("private mount namespace")
        } else {
            logger.warning("sandbox: no CAP_SYS_ADMIN, so no private mount namespace")
        }
        let keep = keptCapabilities.reduce(UInt64(0)) { $0 | 1 << UInt64($1.number) }
        let rc = csandbox_drop_capabilities(keep)
        guard rc == 0 else { throw SandboxError("dropping capabilities", errno: -rc) }
        warnUnreached("their capabilities", logger)
        done.append("capabilities: \(keptCapabilities.map(\.name).joined(separator: ", ")) kept")
        if seccomp != .none {
            let rc = csandbox_load_seccomp(seccomp == .log ? 1 : 0)
            guard rc == 0 else { throw SandboxError("seccomp", errno: -rc) }
            done.append("seccomp allow-list of \(csandbox_allowed_count()) system calls, others \(seccomp == .kill ? "kill the process" : "logged")")
        }
        logger.notice("sandbox: \(done.joined(separator: "; "))")
    }

    /// Starts `pmfsd --unmount-on-request MOUNT`, which stays in the host's
    /// namespace with the capabilities this process gives up and unmounts the
    /// host mount when asked (at stop). A process of its own: nothing pmfsd
    /// holds (memory, descriptors) reaches it but the request pipe.
    static func startUnmountHelper(for mount: FUSEMount) throws {
        let arguments = ["pmfsd", "--unmount-on-request", mount.mountPoint]
        var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var requestFD: Int32 = -1
        let pid = csandbox_spawn_with_pipe("/proc/self/exe", &argv, &requestFD)
        guard pid > 0 else { throw SandboxError("starting the unmount helper", errno: -pid) }
        mount.unmountRequest = { [requestFD] in
            var byte = UnmountHelperRequest.unmount.rawValue
            _ = write(requestFD, &byte, 1)
        }
        mount.abortRequest = { [requestFD] in
            var byte = UnmountHelperRequest.abortConnection.rawValue
            _ = write(requestFD, &byte, 1)
        }
    }

    /// The unmount helper's life: a byte on stdin per request (see
    /// `UnmountHelperRequest`); end of file (pmfsd gone without asking, as
    /// when killed) leaves the mount as it is.
    static func unmountOnRequest(_ path: String) -> ExitCode {
        // Found while the mount is in the table: after the unmount it is not.
        let connection = FUSEConnection.mounted(at: path)
        while let request = readRequest() {
            switch request {
            case .unmount:
                guard umount2(path, Int32(MNT_DETACH)) == 0 || errno == EINVAL else {
                    complain("\(path): \(String(cString: strerror(errno)))")
                    return .failure
                }
            case .abortConnection:
                guard let connection else { complain("\(path): no FUSE connection found"); continue }
                let e = connection.abort()
                if e != 0 { complain("aborting \(connection): \(String(cString: strerror(e)))") }
            }
        }
        return .success
    }

    /// The next request on stdin, or nil at end of file.
    private static func readRequest() -> UnmountHelperRequest? {
        while true {
            var byte: UInt8 = 0
            var n = 0
            repeat { n = read(STDIN_FILENO, &byte, 1) } while n < 0 && errno == EINTR
            guard n == 1 else { return nil }
            if let request = UnmountHelperRequest(rawValue: byte) { return request }
        }
    }

    private static func complain(_ what: String) {
        let text = "pmfsd unmount helper: \(what)\n"
        text.withCString { _ = write(STDERR_FILENO, $0, strlen($0)) }
    }

    /// Threads that block every signal (libdispatch's) could not be asked:
    /// none should exist yet (the write-back timer starts after the sandbox).
    static func warnUnreached(_ kept: String, _ logger: Logger) {
        let n = csandbox_unreached_threads()
        if n > 0 { logger.warning("sandbox: \(n) thread(s) block signals and keep \(kept)") }
    }

    /// A system call off the allow-list, from the calling thread (the test hook).
    static func makeForbiddenCall() -> Int { csandbox_forbidden_call() }
}
