import CVhost
import FUSEProtocol
import Glibc
import PMFSConcurrency

/// A split virtqueue shared with the guest. The descriptor walker checks every
/// index, length, flag and address; a chain that breaks a rule is refused
/// (the request is dropped and the queue marked broken), never followed.
final class Virtqueue: @unchecked Sendable {
    static let descriptorNext: UInt16 = 1
    static let descriptorWrite: UInt16 = 2
    static let descriptorIndirect: UInt16 = 4

    let index: Int
    var size: UInt16 = 0
    var descriptorAddress: UInt64 = 0
    var availableAddress: UInt64 = 0
    var usedAddress: UInt64 = 0
    var lastAvailable: UInt16 = 0
    var usedIndex: UInt16 = 0
    var kickFD: Int32 = -1
    var callFD: Int32 = -1
    var errorFD: Int32 = -1
    var enabled = false
    var broken = false
    var eventIndex = false
    /// Bumped on reset, so late (deferred) replies to an old ring are dropped.
    var generation: UInt64 = 0
    /// The FSYNCs of the worker's current pass (its thread only); their
    /// replies go out under one call notification. Weak: a group handed to
    /// the pool may outlive the queue (then its replies go nowhere anyway).
    private(set) lazy var fsyncGroup = FUSEFsyncGroup { [weak self] replies in
        guard let self else { return replies() }
        holdingNotifications(replies)
    }
    /// Members of the last FSYNC group committed (the worker's thread only).
    var lastFsyncGroupSize = 0
    /// Where grouped FSYNCs' replies go, reused (`takeFsyncReply`).
    private var fsyncReplies: [FsyncReply] = []
    private let fsyncRepliesLock = Lock()
    /// Segment arrays of chains served on the worker's thread, given back by
    /// `recycle` for the next `pop`: once grown, walking a chain allocates
    /// nothing (the worker's thread only).
    private var spareReadable: [UnsafeRawBufferPointer] = []
    private var spareWritable: [UnsafeMutableRawBufferPointer] = []
    /// Pushes that may not signal the guest yet, and the used index when the
    /// outermost hold began (both under `lock`).
    private var notificationHolds = 0
    private var usedIndexAtHold: UInt16 = 0

    var descriptors: UnsafeMutableRawPointer?
    var available: UnsafeMutableRawPointer?
    var used: UnsafeMutableRawPointer?
    var memory: GuestMemory = .empty
    /// Serializes used-ring updates (deferred replies come from other threads).
    let lock = Lock()
    /// The most bytes one chain may describe (request plus reply buffers):
    /// the backend sets it from the FUSE server's negotiated sizes.
    var chainLimit = 1 << 26
    /// Set (before the stop eventfd is signalled) when the control thread
    /// wants the worker gone: checked between chains, so a guest that keeps
    /// its ring full cannot keep the worker from stopping.
    private let stopFlag = UnsafeMutablePointer<Int32>.allocate(capacity: 1)

    /// Where this queue says how many requests wait in it (for the metrics).
    let depths: QueueDepths

    init(index: Int, depths: QueueDepths? = nil) {
        self.index = index
        self.depths = depths ?? QueueDepths(count: index + 1)
        stopFlag.initialize(to: 0)
    }

    deinit {
        stopFlag.deallocate()
        fsyncReplies.forEach { $0.detach() }
    }

    var stopRequested: Bool {
        get { cvhost_load_acquire_i32(stopFlag) != 0 }
        set { cvhost_store_release_i32(stopFlag, newValue ? 1 : 0) }
    }

    /// Counts one more chain in a worker's pass: at most a ring's worth per
    /// pass, and none once a stop is requested or the ring is broken.
    func mayTakeAnother(_ budget: inout Int) -> Bool {
        guard !broken, !stopRequested, budget > 0 else { return false }
        budget -= 1
        return true
    }

    /// Resolves the ring addresses (front-end virtual) against the memory table.
    /// A ring the memory does not wholly cover gets no pointers at all, so
    /// nothing can walk or write half of it (or an old table's mappings).
    func attach(_ memory: GuestMemory) -> Bool {
        self.memory = memory
        let n = Int(size)
        descriptors = memory.frontEnd(descriptorAddress, 16 * n)
        available = memory.frontEnd(availableAddress, 6 + 2 * n)
        used = memory.frontEnd(usedAddress, 6 + 8 * n)
        guard size > 0, descriptors != nil, available != nil, used != nil else {
            descriptors = nil; available = nil; used = nil
            return false
        }
        return true
    }

