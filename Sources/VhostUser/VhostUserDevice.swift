import CVhost
import Glibc
import PMFSConcurrency

// The device state machine: what each decoded front-end message does to the
// features, protocol features, memory table and queues (one short method per
// message kind), and the device reset.

extension VhostUserBackend {
    static let featureVersion1: UInt64 = 1 << 32
    static let featureIndirect: UInt64 = 1 << 28
    static let featureEventIndex: UInt64 = 1 << 29
    static let featureProtocol: UInt64 = 1 << 30
    static let protocolMQ: UInt64 = 1 << 0
    static let protocolReplyAck: UInt64 = 1 << 3
    static let protocolResetDevice: UInt64 = 1 << 13

    /// The most queues a front end may use (hiprio + 64 request queues).
    static let queueLimit = 65

    enum Outcome { case reply([UInt8]), ack(Bool), close }

    func handleMessage(_ code: UInt32, _ body: [UInt8], _ fds: [Int32]) -> Outcome {
        switch VhostUserMessage(code: code, body: body, fds: fds) {
        case .getFeatures: return .reply(VhostUserReply.u64(offeredFeatures))
        case .setFeatures(let f): return .ack(setFeatures(f))
        case .getProtocolFeatures: return .reply(VhostUserReply.u64(offeredProtocol))
        case .setProtocolFeatures(let f):
            ackedProtocol = f & offeredProtocol
            return .ack(true)
        case .setOwner, .setBackendReqFD: return .ack(true)
        case .reset:
            resetDevice()
            onSessionEnd?()
            return .ack(true)
        case .getQueueNum: return .reply(VhostUserReply.u64(UInt64(queues.count)))
        case .setMemTable(let regions, let fds): return .ack(setMemoryTable(regions, fds))
        case .setVringNum(let i, let num): return .ack(setVringNum(i, num))
        case .setVringAddr(let i, let d, let u, let a): return .ack(setVringAddress(i, descriptors: d, used: u, available: a))
        case .setVringBase(let i, let base): return .ack(setVringBase(i, base))
        case .getVringBase(let i): return getVringBase(i)
        case .setVringFD(let request, let i, let fd): return .ack(setVringFD(request, i, fd))
        case .setVringEnable(let i, let on): return .ack(setVringEnable(i, on))
        case .getMaxMemSlots: return .reply(VhostUserReply.u64(UInt64(VhostUserMessage.regionLimit)))
        case .unsupported(let request):
            logger.warning("vhost-user message \(request) is not supported")
            return .ack(false)
        case .unknown(let code):
            logger.warning("unsupported vhost-user message \(code)")
            return .ack(false)
        case .malformed(let request): return malformed(request)
        }
    }

    /// A body too short for its fields is refused; GET_VRING_BASE is owed a
    /// reply that cannot be given: the front end is broken.
    private func malformed(_ request: Request) -> Outcome {
        guard request == .getVringBase else { return .ack(false) }
        logger.error("GET_VRING_BASE without a queue index; closing the connection")
        return .close
    }

    private func setFeatures(_ f: UInt64) -> Bool {
        guard f & ~offeredFeatures == 0 else { return false }
        ackedFeatures = f
        let eventIndex = f & Self.featureEventIndex != 0
        for q in queues where q.eventIndex != eventIndex { reconfigure(q) { q.eventIndex = eventIndex } }
        return true
    }

    /// The queue a message names. QEMU does not check the device's
    /// num-request-queues against GET_QUEUE_NUM, so a front end configured
    /// with more queues than offered gets them (up to the limit) rather than a
    /// device that hangs: the extra queues work like the others.
    private func queue(_ index: UInt32) -> Virtqueue? {
        let i = Int(index)
        guard i < Self.queueLimit else { return nil }
        if i >= queues.count {
            logger.notice("the front end uses queue \(i) (\(queues.count - 1) request queue(s) offered): serving it too")
            let eventIndex = ackedFeatures & Self.featureEventIndex != 0
            queues += (queues.count...i).map { let q = Virtqueue(index: $0, depths: queueDepths); q.eventIndex = eventIndex; return q }
        }
        return queues[i]
    }

    private func setVringNum(_ i: UInt32, _ num: UInt32) -> Bool {
        guard let q = queue(i), num > 0, num <= 32768, num & (num - 1) == 0 else { return false }
        reconfigure(q) { q.size = UInt16(truncatingIfNeeded: num) }
        return true
    }

    private func setVringAddress(_ i: UInt32, descriptors: UInt64, used: UInt64, available: UInt64) -> Bool {
        guard let q = queue(i) else { return false }
        reconfigure(q) { q.descriptorAddress = descriptors; q.usedAddress = used; q.availableAddress = available }
        return true
    }

    private func setVringBase(_ i: UInt32, _ base: UInt32) -> Bool {
        guard let q = queue(i) else { return false }
        reconfigure(q) {
            q.lastAvailable = UInt16(truncatingIfNeeded: base)
            q.usedIndex = UInt16(truncatingIfNeeded: base)
        }
        return true
    }

