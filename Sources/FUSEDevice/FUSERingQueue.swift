import CFUSE
import CURing
import FUSEProtocol
import Glibc
import Logging
import PMFSConcurrency
import Synchronization

/// One ring entry of a FUSE io_uring queue: the header buffer (iovec 0) and the
/// payload buffer (iovec 1) the kernel copies a request into and a reply out of.
/// The payload sits behind a small prefix of our own, so the in-header and the
/// opcode's first argument can be copied right in front of it and the engine
/// gets the request as one contiguous message, as read() on /dev/fuse gives it.
final class FUSERingEntry: @unchecked Sendable {
    static let headerSize = MemoryLayout<cfuse_uring_req_header>.size
    /// Room in front of the payload for fuse_in_header + the op argument.
    static let prefix = 4096
    static let inHeaderSize = MemoryLayout<fuse_in_header>.size
    static let outHeaderSize = MemoryLayout<fuse_out_header>.size
    static let opInOffset = MemoryLayout<cfuse_uring_req_header>.offset(of: \.op_in)!
    static let inOutOffset = MemoryLayout<cfuse_uring_req_header>.offset(of: \.ring_ent_in_out)!

    let index: Int
    let header: UnsafeMutableRawPointer
    let region: UnsafeMutableRawPointer
    let payloadSize: Int
    let iov: UnsafeMutablePointer<iovec>
    /// Where a READ's out-header would go (the engine leaves it empty and puts
    /// the data in the payload behind it).
    let outHeaderRoom: UnsafeMutableRawPointer
    /// The request this entry holds and its reply once the engine gave it:
    /// replies may come from another thread (a lock granted later).
    let state = Mutex<(commitID: UInt64, reply: RingReply?)>((0, nil))
    /// The commit id of the FSYNC this entry put in its queue's group (set on
    /// the queue thread before the request is handled; its sink reads it).
    var fsyncCommitID: UInt64 = 0

    var payload: UnsafeMutableRawPointer { region + Self.prefix }

    init(index: Int, payloadSize: Int) {
        self.index = index
        self.payloadSize = payloadSize
        header = UnsafeMutableRawPointer.allocate(byteCount: Self.headerSize, alignment: 4096)
        header.initializeMemory(as: UInt8.self, repeating: 0, count: Self.headerSize)
        region = UnsafeMutableRawPointer.allocate(byteCount: Self.prefix + payloadSize, alignment: 4096)
        outHeaderRoom = UnsafeMutableRawPointer.allocate(byteCount: Self.outHeaderSize, alignment: 8)
        replyMemory = [UnsafeMutableRawBufferPointer(start: outHeaderRoom, count: Self.outHeaderSize),
                       UnsafeMutableRawBufferPointer(start: region + Self.prefix, count: payloadSize)]
        iov = UnsafeMutablePointer<iovec>.allocate(capacity: 2)
        iov[0] = iovec(iov_base: header, iov_len: Self.headerSize)
        iov[1] = iovec(iov_base: region + Self.prefix, iov_len: payloadSize)
    }

    deinit {
        header.deallocate()
        region.deallocate()
        outHeaderRoom.deallocate()
        iov.deallocate()
    }

    var inHeader: fuse_in_header { header.loadUnaligned(as: fuse_in_header.self) }
    var ringInOut: cfuse_uring_ent_in_out {
        header.loadUnaligned(fromByteOffset: Self.inOutOffset, as: cfuse_uring_ent_in_out.self)
    }

    /// The request as one message (in-header, op argument, payload), after
    /// checking every length the kernel gave; nil if they do not add up.
    func message() -> UnsafeRawBufferPointer? {
        let h = inHeader
        let payloadBytes = Int(ringInOut.payload_sz)
        guard payloadBytes <= payloadSize else { return nil }
        let (argPlusHeader, o1) = Int(h.len).subtractingReportingOverflow(payloadBytes)
        guard !o1, argPlusHeader >= Self.inHeaderSize else { return nil }
        let argBytes = argPlusHeader - Self.inHeaderSize
        guard argBytes <= Int(cfuse_uring_op_in_size) else { return nil }
        let start = payload - argBytes - Self.inHeaderSize
        start.copyMemory(from: header, byteCount: Self.inHeaderSize)
        (start + Self.inHeaderSize).copyMemory(from: header + Self.opInOffset, byteCount: argBytes)
        return UnsafeRawBufferPointer(start: start, count: Int(h.len))
    }

