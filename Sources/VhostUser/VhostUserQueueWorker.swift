import CVhost
import FUSEProtocol
import Glibc
import PMFSConcurrency

// The queue workers: one thread per running queue, woken by its kick eventfd
// (or polling a while, see PollWindow), taking the chains the guest made
// available, serving them here or on the request pool, and copying replies
// back, deferred ones included.

extension VhostUserBackend {
    /// Called by a thread that found the memory shrunk: that queue stops at
    /// once and the control loop drops the connection.
    private func memoryShrank(on q: Virtqueue) {
        q.broken = true
        _ = cvhost_eventfd_signal(memoryShrankFD)
    }

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
                guard let c = try q.pop() else {
                    if companyComes(for: group, on: q) { continue }
                    return
                }
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
                q.recycle(chain)
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
                q.recycle(chain)
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

    /// Whether another request comes within a short linger, when FSYNCs
    /// wait in the group and the last group had company (fsyncs from several
    /// writers): they then share one commit instead of one each. A lone
    /// writer's group of one never lingers.
    private func companyComes(for group: FUSEFsyncGroup, on q: Virtqueue) -> Bool {
        guard !group.isEmpty, q.lastFsyncGroupSize > 1 else { return false }
        let deadline = monotonicNanoseconds() + Self.fsyncLingerNanoseconds
        while monotonicNanoseconds() < deadline {
            if q.hasMore { return true }
        }
        return false
    }

    static let fsyncLingerNanoseconds: UInt64 = 3_000

    /// Commits a pass's FSYNCs: here when nothing waits on the ring, else
    /// on the pool as one task, so requests that came meanwhile are not held
    /// up by the device flush.
    private func commit(_ group: FUSEFsyncGroup, on q: Virtqueue) {
        if !group.isEmpty { q.lastFsyncGroupSize = group.count }
        server.commit(group, handingTo: pool, busy: { q.hasMore })
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
        // Only an FSYNC put in the group, or a SETLKW that waits, asks for a sink.
        let outcome = server.handle(&request, &reply, deferring: {
            group != nil ? fsyncReply(chain, on: q, generation: generation) : deferredReply(chain, on: q, generation: generation)
        }, group: group)
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

    /// Where a grouped FSYNC's reply goes: a reply target the queue reuses, so
    /// that an FSYNC allocates nothing (a group answers each member once).
    private func fsyncReply(_ chain: Virtqueue.Chain, on q: Virtqueue, generation: UInt64) -> FUSEReplySink {
        let target = q.takeFsyncReply { FsyncReply(backend: self, queue: q) }
        target.head = chain.head
        target.generation = generation
        target.epoch = memoryEpoch
        target.writable.append(contentsOf: chain.writable)
        return target.sink
    }

    /// Sends a grouped FSYNC's reply, as `deferredReply` sends a late one.
    fileprivate func deliver(_ reply: [UInt8], to target: FsyncReply, on q: Virtqueue) {
        defer { q.giveBack(target) }
        memoryLock.withReadLock {
            guard q.generation == target.generation else { return }
            var out: ReplyWriter
            if target.epoch == memoryEpoch {
                out = ReplyWriter(target.writable)
            } else {
                guard let current = rewalk(target.head, on: q) else { return }
                out = ReplyWriter(current.writable)
            }
            defer { if q.memory.shrank { memoryShrank(on: q) } }
            guard (try? reply.withUnsafeBytes { try out.write(bytes: $0) }) != nil else { return q.push(target.head, length: 0) }
            q.push(target.head, length: out.written)
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

/// Where a grouped FSYNC's reply goes (its chain's head and writable
/// buffers), kept by its queue from one FSYNC to the next: its sink is made
/// once. The sink holds the target (the group keeps only the sink) and the
/// target its sink: the queue breaks that cycle (`detach`) when it lets the
/// target go. Weak back end and queue: a group handed to the pool may outlive both.
final class FsyncReply: @unchecked Sendable {
    var head: UInt16 = 0
    var generation: UInt64 = 0
    var epoch: UInt64 = 0
    var writable: [UnsafeMutableRawBufferPointer] = []
    private(set) var sink: FUSEReplySink = { _ in }

    init(backend: VhostUserBackend, queue: Virtqueue) {
        sink = { [weak backend, weak queue] reply in
            guard let backend, let queue else { return self.detach() }
            backend.deliver(reply, to: self, on: queue)
        }
    }

    /// Ends the target's cycle with its sink, so it can be freed.
    func detach() { sink = { _ in } }
}

/// A chain's writable guest buffers, valid until the chain is pushed back.
final class WritableBuffers: @unchecked Sendable {
    let buffers: [UnsafeMutableRawBufferPointer]
    init(_ buffers: [UnsafeMutableRawBufferPointer]) { self.buffers = buffers }
}