    struct Chain {
        var head: UInt16
        var readable: [UnsafeRawBufferPointer] = []
        var writable: [UnsafeMutableRawBufferPointer] = []
        var readableBytes: Int { readable.reduce(0) { $0 + $1.count } }
        var writableBytes: Int { writable.reduce(0) { $0 + $1.count } }
        /// The request's first `count` bytes (fewer if it is shorter), copied out.
        /// The request's first `count` bytes (fewer if it is shorter): where
        /// they lie when the first buffer holds them, else gathered on the stack.
        func withPrefix<T>(_ count: Int, _ body: (UnsafeRawBufferPointer) -> T) -> T {
            if let first = readable.first, first.count >= count { return body(UnsafeRawBufferPointer(rebasing: first[0..<count])) }
            return withUnsafeTemporaryAllocation(byteCount: max(count, 1), alignment: 8) { out in
                var done = 0
                for r in readable where done < count {
                    let n = min(r.count, count - done)
                    if n > 0 { (out.baseAddress! + done).copyMemory(from: r.baseAddress!, byteCount: n) }
                    done += n
                }
                return body(UnsafeRawBufferPointer(rebasing: out[0..<done]))
            }
        }
    }

    enum ChainError: Error { case badHead, badIndex, loop, badAddress, writableBeforeReadable, badIndirect, tooLarge, overrun, detached }

    private func availableIndex() -> UInt16 {
        cvhost_load_acquire_u16((available! + 2).assumingMemoryBound(to: UInt16.self))
    }

    /// The next chain the guest made available, or nil when there is none.
    func pop() throws -> Chain? {
        guard let available, descriptors != nil else { return nil }
        let availableNow = availableIndex()
        if lastAvailable == availableNow { depths.set(index, 0); return nil }
        // More than a ring's worth ahead of what we took: no ring holds that many.
        guard availableNow &- lastAvailable <= size else { broken = true; throw ChainError.overrun }
        depths.set(index, Int32(availableNow &- lastAvailable) - 1)
        // A chain is in flight from pop to push, and a ring has no more than its
        // size of them: another means the guest offered one again before it came
        // back (left alone, that would pile up requests without limit).
        guard lock.withLock({ lastAvailable &- usedIndex }) < size else { broken = true; throw ChainError.overrun }
        let slot = Int(lastAvailable % size)
        let head = (available + 4 + 2 * slot).loadUnaligned(as: UInt16.self)
        lastAvailable &+= 1
        guard head < size else { broken = true; throw ChainError.badHead }
        var chain = Chain(head: head, readable: spareReadable, writable: spareWritable)
        spareReadable = []; spareWritable = []
        chain.readable.removeAll(keepingCapacity: true)
        chain.writable.removeAll(keepingCapacity: true)
        try walk(&chain)
        return chain
    }

    /// Gives a chain's segment arrays back for the next `pop`, once it was
    /// served on the worker's thread and nothing kept them.
    func recycle(_ chain: consuming Chain) {
        spareReadable = chain.readable
        spareWritable = chain.writable
    }

    /// A grouped FSYNC's reply target, from those answered before when there
    /// are any (`make` builds one the first time).
    func takeFsyncReply(_ make: () -> FsyncReply) -> FsyncReply {
        fsyncRepliesLock.withLock { fsyncReplies.popLast() } ?? make()
    }

    /// An answered FSYNC's reply target, kept for the next.
    func giveBack(_ reply: FsyncReply) {
        reply.writable.removeAll(keepingCapacity: true)
        // Bounded: a ring has at most its size of chains in flight.
        let kept = fsyncRepliesLock.withLock { () -> Bool in
            guard fsyncReplies.count < Int(size) else { return false }
            fsyncReplies.append(reply)
            return true
        }
        if !kept { reply.detach() }
    }

    /// Collects a chain's buffers: readable ones first, then writable ones.
    /// Also used again for a chain still in flight when the memory table was
    /// replaced: its buffers are then found in the new mappings (and checked again).
    func walk(_ head: UInt16) throws -> Chain {
        var chain = Chain(head: head)
        try walk(&chain)
        return chain
    }

