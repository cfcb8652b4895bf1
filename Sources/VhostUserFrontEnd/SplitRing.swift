import CVhost
import Glibc

/// One split virtqueue as a guest driver keeps it: the descriptor table, the
/// available ring it writes and the used ring the back end writes, in shared
/// memory, with a buffer pair per slot. Slot `s` owns descriptors `2s`
/// (readable: the request) and `2s + 1` (writable: the reply).
public final class SplitRing {
    public let queue: Int
    public let size: UInt16
    public let descriptors: UnsafeMutableRawPointer
    public let available: UnsafeMutableRawPointer
    public let used: UnsafeMutableRawPointer
    public let kickFD: Int32
    public let callFD: Int32
    let memory: UnsafeMutableRawPointer
    let buffers: UnsafeMutableRawPointer
    let slotBytes: Int
    private var freeSlots: [Int]
    private var availableIndex: UInt16 = 0
    private var lastUsed: UInt16 = 0
    private var replies: [Int: [UInt8]] = [:]
    private var replyCapacity: [Int: Int] = [:]

    init(memory: UnsafeMutableRawPointer, layout: VhostUserFrontEnd.GuestLayout, queue: Int, size: UInt16, slots: Int, slotBytes: Int) throws {
        guard size > 0, size <= 1024, size & (size - 1) == 0, 2 * slots <= Int(size) else {
            throw VhostUserFrontEnd.Failure.refused("queue size \(size) with \(slots) slots")
        }
        self.queue = queue
        self.size = size
        self.memory = memory
        self.slotBytes = slotBytes
        let base = memory + queue * VhostUserFrontEnd.GuestLayout.ringBytes
        descriptors = base
        available = base + 16 * Int(size)
        used = base + 16 * Int(size) + 4096
        buffers = memory + layout.rings + queue * layout.perQueueBuffers
        freeSlots = Array((0..<slots).reversed())
        let kick = cvhost_eventfd(), call = cvhost_eventfd()
        guard kick >= 0, call >= 0 else { throw VhostUserFrontEnd.Failure.system("eventfd", errno) }
        kickFD = kick
        callFD = call
    }

    func closeDescriptors() { close(kickFD); close(callFD) }

    /// The address the back end is told for a ring part: ours (front-end virtual).
    func userAddress(_ p: UnsafeMutableRawPointer) -> UInt64 { UInt64(UInt(bitPattern: p)) }

    /// Guest-physical address of a pointer into the memory (guest memory starts at 0).
    public func guestAddress(_ p: UnsafeMutableRawPointer) -> UInt64 { UInt64(p - memory) }

    public func requestBuffer(_ slot: Int) -> UnsafeMutableRawPointer { buffers + 2 * slot * slotBytes }
    public func replyBuffer(_ slot: Int) -> UnsafeMutableRawPointer { buffers + (2 * slot + 1) * slotBytes }

    /// Writes one descriptor of the table.
    public func setDescriptor(_ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let d = descriptors + 16 * index
        d.storeBytes(of: address, as: UInt64.self)
        d.storeBytes(of: length, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: flags, toByteOffset: 12, as: UInt16.self)
        d.storeBytes(of: next, toByteOffset: 14, as: UInt16.self)
    }

    /// Makes the chain at `head` available and kicks the back end.
    public func makeAvailable(head: UInt16, kick: Bool = true) {
        (available + 4 + 2 * Int(availableIndex % size)).storeBytes(of: head, as: UInt16.self)
        availableIndex &+= 1
        cvhost_store_release_u16((available + 2).assumingMemoryBound(to: UInt16.self), availableIndex)
        cvhost_full_fence()
        if kick { self.kick() }
    }

    /// Sets the available index to any value (hostile tests: an index racing ahead).
    public func forceAvailableIndex(_ index: UInt16) {
        availableIndex = index
        cvhost_store_release_u16((available + 2).assumingMemoryBound(to: UInt16.self), index)
        cvhost_full_fence()
    }

    public func kick() { _ = cvhost_eventfd_signal(kickFD) }

    /// Puts a request in a free slot and makes it available; nil when every slot is in flight.
    public func submit(_ request: [UInt8], replyCapacity: Int, kick: Bool = true) -> Int? {
        guard request.count <= slotBytes, replyCapacity <= slotBytes, let slot = freeSlots.popLast() else { return nil }
        let input = requestBuffer(slot), output = replyBuffer(slot)
        request.withUnsafeBytes { input.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        setDescriptor(2 * slot, address: guestAddress(input), length: UInt32(request.count), flags: 1, next: UInt16(2 * slot + 1))
        setDescriptor(2 * slot + 1, address: guestAddress(output), length: UInt32(replyCapacity), flags: 2, next: 0)
        self.replyCapacity[slot] = replyCapacity
        makeAvailable(head: UInt16(2 * slot), kick: kick)
        return slot
    }

    /// The reply to `slot` if the back end has returned it (then the slot is free again).
    public func reap(_ slot: Int) -> [UInt8]? {
        collectUsed()
        guard let reply = replies.removeValue(forKey: slot) else { return nil }
        freeSlots.append(slot)
        return reply
    }

    /// Slots answered so far, in the order the back end returned them.
    public func reapAny() -> [(slot: Int, reply: [UInt8])] {
        collectUsed()
        let done = replies.sorted { $0.key < $1.key }.map { (slot: $0.key, reply: $0.value) }
        for d in done { replies[d.slot] = nil; freeSlots.append(d.slot) }
        return done
    }

    /// The used index the back end last published.
    public var usedIndex: UInt16 { cvhost_load_acquire_u16((used + 2).assumingMemoryBound(to: UInt16.self)) }

    private func collectUsed() {
        let end = usedIndex
        while lastUsed != end {
            let element = used + 4 + 8 * Int(lastUsed % size)
            let head = Int(element.loadUnaligned(as: UInt32.self))
            let length = Int(element.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            lastUsed &+= 1
            // Only heads we made available, and never more than their buffer holds.
            guard head % 2 == 0, let capacity = replyCapacity.removeValue(forKey: head / 2) else { continue }
            let n = min(length, capacity)
            replies[head / 2] = Array(UnsafeRawBufferPointer(start: replyBuffer(head / 2), count: n))
        }
    }

    /// Waits until the back end signals the call eventfd.
    public func waitForCall(timeoutMilliseconds: Int32) throws {
        let ready = cvhost_wait2(callFD, -1, timeoutMilliseconds)
        guard ready > 0 else { throw VhostUserFrontEnd.Failure.timeout("queue \(queue): no reply") }
        _ = cvhost_eventfd_drain(callFD)
    }
}
