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

    /// Called by a thread that found the memory shrunk: that queue stops at
    /// once and the control loop drops the connection.
    private func memoryShrank(on q: Virtqueue) {
        q.broken = true
        _ = cvhost_eventfd_signal(memoryShrankFD)
    }


    // MARK: workers

    func startWorkerIfReady(_ q: Virtqueue) {
        guard workers[q.index] == nil, q.enabled, q.kickFD >= 0 else { return }
        let ready = readLocked { q.attach(memory) }
        guard ready else { return }
        // The used index in the ring is where the guest expects us to continue.
        if let used = q.used { q.usedIndex = cvhost_load_u16((used + 2).assumingMemoryBound(to: UInt16.self)) }
        q.broken = false
        q.chainLimit = 2 * server.maxRequestSize
        let stop = cvhost_eventfd()
        guard stop >= 0 else {
            // A worker nobody could stop must not start.
            logger.error("cannot start the worker of queue \(q.index): eventfd: \(String(cString: strerror(errno)))")
            return
        }
        guard let thread = JoinableThread.spawn({ [self] in workerLoop(q, stop: stop) }) else {
            close(stop)
            logger.error("cannot start the worker of queue \(q.index)")
            return
        }
        workers[q.index] = (thread, stop)
    }

    func stopWorker(_ index: Int) {
        guard let w = workers.removeValue(forKey: index) else { return }
        // The flag stops a worker between chains; the eventfd wakes a sleeping one.
        queues[index].stopRequested = true
        _ = cvhost_eventfd_signal(w.stop)
        w.thread.join()
        queues[index].stopRequested = false
        close(w.stop)
        pool?.waitIdle()
    }

    private func workerLoop(_ q: Virtqueue, stop: Int32) {
        var poll = PollWindow(limit: UInt64(pollMicroseconds) * 1000)
        while true {
            let ready = cvhost_wait2(q.kickFD, stop, 1000)
            if ready & 2 != 0 || q.stopRequested { return }
            if ready & 1 != 0 { _ = cvhost_eventfd_drain(q.kickFD) }
            poll.wokeUp(at: monotonicNanoseconds())
            // Process everything available, poll a while if the window says so,
            // then ask the guest for kicks again and re-check (a request may
            // have slipped in before the kicks were back on).
            while true {
                memoryLock.withReadLock {
                    processAvailable(q)
                    if poll.window > 0 { q.setKicks(enabled: false) }
                }
                if poll.limit > 0 { poll.answered(at: monotonicNanoseconds()) }
                if q.stopRequested { return }
                if poll.window > 0 {
                    let came = pollForMore(q, nanoseconds: poll.window)
                    poll.polled(success: came)
                    if came { continue }
                }
                let more = readLocked { () -> Bool in
                    q.setKicks(enabled: true)
                    let more = q.hasMore
                    if q.memory.shrank { memoryShrank(on: q) }
                    return more && !q.broken
                }
                if !more { break }
            }
        }
    }

    /// Spins up to `nanoseconds` for a new request; true if one came. Each
    /// turn yields the CPU: a guest's vCPU thread (or the front end) that
    /// shares it runs at once instead of waiting out the window.
    private func pollForMore(_ q: Virtqueue, nanoseconds: UInt64) -> Bool {
        let deadline = monotonicNanoseconds() + nanoseconds
        while monotonicNanoseconds() < deadline {
            if readLocked({ q.hasMore && !q.broken }) || q.stopRequested { return true }
            sched_yield()
        }
        return false
    }

    /// Handles every chain the guest made available (memory lock held shared).
    /// FSYNCs of the pass are collected and made durable together at its end
    /// (one device flush for all of them).
    private func processAvailable(_ q: Virtqueue) {
        var budget = Int(q.size)
        // A relaxed load per chain (see GuestMemory.shrank); the pass stops at the first.
        defer { if q.memory.shrank { memoryShrank(on: q) } }
        let group = q.fsyncGroup
        defer { commit(group, on: q) }
        while !q.memory.shrank, q.mayTakeAnother(&budget) {
            let chain: Virtqueue.Chain
            do {
                guard let c = try q.pop() else { return }
                chain = c
            } catch {
                if q.memory.shrank { return }   // zero pages where the ring was: said once, by the control loop
                logger.error("queue \(q.index): bad descriptor chain (\(error)); the queue is stopped until the device is reset")
                q.broken = true
                if q.errorFD >= 0 { _ = cvhost_eventfd_signal(q.errorFD) }
                return
            }
            // Run to completion here unless another request is already waiting
            // behind one that may block: a hand-over costs two wake-ups, more
            // than a whole fsync on RAM media. FSYNCs wait for the pass's end.
            if Self.joinsFsyncGroup(chain) {
                handle(chain, on: q, group: group)
            } else if let pool, Self.mayBlock(chain), q.hasMore {
                let generation = q.generation, epoch = memoryEpoch
                pool.submit { [self] in
                    memoryLock.withReadLock {
                        // After a device reset the chain's memory may be gone: drop it.
                        guard q.generation == generation else { return }
                        // After a new memory table, find its buffers in the new mappings.
                        guard let current = epoch == memoryEpoch ? chain : rewalk(chain.head, on: q) else { return }
                        handle(current, on: q)
                        if q.memory.shrank { memoryShrank(on: q) }
                    }
                }
            } else {
                handle(chain, on: q)
            }
        }
    }

    /// A chain in flight, walked again over the current memory table; nil (and
    /// the queue stopped, as for any bad chain) if it no longer checks out.
    private func rewalk(_ head: UInt16, on q: Virtqueue) -> Virtqueue.Chain? {
        do { return try q.walk(head) } catch {
            logger.error("queue \(q.index): chain \(head) no longer valid after a new memory table (\(error)); the queue is stopped")
            q.broken = true
            if q.errorFD >= 0 { _ = cvhost_eventfd_signal(q.errorFD) }
            return nil
        }
    }

    /// Commits a pass's FSYNCs: here when nothing waits on the ring, else
    /// on the pool as one task, so requests that came meanwhile are not held
    /// up by the device flush.
    private func commit(_ group: FUSEFsyncGroup, on q: Virtqueue) {
        server.commit(group, handingTo: pool, busy: q.hasMore)
    }

    static func joinsFsyncGroup(_ chain: Virtqueue.Chain) -> Bool {
        chain.withPrefix(FUSEServer.blockingCheckBytes) { FUSEServer.joinsFsyncGroup($0) }
    }

    /// Whether a chain's request may block (FUSEServer decides from its first bytes).
    static func mayBlock(_ chain: Virtqueue.Chain) -> Bool {
        chain.withPrefix(FUSEServer.blockingCheckBytes) { FUSEServer.mayBlock($0) }
    }

    /// Serves one chain (memory lock held shared): the readable buffers hold
    /// the request, the writable ones receive the reply. A WRITE's data is
    /// taken from the guest's buffers and a READ's put into them, with no copy
    /// through ours.
    private func handle(_ chain: Virtqueue.Chain, on q: Virtqueue, group: FUSEFsyncGroup? = nil) {
        let generation = q.generation
        let head = chain.head
        var request = RequestCursor(chain.readable)
        var reply = ReplyWriter(chain.writable)
        let outcome = server.handle(&request, &reply, later: deferredReply(chain, on: q, generation: generation), group: group)
        switch outcome {
        case .replied(let length):
            guard q.generation == generation else { return }
            q.push(head, length: length)
        case .noReply:
            q.push(head, length: 0)   // FORGET, INTERRUPT, undecodable: the buffers still go back
        case .deferred:
            break                     // a waiting SETLKW answers later
        }
    }

    /// Where a deferred reply (SETLKW) goes: copied into the chain's writable
    /// buffers, which may have moved by then.
    private func deferredReply(_ chain: Virtqueue.Chain, on q: Virtqueue, generation: UInt64) -> FUSEReplySink {
        let writable = WritableBuffers(chain.writable)
        let head = chain.head
        let epoch = memoryEpoch
        return { [self] reply in
            // After a reset the chain is gone: drop the reply.
            memoryLock.withReadLock {
                guard q.generation == generation else { return }
                // After a new memory table the buffers are found again in the new mappings.
                var buffers = writable.buffers
                if epoch != memoryEpoch {
                    guard let current = rewalk(head, on: q) else { return }
                    buffers = current.writable
                }
                var out = ReplyWriter(buffers)
                defer { if q.memory.shrank { memoryShrank(on: q) } }
                guard (try? reply.withUnsafeBytes { try out.write(bytes: $0) }) != nil else { return q.push(head, length: 0) }
                q.push(head, length: out.written)
            }
        }
    }
}

