import CVhost
import Glibc

/// The guest's memory as the front end shared it (SET_MEM_TABLE): regions
/// mapped from the passed file descriptors. Every address the guest gives is
/// translated here and must lie wholly inside one region; anything else is an
/// error, never a read or write of host memory outside the guest's.
final class GuestMemory: @unchecked Sendable {
    struct Region {
        var guestPhysical: UInt64
        var size: UInt64
        var userAddress: UInt64     // where the front end (QEMU) has it mapped
        var mapping: UnsafeMutableRawPointer
        var mappingSize: Int
        var offsetInMapping: Int
        /// The SIGBUS guard's slot for a region whose file may shrink, or -1
        /// for a memfd sealed against shrinking (nothing to guard).
        var guardSlot: Int32 = -1
    }

    enum MapFailure: Error, CustomStringConvertible {
        case system(Int32)
        case guardsFull
        var description: String {
            switch self {
            case .system(let e): return String(cString: strerror(e))
            case .guardsFull: return "all \(CVHOST_GUARD_SLOTS) guarded ranges are in use"
            }
        }
    }

    let regions: [Region]

    init(regions: [Region]) { self.regions = regions }

    static let empty = GuestMemory(regions: [])

    /// Maps one region: `mmap_offset` bytes into the fd, `size` bytes long.
    /// A file that may shrink later (any but a memfd sealed with
    /// F_SEAL_SHRINK) is guarded: touching pages it lost does not kill the daemon.
    static func map(fd: Int32, guestPhysical: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) throws(MapFailure) -> Region {
        guard size > 0, size < 1 << 46, mmapOffset < 1 << 46 else { throw .system(EINVAL) }
        guard fileHolds(fd, mmapOffset + size) else { throw .system(errno) }
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        let alignedOffset = mmapOffset & ~(page - 1)
        let lead = Int(mmapOffset - alignedOffset)
        let length = Int(size) + lead
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(alignedOffset))
        guard let p, p != MAP_FAILED else { throw .system(errno) }
        var slot: Int32 = -1
        if cvhost_cannot_shrink(fd) == 0 {
            slot = cvhost_guard_register(p, length, cvhost_mapping_granule(fd))
            guard slot >= 0 else {
                munmap(p, length)
                throw slot == -ENOSPC ? .guardsFull : .system(-slot)
            }
        }
        return Region(guestPhysical: guestPhysical, size: size, userAddress: userAddress, mapping: p, mappingSize: length,
                      offsetInMapping: lead, guardSlot: slot)
    }

    /// A mapping past the end of its file raises SIGBUS when touched: a
    /// regular file (a memfd, a hugetlbfs file) must be at least that long.
    static func fileHolds(_ fd: Int32, _ end: UInt64) -> Bool {
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        guard st.st_mode & S_IFMT == S_IFREG else { return true }
        guard end <= UInt64(max(0, st.st_size)) else { errno = EINVAL; return false }
        return true
    }

    /// The guard comes off before the mapping goes (no other thread touches
    /// it then: the backend holds the memory lock exclusively or owns it alone).
    func unmapAll() {
        for r in regions {
            if r.guardSlot >= 0 { cvhost_guard_unregister(r.guardSlot) }
            munmap(r.mapping, r.mappingSize)
        }
    }

    /// Whether a file behind this memory shrank under its mapping (the guard
    /// put zero pages over what it lost): the front end is hostile or broken.
    /// One relaxed load while no guarded mapping in the process ever faulted.
    @inline(__always)
    var shrank: Bool {
        guard cvhost_guard_fault_count() != 0 else { return false }
        return regions.contains { $0.guardSlot >= 0 && cvhost_guard_faulted($0.guardSlot) != 0 }
    }

    /// Host pointer for guest-physical [address, address+length).
    @inline(__always)
    func guest(_ address: UInt64, _ length: Int) -> UnsafeMutableRawPointer? {
        for r in regions where address >= r.guestPhysical {
            let offset = address - r.guestPhysical
            if offset < r.size, UInt64(length) <= r.size - offset {
                return r.mapping + r.offsetInMapping + Int(offset)
            }
        }
        return nil
    }

    /// Host pointer for a front-end virtual address (ring addresses).
    func frontEnd(_ address: UInt64, _ length: Int) -> UnsafeMutableRawPointer? {
        for r in regions where address >= r.userAddress {
            let offset = address - r.userAddress
            if offset < r.size, UInt64(length) <= r.size - offset {
                return r.mapping + r.offsetInMapping + Int(offset)
            }
        }
        return nil
    }
}
