import CVhost
import FUSEProtocol
import Glibc
import Logging
import PMFSConcurrency
import Synchronization

/// The vhost-user-fs backend: QEMU's vhost-user-fs-pci device connects to our
/// Unix socket, shares the guest's memory and the virtqueues, and the guest's
/// virtiofs driver sends FUSE requests through them. Queue 0 is the
/// high-priority queue (FORGET, INTERRUPT); queues 1...N carry requests. Each
/// queue has a worker thread woken by its kick eventfd.
public final class VhostUserBackend: @unchecked Sendable {
    public let socketPath: String
    public let server: FUSEServer
    public let requestQueues: Int
    /// After a burst, a worker keeps checking its ring this long before it
    /// sleeps on the kick eventfd (0: never): the next request is picked up
    /// without a wake-up, at the cost of a busy core (SPDK-style polling).
    public var pollMicroseconds = 0
    /// Threads for requests that may block (0: every request on its queue's worker).
    public var requestThreads = 4
    var pool: RequestPool?
    let logger: Logger
    /// Called when the front end goes away or resets: the guest's FUSE session is over.
    public var onSessionEnd: (@Sendable () -> Void)?

    let offeredFeatures = featureVersion1 | featureIndirect | featureEventIndex | featureProtocol
    let offeredProtocol = protocolMQ | protocolReplyAck | protocolResetDevice
    var ackedFeatures: UInt64 = 0
    var ackedProtocol: UInt64 = 0
    var memory = GuestMemory.empty
    /// Bumped (under the memory lock) when a new memory table replaces the
    /// mappings: host pointers taken before are stale from then on.
    var memoryEpoch: UInt64 = 0
    var queues: [Virtqueue]
    var workers: [Int: (thread: JoinableThread, stop: Int32)] = [:] {
        didSet { runningQueueCount.store(workers.count, ordering: .relaxed) }
    }
    private let runningQueueCount = Atomic<Int>(0)
    private let connectedNow = Atomic<Bool>(false)
    /// Whether a front end is connected now (read by the metrics, from another thread).
    public var isConnected: Bool { connectedNow.load(ordering: .relaxed) }
    /// Queues with a running worker now.
    public var runningQueues: Int { runningQueueCount.load(ordering: .relaxed) }
    /// Requests the guest has queued that no worker has taken yet (as each
    /// queue's worker last saw its ring).
    public var queuedRequests: Int { queueDepths.total }
    let queueDepths = QueueDepths(count: VhostUserBackend.queueLimit)
    /// Workers read guest memory under this lock (shared); a new memory table takes it exclusively.
    /// A worker may take it shared twice (a request the full pool hands back
    /// runs on the worker): glibc's default rwlock prefers readers, so that
    /// does not wait behind a writer.
    let memoryLock = ReadWriteLock()
    private var listenFD: Int32 = -1
    /// False for an inherited socket (`--fd`): its path belongs to whoever made it.
    private var ownsSocketPath = true
    /// The connected front end's socket, -1 between front ends. Under a lock:
    /// `stop` and `disconnect` shut it down from other threads, and must not
    /// reach a descriptor number that was closed and reused.
    private let connection = Mutex<Int32>(-1)
    /// Front-end sessions ended so far (a disconnect waits for the next).
    private let sessionsEnded = Atomic<Int>(0)
    private var stopping = false
    /// Signalled by whichever thread finds that the front end's memory shrank
    /// under its mapping; the control loop waits on it beside the socket.
    let memoryShrankFD = cvhost_eventfd()

    public init(socketPath: String, server: FUSEServer, requestQueues: Int = 1, logger: Logger = Logger(label: "pmfs.vhost")) throws {
        self.socketPath = socketPath
        self.server = server
        self.requestQueues = max(1, requestQueues)
        self.logger = logger
        queues = (0...max(1, requestQueues)).map { [queueDepths] in Virtqueue(index: $0, depths: queueDepths) }
        guard memoryShrankFD >= 0 else { throw VhostError.socket("eventfd: \(String(cString: strerror(errno)))") }
        try listen()
    }