    /// `walk` into `chain`'s (empty) arrays.
    private func walk(_ chain: inout Chain) throws {
        let head = chain.head
        guard let descriptors else { throw ChainError.detached }
        var table = descriptors
        var tableSize = Int(size)
        var index = Int(head)
        var steps = 0
        var inIndirect = false
        var total = 0
        while true {
            guard index < tableSize else { throw ChainError.badIndex }
            let d = table + 16 * index
            let address = d.loadUnaligned(as: UInt64.self)
            let length = Int(d.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = d.loadUnaligned(fromByteOffset: 12, as: UInt16.self)
            let next = d.loadUnaligned(fromByteOffset: 14, as: UInt16.self)
            steps += 1
            guard steps <= tableSize + 1 else { throw ChainError.loop }
            if flags & Self.descriptorIndirect != 0 {
                // One level only, at the top of a chain, a whole number of descriptors.
                guard !inIndirect, flags & Self.descriptorNext == 0, length > 0, length % 16 == 0, length / 16 <= 65536 else {
                    throw ChainError.badIndirect
                }
                guard let t = memory.guest(address, length) else { throw ChainError.badAddress }
                table = t
                tableSize = length / 16
                index = 0
                steps = 0
                inIndirect = true
                continue
            }
            total += length
            guard total <= chainLimit else { throw ChainError.tooLarge }
            if length > 0 {
                guard let p = memory.guest(address, length) else { throw ChainError.badAddress }
                if flags & Self.descriptorWrite != 0 {
                    chain.writable.append(UnsafeMutableRawBufferPointer(start: p, count: length))
                } else {
                    guard chain.writable.isEmpty else { throw ChainError.writableBeforeReadable }
                    chain.readable.append(UnsafeRawBufferPointer(start: p, count: length))
                }
            }
            guard flags & Self.descriptorNext != 0 else { break }
            index = Int(next)
        }
    }

    /// Returns a chain to the guest with `length` bytes written, and signals it
    /// (unless EVENT_IDX says the guest does not want to be woken yet).
    func push(_ head: UInt16, length: Int) {
        lock.withLock {
            guard let used else { return }
            let slot = Int(usedIndex % size)
            (used + 4 + 8 * slot).storeBytes(of: UInt32(head), as: UInt32.self)
            (used + 8 + 8 * slot).storeBytes(of: UInt32(length), as: UInt32.self)
            let old = usedIndex
            usedIndex &+= 1
            cvhost_store_release_u16((used + 2).assumingMemoryBound(to: UInt16.self), usedIndex)
            cvhost_full_fence()
            if notificationHolds == 0 { notifyIfAsked(old: old) }
        }
    }

    /// Runs `body` (pushes from any thread) and signals the guest once at its
    /// end, if it asked to be told of any used entry added meanwhile: a group's
    /// replies wake the driver once, not once each. Others' pushes during the
    /// hold wait for it too; a hold is only ever a burst of replies.
    func holdingNotifications(_ body: () -> Void) {
        lock.withLock {
            if notificationHolds == 0 { usedIndexAtHold = usedIndex }
            notificationHolds += 1
        }
        body()
        lock.withLock {
            notificationHolds -= 1
            if notificationHolds == 0 && usedIndex != usedIndexAtHold { notifyIfAsked(old: usedIndexAtHold) }
        }
    }

    /// Signals the call eventfd if the guest asked for used entries from `old` on (lock held).
    private func notifyIfAsked(old: UInt16) {
        if used != nil, shouldNotify(old: old, new: usedIndex), callFD >= 0 { _ = cvhost_eventfd_signal(callFD) }
    }

    private func shouldNotify(old: UInt16, new: UInt16) -> Bool {
        guard let available else { return true }
        if eventIndex {
            // used_event sits after the available ring.
            let usedEvent = cvhost_load_u16((available + 4 + 2 * Int(size)).assumingMemoryBound(to: UInt16.self))
            return (new &- usedEvent &- 1) < (new &- old)
        }
        let flags = cvhost_load_u16(available.assumingMemoryBound(to: UInt16.self))
        return flags & 1 == 0   // VRING_AVAIL_F_NO_INTERRUPT
    }

    /// Asks the guest to kick us for its next request (enabled), or not to
    /// kick while a worker polls the ring anyway. With EVENT_IDX the avail
    /// event is set to the next index, or left one behind (never reached);
    /// without it, VRING_USED_F_NO_NOTIFY says the same.
    func setKicks(enabled: Bool) {
        guard let used else { return }
        if eventIndex {
            cvhost_store_release_u16((used + 4 + 8 * Int(size)).assumingMemoryBound(to: UInt16.self),
                                     enabled ? lastAvailable : lastAvailable &- 1)
        } else {
            cvhost_store_release_u16(used.assumingMemoryBound(to: UInt16.self), enabled ? 0 : 1)
        }
        cvhost_full_fence()
    }

    var hasMore: Bool { available != nil && lastAvailable != availableIndex() }
}

/// How many requests each queue of a device holds that its worker has not
/// taken yet, as the worker saw at its last look: one slot per queue the
/// device may have, so another thread (a metrics scrape) reads them without
/// touching the queues themselves.
final class QueueDepths: @unchecked Sendable {
    private let slots: UnsafeMutablePointer<Int32>
    let count: Int

    init(count: Int) {
        self.count = count
        slots = .allocate(capacity: count)
        slots.initialize(repeating: 0, count: count)
    }

    deinit { slots.deallocate() }

    func set(_ queue: Int, _ waiting: Int32) {
        guard queue >= 0, queue < count else { return }
        cvhost_store_release_i32(slots + queue, waiting)
    }

    /// Requests waiting in all queues together.
    var total: Int {
        (0..<count).reduce(0) { $0 + Int(cvhost_load_acquire_i32(slots + $1)) }
    }
}
