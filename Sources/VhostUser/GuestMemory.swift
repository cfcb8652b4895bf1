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
    }

    let regions: [Region]

    init(regions: [Region]) { self.regions = regions }

    static let empty = GuestMemory(regions: [])

    /// Maps one region: `mmap_offset` bytes into the fd, `size` bytes long.
    static func map(fd: Int32, guestPhysical: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64) -> Region? {
        guard size > 0, size < 1 << 46, mmapOffset < 1 << 46, fileHolds(fd, mmapOffset + size) else { return nil }
        let page = UInt64(sysconf(Int32(_SC_PAGESIZE)))
        let alignedOffset = mmapOffset & ~(page - 1)
        let lead = Int(mmapOffset - alignedOffset)
        let length = Int(size) + lead
        let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(alignedOffset))
        guard let p, p != MAP_FAILED else { return nil }
        return Region(guestPhysical: guestPhysical, size: size, userAddress: userAddress, mapping: p, mappingSize: length,
                      offsetInMapping: lead)
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

    func unmapAll() {
        for r in regions { munmap(r.mapping, r.mappingSize) }
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