    private func getVringBase(_ i: UInt32) -> Outcome {
        guard let q = queue(i) else {
            // Always owed a reply: the front end blocks on it.
            logger.error("GET_VRING_BASE for queue \(i), beyond any queue: answering 0")
            return .reply(VhostUserReply.vringState(queue: i, base: 0))
        }
        stopWorker(Int(i))
        let state = VhostUserReply.vringState(queue: i, base: UInt32(q.lastAvailable))
        if q.kickFD >= 0 { close(q.kickFD); q.kickFD = -1 }
        return .reply(state)
    }

    /// SET_VRING_KICK, _CALL, _ERR: `fd` (-1 for none) replaces the queue's.
    private func setVringFD(_ request: Request, _ i: UInt32, _ fd: Int32) -> Bool {
        guard let q = queue(i) else {
            if fd >= 0 { close(fd) }
            return false
        }
        guard fd < 0 || acceptsEventFD(fd, for: request) else { close(fd); return false }
        switch request {
        case .setVringKick:
            stopWorker(q.index)
            if q.kickFD >= 0 { close(q.kickFD) }
            q.kickFD = fd
            // Without protocol features a ring starts when it gets its kick.
            if ackedFeatures & Self.featureProtocol == 0 { q.enabled = true }
            startWorkerIfReady(q)
        case .setVringCall:
            q.lock.withLock {
                if q.callFD >= 0 { close(q.callFD) }
                q.callFD = fd
            }
        default:
            if q.errorFD >= 0 { close(q.errorFD) }
            q.errorFD = fd
        }
        return true
    }

    private func setVringEnable(_ i: UInt32, _ on: Bool) -> Bool {
        guard let q = queue(i) else { return false }
        q.enabled = on
        if q.enabled { startWorkerIfReady(q) } else { stopWorker(q.index) }
        return true
    }

    /// A kick, call or error fd must be an eventfd, written without blocking:
    /// a pipe's reader could stop reading (the worker would block) or go away
    /// (SIGPIPE), and a front end can fill an eventfd's counter.
    private func acceptsEventFD(_ fd: Int32, for request: Request) -> Bool {
        guard cvhost_is_eventfd(fd) != 0, cvhost_set_nonblocking(fd) == 0 else {
            logger.error("vhost-user \(request): descriptor \(fd) is not an eventfd; refused")
            return false
        }
        return true
    }

    /// Changes a ring's size, addresses or indices: never under a running
    /// worker (it walks the ring with them), and the ring is checked against
    /// the memory table again before its worker starts again (if it is
    /// enabled and kicked, as any ring with a worker is).
    private func reconfigure(_ q: Virtqueue, _ change: () -> Void) {
        stopWorker(q.index)
        change()
        readLocked { _ = q.attach(memory) }
        startWorkerIfReady(q)
    }

    func readLocked<T>(_ body: () -> T) -> T { memoryLock.withReadLock(body) }

    /// SET_MEM_TABLE: maps every region (one fd each), then replaces the table.
    private func setMemoryTable(_ descriptions: [MemoryRegionDescription], _ fds: [Int32]) -> Bool {
        defer { fds.forEach { close($0) } }   // the mappings keep what they need
        var regions: [GuestMemory.Region] = []
        for (i, r) in descriptions.enumerated() {
            do {
                regions.append(try GuestMemory.map(fd: fds[i], guestPhysical: r.guestPhysical, size: r.size,
                                                   userAddress: r.userAddress, mmapOffset: r.mmapOffset))
            } catch {
                logger.error("cannot map guest memory region \(i) (\(r.size) bytes): \(error)")
                GuestMemory(regions: regions).unmapAll()
                return false
            }
        }
        let new = GuestMemory(regions: regions)
        let old = memoryLock.withWriteLock {
            let old = memory
            memory = new
            memoryEpoch &+= 1
            for q in queues { detachIfUncovered(q, by: new) }
            return old
        }
        old.unmapAll()
        return true
    }

    /// Every ring is resolved in a new memory table (none may keep the old
    /// one's pointers); a running ring it no longer covers is broken until
    /// the front end sets it up again (memory lock held exclusively).
    private func detachIfUncovered(_ q: Virtqueue, by memory: GuestMemory) {
        if !q.attach(memory) && workers[q.index] != nil {
            logger.error("queue \(q.index): the new memory table does not cover the ring; the queue is stopped")
            q.broken = true
            if q.errorFD >= 0 { _ = cvhost_eventfd_signal(q.errorFD) }
        }
    }

    func resetDevice() {
        for i in workers.keys { stopWorker(i) }
        memoryLock.withWriteLock {
            memory.unmapAll()
            memory = .empty
            for q in queues { resetQueue(q) }
        }
        ackedFeatures = 0
        ackedProtocol = 0
    }

    /// A queue back to its state before any message (memory lock held exclusively).
    private func resetQueue(_ q: Virtqueue) {
        for fd in [q.kickFD, q.errorFD] where fd >= 0 { close(fd) }
        q.lock.withLock { if q.callFD >= 0 { close(q.callFD) }; q.callFD = -1 }
        q.kickFD = -1; q.errorFD = -1
        q.enabled = false; q.size = 0; q.lastAvailable = 0; q.usedIndex = 0
        q.descriptors = nil; q.available = nil; q.used = nil; q.memory = .empty; q.generation &+= 1
        q.depths.set(q.index, 0)
    }
}
