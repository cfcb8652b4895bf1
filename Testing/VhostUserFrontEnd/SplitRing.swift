import CVhost
import Glibc

/// Where a split virtqueue's fields lie (virtio 1.1, section 2.7), as a
/// driver writes and reads them; shared by this front end and the tests' guests.
public enum SplitRingLayout {
    /// A descriptor: address (u64), length (u32), flags (u16), next (u16).
    public static let descriptorSize = 16
    /// Descriptor flags: the chain goes on at `next`; the device writes the
    /// buffer; the buffer is a table of descriptors.
    public static let next: UInt16 = 1
    public static let write: UInt16 = 2
    public static let indirect: UInt16 = 4
    /// Both rings start with flags (u16) and an index (u16); their entries follow.
    public static let flagsOffset = 0
    public static let indexOffset = 2
    public static let entriesOffset = 4
    /// An available entry is a head (u16); a used one a head and a length (u32 each).
    public static let availableEntrySize = 2
    public static let usedEntrySize = 8
    /// The used ring's flag that asks the driver not to kick (VIRTQ_USED_F_NO_NOTIFY).
    public static let usedNoNotify: UInt16 = 1

    /// Writes descriptor `index` of the table at `table`.
    public static func storeDescriptor(_ table: UnsafeMutableRawPointer, _ index: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16) {
        let d = table + descriptorSize * index
        d.storeBytes(of: address, as: UInt64.self)
        d.storeBytes(of: length, toByteOffset: 8, as: UInt32.self)
        d.storeBytes(of: flags, toByteOffset: 12, as: UInt16.self)
        d.storeBytes(of: next, toByteOffset: 14, as: UInt16.self)
    }

    /// The available entry that index `index` names in a ring of `size`.
    public static func availableEntryOffset(_ index: UInt16, size: UInt16) -> Int {
        entriesOffset + availableEntrySize * Int(index % size)
    }

    /// The used entry that index `index` names in a ring of `size`.
    public static func usedEntryOffset(_ index: UInt16, size: UInt16) -> Int {
        entriesOffset + usedEntrySize * Int(index % size)
    }

    /// avail_event, after the used ring's entries: the driver kicks once its
    /// available index passes it (with VIRTIO_F_EVENT_IDX).
    public static func availableEventOffset(size: UInt16) -> Int {
        entriesOffset + usedEntrySize * Int(size)
    }
}

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
        available = base + SplitRingLayout.descriptorSize * Int(size)
        used = available + 4096
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
        SplitRingLayout.storeDescriptor(descriptors, index, address: address, length: length, flags: flags, next: next)
    }

    /// Makes the chain at `head` available and kicks the back end.
    public func makeAvailable(head: UInt16, kick: Bool = true) {
        (available + SplitRingLayout.availableEntryOffset(availableIndex, size: size)).storeBytes(of: head, as: UInt16.self)
        availableIndex &+= 1
        cvhost_store_release_u16((available + SplitRingLayout.indexOffset).assumingMemoryBound(to: UInt16.self), availableIndex)
        cvhost_full_fence()
        if kick { self.kick() }
    }

    /// Sets the available index to any value (hostile tests: an index racing ahead).
    public func forceAvailableIndex(_ index: UInt16) {
        availableIndex = index
        cvhost_store_release_u16((available + SplitRingLayout.indexOffset).assumingMemoryBound(to: UInt16.self), index)
        cvhost_full_fence()
    }

    public func kick() { _ = cvhost_eventfd_signal(kickFD) }

    /// Puts a request in a free slot and makes it available; nil when every slot is in flight.
    public func submit(_ request: [UInt8], replyCapacity: Int, kick: Bool = true) -> Int? {
        guard request.count <= slotBytes, replyCapacity <= slotBytes, let slot = freeSlots.popLast() else { return nil }
        let input = requestBuffer(slot), output = replyBuffer(slot)
        request.withUnsafeBytes { input.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        setDescriptor(2 * slot, address: guestAddress(input), length: UInt32(request.count), flags: SplitRingLayout.next, next: UInt16(2 * slot + 1))
        setDescriptor(2 * slot + 1, address: guestAddress(output), length: UInt32(replyCapacity), flags: SplitRingLayout.write, next: 0)
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
    public var usedIndex: UInt16 { cvhost_load_acquire_u16((used + SplitRingLayout.indexOffset).assumingMemoryBound(to: UInt16.self)) }

    private func collectUsed() {
        let end = usedIndex
        while lastUsed != end {
            let element = used + SplitRingLayout.usedEntryOffset(lastUsed, size: size)
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
        callsSeen += cvhost_eventfd_drain(callFD)
    }

    /// Call notifications consumed by `waitForCall` since the last `takeCalls`.
    private var callsSeen: UInt64 = 0

    /// How many times the back end signalled the call eventfd since the last
    /// call of this (each signal adds one to the eventfd's counter).
    public func takeCalls() -> UInt64 {
        defer { callsSeen = 0 }
        return callsSeen + cvhost_eventfd_drain(callFD)
    }
}