    /// Where the engine writes every reply: the out-header's room, then the
    /// payload (made once, so wrapping it allocates nothing).
    let replyMemory: [UnsafeMutableRawBufferPointer]

    /// Puts a reply from the engine into the entry's buffers: the out-header in
    /// the header buffer, the rest in the payload. A reply too big for the
    /// payload, or malformed, becomes EIO.
    func store(_ reply: RingReply, unique: UInt64) {
        switch reply {
        case .inPlace(let length): storeInPlace(length, unique: unique)
        case .message(let bytes): store(reply: bytes, unique: unique)
        case .ended: storeEnd(unique: unique)
        }
    }

    /// Ends a request that wants no answer: a header alone, no payload.
    private func storeEnd(unique: UInt64) {
        let out = fuse_out_header(len: UInt32(Self.outHeaderSize), error: 0, unique: unique)
        withUnsafeBytes(of: out) { header.copyMemory(from: $0.baseAddress!, byteCount: Self.outHeaderSize) }
        var inOut = ringInOut
        inOut.payload_sz = 0
        withUnsafeBytes(of: inOut) { (header + Self.inOutOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// A reply the engine wrote into `replyMemory`: its out-header is moved
    /// to the header buffer, its body is already in the payload.
    private func storeInPlace(_ length: Int, unique: UInt64) {
        var out = fuse_out_header(len: UInt32(Self.outHeaderSize), error: -EIO, unique: unique)
        var body = 0
        if length >= Self.outHeaderSize, length - Self.outHeaderSize <= payloadSize {
            out = outHeaderRoom.loadUnaligned(as: fuse_out_header.self)
            body = length - Self.outHeaderSize
        }
        out.len = UInt32(Self.outHeaderSize + body)
        withUnsafeBytes(of: out) { header.copyMemory(from: $0.baseAddress!, byteCount: Self.outHeaderSize) }
        var inOut = ringInOut
        inOut.payload_sz = UInt32(body)
        withUnsafeBytes(of: inOut) { (header + Self.inOutOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    /// A reply that came as a message (a deferred lock answer).
    private func store(reply bytes: [UInt8], unique: UInt64) {
        var out = fuse_out_header(len: UInt32(Self.outHeaderSize), error: -EIO, unique: unique)
        var body = 0
        if bytes.count >= Self.outHeaderSize {
            let given = bytes.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
            let length = Int(given.len)
            if given.error != 0 {
                out.error = given.error
            } else if length == bytes.count, length - Self.outHeaderSize <= payloadSize {
                out.error = 0
                body = length - Self.outHeaderSize
                bytes.withUnsafeBytes { payload.copyMemory(from: $0.baseAddress! + Self.outHeaderSize, byteCount: body) }
            }
        }
        out.len = UInt32(Self.outHeaderSize + body)
        withUnsafeBytes(of: out) { header.copyMemory(from: $0.baseAddress!, byteCount: Self.outHeaderSize) }
        var inOut = ringInOut
        inOut.payload_sz = UInt32(body)
        withUnsafeBytes(of: inOut) { (header + Self.inOutOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }
}

/// Counts of requests per host transport, for logs and tests: proof that
/// requests really came through io_uring rather than a silent fallback.
public final class FUSETransportCounters: Sendable {
    let ringRequests = Atomic<Int>(0)
    let deviceRequests = Atomic<Int>(0)
    let ringOffloaded = Atomic<Int>(0)
    let ringFsyncGroups = Atomic<Int>(0)
    let ringGroupedFsyncs = Atomic<Int>(0)
    public init() {}
    /// FSYNC groups committed from the rings, and the FSYNCs in them: more
    /// FSYNCs than groups means some shared one device flush.
    public var fsyncGroups: Int { ringFsyncGroups.load(ordering: .relaxed) }
    public var groupedFsyncs: Int { ringGroupedFsyncs.load(ordering: .relaxed) }
    /// Ring requests that ran on a pool thread (they may block, others waited).
    public var offloaded: Int { ringOffloaded.load(ordering: .relaxed) }
    /// Requests taken from io_uring queues.
    public var viaRing: Int { ringRequests.load(ordering: .relaxed) }
    /// Requests read from /dev/fuse (INIT, FORGET, INTERRUPT, and everything when the rings are off).
    public var viaDevice: Int { deviceRequests.load(ordering: .relaxed) }
}

/// One FUSE-over-io_uring queue (one per possible CPU, as the kernel wants:
/// it switches to the rings only when every queue has an entry, and queues a
/// request on the queue of the CPU it was made on). One thread owns the ring:
/// it registers the entries, takes requests from completions, runs them
/// through the engine and commits each reply with the fetch of the next
/// request in one command. Replies given later from other threads come back
/// to it through a mailbox and an eventfd the ring also waits on.
final class FUSERingQueue: @unchecked Sendable {
    let qid: Int
    let fd: Int32
    let server: FUSEServer
    let counters: FUSETransportCounters
    let logger: Logger
    let entries: [FUSERingEntry]
    /// Where a request that may block goes when others wait behind it.
    let pool: RequestPool?
    private let wakeFD: Int32
    private let wakeBuffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    private let mailbox = Mutex<[Int]>([])
    /// The mailbox's other array (the queue thread only).
    private var mailboxSpare: [Int] = []
    private let stopping = Atomic<Bool>(false)
    private var owner = pthread_t()
    /// The entry whose request the queue thread is handling now (its reply is
    /// committed right after); read by `replied` only on that thread.
    private var handling = -1
    /// The FSYNCs of one batch of completions, made durable together after it
    /// (one device flush for all), as the vhost-user queues do per pass.
    private let fsyncGroup = FUSEFsyncGroup()
    /// Set while the queue thread commits `fsyncGroup` itself: the replies go
    /// to the mailbox without a wake-up, and are committed right after.
    private var committingInline = false
    /// The longest the thread polls for the next request after answering,
    /// before it sleeps in the kernel (ns; 0: never polls).
    private let pollLimit: UInt64
    /// Per entry, where the reply of an FSYNC it put in `fsyncGroup` goes: made
    /// once, so an FSYNC allocates no sink. An entry holds one request at a
    /// time and a group answers each of its FSYNCs once. In a struct: an array
    /// of bare closures would hand each out wrapped in an allocated thunk.
    private struct Sink { let reply: FUSEReplySink }
    private var fsyncSinks: [Sink] = []
    /// Set once the thread has its ring and registered its entries (or failed to).
    let registered = Atomic<Int>(0)   // 0 pending, 1 ok, -errno failed
    static let wakeTag = UInt64.max

    init(qid: Int, depth: Int, fd: Int32, server: FUSEServer, payloadSize: Int, counters: FUSETransportCounters,
         pool: RequestPool? = nil, pollMicroseconds: Int = 0, logger: Logger) throws {
        self.qid = qid
        pollLimit = UInt64(max(0, pollMicroseconds)) * 1000
        self.pool = pool
        self.fd = fd
        self.server = server
        self.counters = counters
        self.logger = logger
        entries = (0..<depth).map { FUSERingEntry(index: $0, payloadSize: payloadSize) }
        wakeFD = curing_eventfd()
        guard wakeFD >= 0 else { throw FUSEMountError.ring("eventfd: \(String(cString: strerror(errno)))") }
        // Weak: a group handed to the pool may be answered after the queue is gone.
        fsyncSinks = entries.map { e in Sink { [weak self] late in self?.replied(e, commitID: e.fsyncCommitID, .message(late)) } }
    }

    deinit {
        close(wakeFD)
        wakeBuffer.deallocate()
    }

    /// Asks the queue's thread to leave its loop.
    func stop() {
        stopping.store(true, ordering: .relaxed)
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// The queue thread's body: returns when the kernel ended every entry
    /// (unmount) or on `stop()`.
    func run() {
        owner = pthread_self()
        pinToCPU()
        var ring = io_uring()
        let sqEntries = UInt32(max(8, (entries.count + 1).nextPowerOfTwo))
        // /dev/fuse is registered file 0, the wake eventfd file 1; the ring
        // takes URING_CMD and READ on those and nothing else.
        var rc = curing_init_fuse_ring(&ring, sqEntries, fd, wakeFD)
        guard rc == 0 else { return failed("ring setup", rc) }
        defer { curing_exit(&ring) }
        armWake(&ring)
        for e in entries { queueCommand(&ring, e, cfuse_io_uring_cmd_register, commitID: 0) }
        // A registered entry completes only when a request comes; a refused
        // one completes at once, during the submission.
        rc = io_uring_submit(&ring)
        guard rc >= 0 else { return failed("registering entries", rc) }
        var live = entries.count
        var tags = [UInt64](repeating: 0, count: 64)
        var results = [Int32](repeating: 0, count: 64)
        var n = Int(curing_reap(&ring, &tags, &results, UInt32(tags.count)))
        if let refused = (0..<n).first(where: { tags[$0] != Self.wakeTag && results[$0] < 0 }) {
            return failed("registering entries", results[refused])
        }
        registered.store(1, ordering: .releasing)
        var poll = PollWindow(limit: pollLimit)
        while true {
            live -= complete(&ring, tags, results, n)
            guard live > 0, !stopping.load(ordering: .relaxed) else { break }
            let polled = pollForNext(&ring, &poll)
            let s = curing_submit_and_wait(&ring, 1)
            if s < 0 && s != -EINTR && s != -EAGAIN && s != -EBUSY {
                logger.error("FUSE io_uring queue \(qid): \(String(cString: strerror(-s)))")
                break
            }
            if poll.limit > 0 && !polled { poll.wokeUp(at: monotonicNanoseconds()) }
            n = Int(curing_reap(&ring, &tags, &results, UInt32(tags.count)))
        }
    }

    /// After a batch was answered: sends the replies and, if the window says
    /// so, polls a while for the next request (its task work or completion),
    /// so that a client asking again at once is served without this thread
    /// sleeping and being woken. Each turn yields the CPU: the client, on this
    /// CPU's queue, usually runs on this CPU. True if a request came.
    private func pollForNext(_ ring: inout io_uring, _ poll: inout PollWindow) -> Bool {
        guard poll.limit > 0 else { return false }
        poll.answered(at: monotonicNanoseconds())
        guard poll.window > 0 else { return false }
        _ = io_uring_submit(&ring)
        let deadline = monotonicNanoseconds() + poll.window
        var came = false
        while !came && monotonicNanoseconds() < deadline {
            came = curing_work_pending(&ring) || stopping.load(ordering: .relaxed)
            if !came { sched_yield() }
        }
        poll.polled(success: came)
        return came
    }

    private func failed(_ what: String, _ rc: Int32) {
        logger.warning("FUSE io_uring queue \(qid): \(what) failed: \(String(cString: strerror(-rc)))")
        registered.store(Int(rc < 0 ? rc : -EIO), ordering: .releasing)
    }

    /// Handles `n` completions, then commits the FSYNCs among them together;
    /// returns how many entries the kernel ended.
    private func complete(_ ring: inout io_uring, _ tags: [UInt64], _ results: [Int32], _ n: Int) -> Int {
        defer { commitFsyncs(&ring) }
        var ended = 0
        for i in 0..<n {
            if tags[i] == Self.wakeTag {
                deliverMailbox(&ring)
                armWake(&ring)
                continue
            }
            guard tags[i] < UInt64(entries.count) else { continue }
            let e = entries[Int(tags[i])]
            switch results[i] {
            case 0:
                // Run to completion here unless another request of this batch waits behind it.
                let waiting = (i + 1..<n).contains { tags[$0] < UInt64(entries.count) && results[$0] == 0 }
                take(&ring, e, offload: waiting)
            case -EINTR, -EAGAIN:
                // Interrupted, or the connection not initialized yet: ask again.
                let commit = e.state.withLock { $0.commitID }
                queueCommand(&ring, e, commit == 0 ? cfuse_io_uring_cmd_register : cfuse_io_uring_cmd_commit_and_fetch,
                             commitID: commit)
            case let res:
                // ENOTCONN: unmounted or aborted; anything else ends the entry too.
                if res != -ENOTCONN && res != -ECONNABORTED && res != -ECANCELED {
                    logger.warning("FUSE io_uring queue \(qid) entry \(e.index): \(String(cString: strerror(-res)))")
                }
                ended += 1
            }
        }
        return ended
    }

    /// A request arrived in `e`: hand it to the engine, commit what it answers.
    private func take(_ ring: inout io_uring, _ e: FUSERingEntry, offload: Bool) {
        let inOut = e.ringInOut
        let unique = e.inHeader.unique
        // The kernel finds the request by this id; without it we cannot answer.
        guard inOut.commit_id != 0 else {
            logger.error("FUSE io_uring queue \(qid): a request without a commit id (dropped entry \(e.index))")
            return
        }
        counters.ringRequests.add(1, ordering: .relaxed)
        let commitID = inOut.commit_id
        e.state.withLock { $0 = (commitID, nil) }
        if let message = e.message() {
            let queue = self
            // The entry's buffers stay ours until the commit, so a pool thread
            // may use them; its reply comes back through the mailbox.
            if offload, let pool, FUSEServer.mayBlock(message), !FUSEServer.joinsFsyncGroup(message) {
                counters.ringOffloaded.add(1, ordering: .relaxed)
                pool.submit { [server] in queue.serve(server, message, in: e, commitID: commitID) }
                return
            }
            // An FSYNC joins the batch's group (deferred; answered by its commit).
            handling = e.index
            serve(server, message, in: e, commitID: commitID, group: fsyncGroup)
            handling = -1
        } else {
            e.state.withLock { $0.reply = .message([]) }   // lengths that do not add up: EIO
        }
        let ready: RingReply? = e.state.withLock { s in
            defer { s.reply = nil }
            return s.reply
        }
        if let ready {
            e.store(ready, unique: unique)
            queueCommand(&ring, e, cfuse_io_uring_cmd_commit_and_fetch, commitID: commitID)
        }
        // Otherwise the reply comes later, through the mailbox.
    }

    /// Runs the request held in `e` through the engine, its reply written into
    /// the entry's own buffers.
    private func serve(_ server: FUSEServer, _ message: UnsafeRawBufferPointer, in e: FUSERingEntry, commitID: UInt64,
                       group: FUSEFsyncGroup? = nil) {
        var request = RequestCursor(message)
        var reply = ReplyWriter(e.replyMemory)
        let outcome: FUSEOutcome
        if group != nil && FUSEServer.joinsFsyncGroup(message) {
            e.fsyncCommitID = commitID
            let sink = fsyncSinks[e.index].reply
            outcome = server.handle(&request, &reply, deferring: { sink }, group: group)
        } else {
            outcome = server.handle(&request, &reply, deferring: { self.lateReply(to: e, commitID: commitID) }, group: group)
        }
        switch outcome {
        case .replied(let length): replied(e, commitID: commitID, .inPlace(length))
        // A request that came by the ring is ended only by a commit, even one
        // that takes no answer: the kernel sends a FORGET this way when it
        // refuses an entry of a READDIRPLUS reply, and waits for it.
        case .noReply: replied(e, commitID: commitID, .ended)
        case .deferred: break
        }
    }

    /// Where a deferred reply (a SETLKW that waits) to the request held in `e` goes.
    private func lateReply(to e: FUSERingEntry, commitID: UInt64) -> FUSEReplySink {
        { [self] late in replied(e, commitID: commitID, .message(late)) }
    }

    /// Where the reply to a request held in `e` arrives.
    private func replied(_ e: FUSERingEntry, commitID: UInt64, _ reply: RingReply) {
        let kept = e.state.withLock { s -> Bool in
            guard s.commitID == commitID, s.reply == nil else { return false }   // stale or repeated
            s.reply = reply
            return true
        }
        // The reply to the request being handled is committed after `handle`
        // returns; any other (a lock granted while handling an unlock, or on
        // another thread) goes through the mailbox.
        guard kept, pthread_equal(pthread_self(), owner) == 0 || handling != e.index else { return }
        mailbox.withLock { $0.append(e.index) }
        if !(committingInline && pthread_equal(pthread_self(), owner) != 0) { wake() }
    }

    /// Makes the batch's FSYNCs durable: here, unless more requests already
    /// wait on the ring (then on the pool, as one task, so they are not held
    /// up by the device flush). Their replies are committed with the next
    /// submission either way.
    private func commitFsyncs(_ ring: inout io_uring) {
        let members = fsyncGroup.count
        guard members > 0 else { return }
        counters.ringFsyncGroups.add(1, ordering: .relaxed)
        counters.ringGroupedFsyncs.add(members, ordering: .relaxed)
        committingInline = true
        let handed = server.commit(fsyncGroup, handingTo: pool, busy: { curing_work_pending(&ring) })
        committingInline = false
        if handed { counters.ringOffloaded.add(members, ordering: .relaxed) } else { deliverMailbox(&ring) }
    }

    /// Commits the replies other threads left for us.
    private func deliverMailbox(_ ring: inout io_uring) {
        // The mailbox's array and a spare trade places, each unshared, so
        // neither is copied nor grown again once it has its capacity.
        var ready: [Int] = []
        swap(&ready, &mailboxSpare)
        mailbox.withLock { swap(&$0, &ready) }
        defer {
            ready.removeAll(keepingCapacity: true)
            mailboxSpare = ready
        }
        for index in ready {
            let e = entries[index]
            let taken: (UInt64, RingReply)? = e.state.withLock { s in
                guard let r = s.reply else { return nil }
                s.reply = nil
                return (s.commitID, r)
            }
            guard let (commitID, reply) = taken else { continue }
            e.store(reply, unique: e.inHeader.unique)
            queueCommand(&ring, e, cfuse_io_uring_cmd_commit_and_fetch, commitID: commitID)
        }
    }

    private func queueCommand(_ ring: inout io_uring, _ e: FUSERingEntry, _ op: UInt32, commitID: UInt64) {
        var cmd = cfuse_uring_cmd_req()
        cmd.commit_id = commitID
        cmd.qid = UInt16(qid)
        var rc = withUnsafeBytes(of: &cmd) {
            curing_queue_uring_cmd(&ring, op, $0.baseAddress, UInt32($0.count), e.iov, 2, UInt64(e.index))
        }
        if rc == -EBUSY {   // the submission queue is full: flush it, then queue again
            _ = io_uring_submit(&ring)
            rc = withUnsafeBytes(of: &cmd) {
                curing_queue_uring_cmd(&ring, op, $0.baseAddress, UInt32($0.count), e.iov, 2, UInt64(e.index))
            }
        }
        if rc != 0 { logger.error("FUSE io_uring queue \(qid): cannot queue a command: \(String(cString: strerror(-rc)))") }
    }

    private func armWake(_ ring: inout io_uring) {
        if curing_queue_read_fixed(&ring, 1, wakeBuffer, 8, Self.wakeTag) == -EBUSY {
            _ = io_uring_submit(&ring)
            _ = curing_queue_read_fixed(&ring, 1, wakeBuffer, 8, Self.wakeTag)
        }
    }

    /// Requests for this queue are made on CPU `qid`: serve them there.
    private func pinToCPU() {
        let e = curing_pin_to_cpu(Int32(qid))
        if e != 0 { logger.debug("FUSE io_uring queue \(qid): cannot pin to CPU \(qid): \(String(cString: strerror(e)))") }
    }
}

extension Int {
    var nextPowerOfTwo: Int {
        var p = 1
        while p < self { p <<= 1 }
        return p
    }
}

/// A reply to a request in a ring entry: written in place by the engine
/// (its length), a message to copy in (a deferred lock answer, or empty
/// for EIO), or the end of a request that takes no answer.
enum RingReply: Sendable {
    case inPlace(Int)
    case message([UInt8])
    case ended
}