/// How long a queue worker polls before it sleeps, adapted as KVM adapts its
/// halt polling: a wake-up soon after going to sleep (the guest's next request
/// came just too late) widens the window to cover that gap; a poll that finds
/// nothing halves it. So a guest issuing requests back to back is served
/// without wake-ups, and an idle or slow one costs no spinning. Never wider
/// than `limit` (0: no polling).
struct PollWindow {
    let limit: UInt64
    private(set) var window: UInt64 = 0
    private var lastAnswered: UInt64 = 0
    static let smallest: UInt64 = 2_000

    init(limit: UInt64) { self.limit = limit }

    /// After a burst was answered (and before polling).
    mutating func answered(at now: UInt64) { lastAnswered = now }

    /// Woken by a kick: had the window covered the gap, no wake-up was needed.
    mutating func wokeUp(at now: UInt64) {
        guard limit > 0, lastAnswered > 0 else { return }
        let gap = now &- lastAnswered
        if gap <= limit { window = min(limit, max(window * 2, gap + gap / 4, Self.smallest)) }
    }

    mutating func polled(success: Bool) {
        if !success { window = window / 2 < Self.smallest ? 0 : window / 2 }
    }
}

/// A chain's writable guest buffers, valid until the chain is pushed back.
final class WritableBuffers: @unchecked Sendable {
    let buffers: [UnsafeMutableRawBufferPointer]
    init(_ buffers: [UnsafeMutableRawBufferPointer]) { self.buffers = buffers }
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
