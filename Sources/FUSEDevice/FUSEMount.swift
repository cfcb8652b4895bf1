import CFUSE
import FUSEProtocol
import Glibc
import Logging
import PMFSConcurrency
import Synchronization

public enum FUSEMountError: Error, CustomStringConvertible {
    case noDevice(String)
    case badMountPoint(String)
    case busy(String)
    case mountFailed(String, Int32)
    case ring(String)

    public var description: String {
        switch self {
        case .noDevice(let why): return "cannot open /dev/fuse: \(why) (is the fuse module loaded? are you root?)"
        case .badMountPoint(let why): return why
        case .busy(let path): return "mount point \(path) is busy: something is already mounted there"
        case .mountFailed(let path, let e): return "mount of \(path) failed: \(String(cString: strerror(e)))"
        case .ring(let why): return "FUSE over io_uring: \(why)"
        }
    }
}

/// How the host mount takes requests from the kernel.
public enum FUSETransportChoice: String, Sendable, CaseIterable {
    /// io_uring queues when the kernel offers them at INIT, else /dev/fuse.
    case auto
    /// io_uring queues or nothing: an error if the kernel does not offer them.
    case uring
    /// read()/write() on /dev/fuse only.
    case device
}

/// The host transport: /dev/fuse, mounted with mount(2) directly (root), read
/// by a few worker threads; after INIT, optionally FUSE over io_uring (one
/// queue per possible CPU, see FUSERingQueue), with /dev/fuse still carrying
/// FORGET, INTERRUPT and notifications. It only moves bytes; the FUSE engine
/// does the rest.
public final class FUSEMount: @unchecked Sendable {
    public let mountPoint: String
    public let server: FUSEServer
    let fd: Int32
    let logger: Logger
    private let stopped = Atomic<Bool>(false)
    /// Set when `serve` returns.
    private let served = Atomic<Bool>(false)
    /// The kernel's connection behind the mount (fusectl's number).
    public let connection: FUSEConnection?
    /// Workers read /dev/fuse one at a time, and serve a lock-dropping request
    /// (see `dropsLocks`) before the next read: the kernel queues requests in
    /// the order their causes happened, and this keeps that order where a
    /// later request depends on an earlier one no one waited for. A pthread
    /// lock, held across the blocking read: its waiters sleep, where a
    /// `Synchronization.Mutex` spins first (4 workers spinning took 9% of
    /// pmfsd's CPU in a create+unlink loop over FUSE io_uring, where only
    /// FORGETs come through /dev/fuse).
    private let reading = Lock()
    /// Requests per transport (io_uring or /dev/fuse).
    public let counters = FUSETransportCounters()
    var queues: [FUSERingQueue] = []
    var queueThreads: [JoinableThread] = []
    /// Threads for ring requests that may block while others wait behind them.
    var ringPool: RequestPool?
    /// True once requests are served from io_uring queues.
    public var usesRing: Bool { !queues.isEmpty }