    /// Serves on a socket that is already listening (libvirt's `--fd`).
    public init(listeningSocket fd: Int32, server: FUSEServer, requestQueues: Int = 1, logger: Logger = Logger(label: "pmfs.vhost")) throws {
        var type: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) == 0, type == Int32(SOCK_STREAM.rawValue) else {
            throw VhostError.socket("descriptor \(fd) is not a stream socket")
        }
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        self.socketPath = "descriptor \(fd)"
        ownsSocketPath = false
        self.server = server
        self.requestQueues = max(1, requestQueues)
        self.logger = logger
        queues = (0...max(1, requestQueues)).map { [queueDepths] in Virtqueue(index: $0, depths: queueDepths) }
        guard memoryShrankFD >= 0 else { throw VhostError.socket("eventfd: \(String(cString: strerror(errno)))") }
        listenFD = fd
    }

    deinit { close(memoryShrankFD) }

    /// Lets a group connect (QEMU often runs as another user): owner root,
    /// that group, mode 0660.
    public func allowGroup(_ gid: gid_t) throws {
        guard chown(socketPath, getuid(), gid) == 0, chmod(socketPath, 0o660) == 0 else {
            throw VhostError.socket("cannot give \(socketPath) to group \(gid): \(String(cString: strerror(errno)))")
        }
    }

    private func listen() throws {
        unlink(socketPath)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw VhostError.socket("socket: \(String(cString: strerror(errno)))") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let path = Array(socketPath.utf8)
        guard path.count < MemoryLayout.size(ofValue: address.sun_path) else { close(fd); throw VhostError.socket("socket path too long: \(socketPath)") }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: path) }
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, Glibc.listen(fd, 1) == 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw VhostError.socket("cannot listen on \(socketPath): \(e)")
        }
        listenFD = fd
    }

    /// Accepts front ends one after the other until `stop()`: a guest that
    /// reboots or a QEMU that exits and reconnects gets a fresh device.
    public func serve() {
        if requestThreads > 0 { pool = RequestPool(threads: requestThreads) }
        defer { pool?.stop(); pool = nil }
        while !stopping {
            let conn = cvhost_accept(listenFD)
            if conn < 0 {
                if errno == EINTR { continue }
                if stopping { break }
                logger.error("accept: \(String(cString: strerror(errno)))")
                break
            }
            logger.notice("front end connected on \(socketPath)")
            connection.withLock { $0 = conn }
            connectedNow.store(true, ordering: .relaxed)
            handleConnection(conn)
            connectedNow.store(false, ordering: .relaxed)
            connection.withLock { fd in
                fd = -1
                close(conn)
            }
            resetDevice()
            onSessionEnd?()
            sessionsEnded.add(1, ordering: .releasing)
            logger.notice("front end disconnected; waiting for the next one")
        }
    }

    public func stop() {
        stopping = true
        connection.withLock { if $0 >= 0 { shutdown($0, Int32(SHUT_RDWR)) } }
        shutdown(listenFD, Int32(SHUT_RDWR))
        close(listenFD)
        if ownsSocketPath { unlink(socketPath) }
    }

    /// Ends the connected front end's session as its going away would (the
    /// device reset, the session's handles, locks and lookups released) and
    /// keeps listening for the next one. Waits up to `timeout` for the session
    /// to end. False if no front end was connected.
    public func disconnect(timeout: Duration = .seconds(10)) -> DisconnectOutcome {
        let ended = sessionsEnded.load(ordering: .acquiring)
        let connected = connection.withLock { fd -> Bool in
            guard fd >= 0 else { return false }
            shutdown(fd, Int32(SHUT_RDWR))
            return true
        }
        guard connected else { return .notConnected }
        let deadline = Deadline.after(timeout)
        while sessionsEnded.load(ordering: .acquiring) == ended {
            guard !deadline.hasPassed else { return .stillEnding }
            usleep(10_000)
        }
        return .ended
    }

    public enum DisconnectOutcome: Sendable { case ended, stillEnding, notConnected }

    // MARK: messages

    /// The buffers one connection receives its messages into.
    private struct ReceiveBuffers {
        var header = [UInt8](repeating: 0, count: VhostUserHeader.size)
        var payload = [UInt8](repeating: 0, count: 4096)
        var fds = [Int32](repeating: -1, count: 8)
    }

    private func handleConnection(_ conn: Int32) {
        var buffers = ReceiveBuffers()
        _ = cvhost_eventfd_drain(memoryShrankFD)   // left by the last front end's workers
        while true {
            // Between messages: a worker may have found the memory shrunk.
            let ready = cvhost_wait2(conn, memoryShrankFD, -1)
            if ready < 0 || ready & 2 != 0 || memory.shrank { return closingForShrunkMemory() }
            guard let (header, body, received) = receiveMessage(conn, &buffers) else { return }
            let result = handleMessage(header.request, body, received)
            // This thread reads the rings too (starting a worker).
            if memory.shrank { return closingForShrunkMemory() }
            guard let reply = replyPayload(result, flags: header.flags) else { return }
            if let reply, !send(VhostUserReply.frame(for: header.request, payload: reply), on: conn) { return }
        }
    }

    /// The next message's header, body and fds; nil when the front end went
    /// away, sent a short message or claims a body larger than any message
    /// (the fds that came are closed then).
    private func receiveMessage(_ conn: Int32, _ buffers: inout ReceiveBuffers) -> (VhostUserHeader, [UInt8], [Int32])? {
        var nfds: Int32 = 0
        let n = buffers.header.withUnsafeMutableBytes { h in
            buffers.fds.withUnsafeMutableBufferPointer { cvhost_recv_with_fds(conn, h.baseAddress, 12, $0.baseAddress, 8, &nfds) }
        }
        if n <= 0 { return nil }
        let received = Array(buffers.fds.prefix(Int(nfds)))
        guard n == 12 || (n < 12 && buffers.header.withUnsafeMutableBytes({ cvhost_recv_exact(conn, $0.baseAddress! + n, 12 - n) }) == 12 - n),
              let header = VhostUserHeader(buffers.header) else {
            received.forEach { close($0) }
            return nil
        }
        guard header.size <= buffers.payload.count else {
            logger.error("vhost-user message \(header.request) claims \(header.size) bytes; closing the connection")
            received.forEach { close($0) }
            return nil
        }
        if header.size > 0 {
            guard buffers.payload.withUnsafeMutableBytes({ cvhost_recv_exact(conn, $0.baseAddress, header.size) }) == header.size else {
                received.forEach { close($0) }
                return nil
            }
        }
        return (header, Array(buffers.payload.prefix(header.size)), received)
    }

    /// What a handled message answers: `.some(nil)` for nothing (an ack the
    /// front end did not ask for), nil to close the connection.
    private func replyPayload(_ result: Outcome, flags: UInt32) -> [UInt8]?? {
        switch result {
        case .reply(let bytes): return .some(bytes)
        case .ack(let ok):
            guard ackedProtocol & Self.protocolReplyAck != 0 && flags & Self.needReplyFlag != 0 else { return .some(nil) }
            return .some(VhostUserReply.ack(ok))
        case .close: return nil
        }
    }

    private func send(_ frame: [UInt8], on conn: Int32) -> Bool {
        frame.withUnsafeBytes({ cvhost_send(conn, $0.baseAddress, $0.count) }) >= 0
    }

    /// A fatal front-end error: what it shared is gone, so is the connection
    /// (the caller returns; the device is reset and the next front end served).
    private func closingForShrunkMemory() {
        guard memory.shrank else { return }   // the socket's own end or error
        logger.error("front end on \(socketPath): guest memory shrank under its mapping; closing the connection")
    }
}

/// Set once, read by the thread that handed out the closure.
final class Flag: Sendable {
    private let value = Mutex(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}

public enum VhostError: Error, CustomStringConvertible {
    case socket(String)
    public var description: String {
        switch self { case .socket(let s): return s }
    }
}
