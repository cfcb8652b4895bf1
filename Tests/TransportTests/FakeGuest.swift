import Glibc
@testable import VhostUser
import VhostUserFrontEnd

/// A guest memory of one region backed by a local buffer, and a queue in it.
final class FakeGuest {
    let size = 1 << 20
    let buffer: UnsafeMutableRawPointer
    let memory: GuestMemory
    let queue = Virtqueue(index: 1)
    static let gpa: UInt64 = 0x10_0000
    /// Where the region is mapped in the front end's (QEMU's) address space.
    static let userAddress: UInt64 = 0x7000_0000
    /// Offsets in the region: the descriptor table, the available ring (64 KiB),
    /// the used ring (128 KiB), and data (256 KiB).
    static let descriptorTable = 0
    static let availableRing = 65536
    static let usedRing = 131_072
    static let dataArea = 262_144

    init(queueSize: UInt16 = 8) {
        buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        memset(buffer, 0, size)
        memory = GuestMemory(regions: [GuestMemory.Region(guestPhysical: Self.gpa, size: UInt64(size), userAddress: Self.userAddress,
                                                          mapping: buffer, mappingSize: size, offsetInMapping: 0)])
        queue.size = queueSize
        queue.descriptorAddress = Self.userAddress + UInt64(Self.descriptorTable)
        queue.availableAddress = Self.userAddress + UInt64(Self.availableRing)
        queue.usedAddress = Self.userAddress + UInt64(Self.usedRing)
        _ = queue.attach(memory)
    }
    deinit { buffer.deallocate() }

    /// Writes descriptor `i` of the queue's table, or of a table at offset `table` in the region.
    func descriptor(_ i: Int, address: UInt64, length: UInt32, flags: UInt16, next: UInt16, table: Int = FakeGuest.descriptorTable) {
        SplitRingLayout.storeDescriptor(buffer + table, i, address: address, length: length, flags: flags, next: next)
    }

    /// Writes chain 0 as a request and its reply space: 40 readable bytes at
    /// the data area, then 100 writable bytes a page further (not offered).
    func placeRequestChain() {
        descriptor(0, address: data, length: 40, flags: Virtqueue.descriptorNext, next: 1)
        descriptor(1, address: data + 4096, length: 100, flags: Virtqueue.descriptorWrite, next: 0)
    }

    /// Makes the chain at `head` available.
    func offer(_ head: UInt16) {
        let avail = buffer + Self.availableRing
        let idx = avail.load(fromByteOffset: SplitRingLayout.indexOffset, as: UInt16.self)
        avail.storeBytes(of: head, toByteOffset: SplitRingLayout.availableEntryOffset(idx, size: queue.size), as: UInt16.self)
        avail.storeBytes(of: idx &+ 1, toByteOffset: SplitRingLayout.indexOffset, as: UInt16.self)
    }

    /// The used ring's flags, index, and avail_event, as the device wrote them.
    var usedFlags: UInt16 { (buffer + Self.usedRing).load(fromByteOffset: SplitRingLayout.flagsOffset, as: UInt16.self) }
    var usedIndex: UInt16 { (buffer + Self.usedRing).load(fromByteOffset: SplitRingLayout.indexOffset, as: UInt16.self) }
    var availableEvent: UInt16 {
        (buffer + Self.usedRing).load(fromByteOffset: SplitRingLayout.availableEventOffset(size: queue.size), as: UInt16.self)
    }

    /// Guest-physical address of the data area.
    var data: UInt64 { Self.gpa + UInt64(Self.dataArea) }
}