    /// Opens /dev/fuse and mounts it at `mountPoint`. `default_permissions`
    /// makes the kernel check permissions; `allow_other` lets every user in.
    public init(mountPoint: String, server: FUSEServer, fsName: String, logger: Logger = Logger(label: "pmfs.fuse")) throws {
        var resolved = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        guard realpath(mountPoint, &resolved) != nil else {
            throw FUSEMountError.badMountPoint("mount point \(mountPoint): \(String(cString: strerror(errno)))")
        }
        let path = String(cString: resolved)
        var st = stat()
        guard stat(path, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw FUSEMountError.badMountPoint("mount point \(path) is not a directory")
        }
        if Self.isMountPoint(path) { throw FUSEMountError.busy(path) }
        let fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)
        guard fd >= 0 else { throw FUSEMountError.noDevice(String(cString: strerror(errno))) }
        let options = "fd=\(fd),rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other,max_read=\(server.maxWrite)"
        guard Glibc.mount(fsName, path, "fuse.pmfs", UInt(cfuse_ms_nosuid | cfuse_ms_nodev), options) == 0 else {
            let e = errno
            close(fd)
            throw FUSEMountError.mountFailed(path, e)
        }
        self.mountPoint = path
        self.server = server
        self.fd = fd
        self.logger = logger
        self.connection = FUSEConnection.mounted(at: path)
    }

    /// True if `path` is the mount point of some mount (from /proc/self/mountinfo).
    static func isMountPoint(_ path: String) -> Bool { mountType(at: path) != nil }

    /// The file-system type of the newest mount at `path` ("fuse.pmfs", "ext4"),
    /// or nil if nothing is mounted there (from /proc/self/mountinfo).
    public static func mountType(at path: String) -> String? { mountEntry(at: path)?.type }

    /// The newest mount at `path` in /proc/self/mountinfo: its file-system
    /// type and its device ("major:minor", field 3). Read from the table, not
    /// by stat: a stat of a FUSE mount is a request to its daemon.
    static func mountEntry(at path: String) -> (type: String, device: String)? {
        guard let f = fopen("/proc/self/mountinfo", "r") else { return nil }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>? = nil
        var capacity = 0
        defer { free(line) }
        var entry: (type: String, device: String)? = nil
        while getline(&line, &capacity, f) > 0 {
            let fields = String(cString: line!).split(separator: " ")
            // Mount point is field 5; the type follows the "-" separator.
            guard fields.count > 4, Self.unescape(String(fields[4])) == path,
                  let dash = fields.firstIndex(of: "-"), dash + 1 < fields.count else { continue }
            entry = (String(fields[dash + 1]), String(fields[2]))
        }
        return entry
    }

    /// mountinfo escapes space, tab, newline and backslash as octal.
    static func unescape(_ s: String) -> String {
        var out = ""
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == "\\", let end = s.index(i, offsetBy: 4, limitedBy: s.endIndex), let v = UInt8(s[s.index(after: i)..<end], radix: 8) {
                out.append(Character(UnicodeScalar(v)))
                i = end
            } else {
                out.append(s[i])
                i = s.index(after: i)
            }
        }
        return out
    }

    /// Serves requests on `workers` threads until the file system is unmounted.
    public func serve(workers: Int = 4) {
        // Without `negotiate` no rings are made: INIT must not promise them
        // (the kernel would hold every request for queues that never come).
        if !server.initialized { server.withhold(FUSEServer.overIOURing) }
        let threads = (0..<max(1, workers)).compactMap { _ in JoinableThread.spawn { [self] in workerLoop() } }
        for t in threads { t.join() }
        // The connection is gone (unmounted): the rings' entries have ended or
        // end now; a queue still waiting is told to stop.
        queues.forEach { $0.stop() }
        for t in queueThreads { t.join() }
        queueThreads = []
        ringPool?.stop()
        ringPool = nil
        served.store(true, ordering: .releasing)
    }

    private func workerLoop() {
        let size = max(server.maxRequestSize, 1 << 17)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { buffer.deallocate() }
        // One reply buffer per worker, reused: replies need no allocation.
        var reply = ReplyWriter(owning: server.maxReplySize)
        defer { reply.release() }
        while !stopped.load(ordering: .relaxed) {
            let next: ReadOutcome = reading.withLock {
                let n = read(fd, buffer, size)
                guard n >= 0 else { return .failed(errno) }
                // Served before the next read: see `reading`.
                if Self.dropsLocks(UnsafeRawBufferPointer(start: buffer, count: n)) {
                    serve(UnsafeRawBufferPointer(start: buffer, count: n), &reply)
                    return .served
                }
                return .read(n)
            }
            switch next {
            case .read(let n): serve(UnsafeRawBufferPointer(start: buffer, count: n), &reply)
            case .served: continue
            case .failed(let e):
                switch e {
                case EINTR, EAGAIN, ENOENT: continue   // ENOENT: the request was interrupted before we read it
                case ENODEV: stopped.store(true, ordering: .relaxed); return   // unmounted
                default:
                    logger.error("reading /dev/fuse: \(String(cString: strerror(e)))")
                    stopped.store(true, ordering: .relaxed)
                    return
                }
            }
        }
    }

    private enum ReadOutcome { case read(Int), served, failed(Int32) }

    private func serve(_ bytes: UnsafeRawBufferPointer, _ reply: inout ReplyWriter) {
        counters.deviceRequests.add(1, ordering: .relaxed)
        let fd = self.fd
        var request = RequestCursor(bytes)
        let outcome = server.handle(&request, &reply, deferring: { { late in late.withUnsafeBytes { Self.send(fd, $0) } } })
        if case .replied(let length) = outcome { reply.withWritten(length) { Self.send(fd, $0) } }
    }

    /// Whether a request gives up locks without the caller waiting for it:
    /// the kernel sends RELEASE (which drops the open file's flock and OFD
    /// locks) in the background after close(2) has returned, so a lock asked
    /// for next may be read by another worker before the RELEASE is served.
    static func dropsLocks(_ request: UnsafeRawBufferPointer) -> Bool {
        guard request.count >= MemoryLayout<fuse_in_header>.size else { return false }
        let opcode = request.loadUnaligned(fromByteOffset: MemoryLayout<fuse_in_header>.offset(of: \.opcode)!, as: UInt32.self)
        return opcode == FUSE_RELEASE.rawValue
    }

    /// Writes one reply to /dev/fuse.
    static func send(_ fd: Int32, _ reply: UnsafeRawBufferPointer) {
        let w = Glibc.write(fd, reply.baseAddress, reply.count)
        // ENOENT: the kernel no longer waits for this request (interrupted).
        if w < 0 && errno != ENOENT && errno != ENODEV {
            Logger(label: "pmfs.fuse").warning("writing a reply: \(String(cString: strerror(errno)))")
        }
    }

    /// Sends a notification (FUSENotification) to the kernel; returns 0 or the
    /// errno. ENOENT only means the kernel had nothing of it cached.
    @discardableResult
    public func notify(_ message: [UInt8]) -> Int32 {
        let w = message.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        return w < 0 ? errno : 0
    }

    /// Set when this process can no longer unmount by itself (pmfsd's sandbox:
    /// another mount namespace, no CAP_SYS_ADMIN): asks whoever can.
    public var unmountRequest: (@Sendable () -> Void)?
    /// Set with `unmountRequest`: asks whoever can to end the connection.
    public var abortRequest: (@Sendable () -> Void)?

    /// Detaches the mount: workers see ENODEV and return from `serve`.
    public func unmount() {
        if let unmountRequest { unmountRequest(); return }
        if umount2(mountPoint, cfuse_mnt_detach) != 0 && errno != EINVAL {
            logger.warning("unmount of \(mountPoint): \(String(cString: strerror(errno)))")
        }
    }

    /// How long `stop` lets users of the unmounted mount keep it alive.
    public static let stopGrace: Duration = .seconds(5)

    /// Unmounts, then waits for `serve` (running on another thread) to return.
    /// A lazy unmount ends the connection only when the last process using the
    /// mount (an open file, a working directory) lets go; past `grace` the
    /// connection is aborted, as the exit of a libfuse daemon ends it, so a stop
    /// never waits on them. Returns false if it had to abort.
    @discardableResult
    public func stop(grace: Duration = FUSEMount.stopGrace) -> Bool {
        unmount()
        let deadline = Deadline.after(grace)
        while !served.load(ordering: .acquiring) {
            guard !deadline.hasPassed else {
                logger.warning("\(mountPoint) is still in use \(grace) after its unmount (a process holds a file or its working directory there): ending the FUSE connection, its users get ENOTCONN")
                abortConnection()
                return false
            }
            usleep(20_000)
        }
        return true
    }

    /// Ends the connection (fusectl's abort): every request waiting fails,
    /// the workers read ENODEV.
    public func abortConnection() {
        if let abortRequest { abortRequest(); return }
        guard let connection else {
            logger.error("\(mountPoint): no FUSE connection found to abort")
            return
        }
        let e = connection.abort()
        if e != 0 { logger.error("aborting \(connection): \(String(cString: strerror(e)))") }
    }

    deinit { close(fd) }
}
