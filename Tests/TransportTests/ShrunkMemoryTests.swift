import CVhost
import Glibc
import PMFSMetadata
import Testing
@testable import FUSEProtocol
@testable import VhostUser

/// A front end that shrinks the file behind its guest memory after the
/// backend mapped it: the pages it lost would raise SIGBUS in the daemon.
/// The daemon must survive, drop that front end, and serve everyone else.
@Suite(.serialized) struct ShrunkMemoryTests {
    static let ramSize = 1 << 20
    static let ringSpacing: UInt64 = 0x4_0000

    /// Where the file ends after the front end shrinks it, relative to a ring
    /// at 2 * ringSpacing (its rings take 0x30000 bytes, its data the next 0x10000).
    enum Shrink: CaseIterable {
        case toNothing, belowTheRing, belowTheRequest
        var newSize: off_t {
            switch self {
            case .toNothing: return 0
            case .belowTheRing: return off_t(ShrunkMemoryTests.ringSpacing)
            case .belowTheRequest: return off_t(2 * ShrunkMemoryTests.ringSpacing + 0x3_0000)
            }
        }
    }

    /// True once the peer has closed the connection (EOF) within `seconds`.
    func closedByPeer(_ socket: Int32, within seconds: Double = 2) -> Bool {
        var p = pollfd(fd: socket, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, Int32(seconds * 1000)) == 1 else { return false }
        var byte: UInt8 = 0
        return recv(socket, &byte, 1, Int32(MSG_DONTWAIT)) == 0
    }

    /// A new front end on `running` with its own memory answers INIT and GETATTR.
    func expectServesANewFrontEnd(_ running: RunningBackend, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let frontEnd = try #require(ScriptedFrontEnd.connect(to: running.path), sourceLocation: sourceLocation)
        let ram = try #require(GuestRAM(memfdSize: Self.ramSize, sealedAgainstShrinking: false), sourceLocation: sourceLocation)
        #expect(frontEnd.negotiate(), sourceLocation: sourceLocation)
        #expect(frontEnd.setMemoryTable([(ram, 0, UInt64(Self.ramSize), 0)]), sourceLocation: sourceLocation)
        let ring = HandLaidRing(in: ram, at: 0)
        #expect(frontEnd.start(ring, queue: 1), sourceLocation: sourceLocation)
        #expect(ring.request(GuestRequests.initialize()) == 0, sourceLocation: sourceLocation)
        #expect(ring.request(GuestRequests.getattrRoot()) == 0, sourceLocation: sourceLocation)
    }

    @Test(arguments: Shrink.allCases) func memoryShrunkUnderItsMappingDropsOnlyThatFrontEnd(_ shrink: Shrink) throws {
        let ram = try #require(GuestRAM(memfdSize: Self.ramSize, sealedAgainstShrinking: false))
        try expectShrinkDropsOnlyThatFrontEnd(ram, ringAt: 2 * Self.ringSpacing, to: shrink.newSize, offerAfter: shrink == .belowTheRequest)
    }

    /// Guest RAM on huge pages (QEMU's hugetlbfs or hugetlb memfd backends):
    /// the guard's zero page must cover a whole 2 MiB page.
    @Test(.enabled(if: HugePages.adjustable)) func hugePageMemoryShrunkUnderItsMappingDropsOnlyThatFrontEnd() throws {
        let reserved = try #require(HugePages(reserving: 2))
        defer { reserved.release() }
        let ram = try #require(GuestRAM(hugePages: 2))
        // The ring in the second huge page; hugetlbfs cuts whole pages only.
        try expectShrinkDropsOnlyThatFrontEnd(ram, ringAt: UInt64(HugePages.size) + Self.ringSpacing, to: off_t(HugePages.size))
    }

    /// A front end brings up a ring at `ringAt` in `ram`, cuts the memory to
    /// `newSize` with a request waiting and kicks: the backend must drop it
    /// (the guard caught the fault) and go on serving new front ends, as must
    /// another backend in the process.
    func expectShrinkDropsOnlyThatFrontEnd(_ ram: GuestRAM, ringAt: UInt64, to newSize: off_t, offerAfter: Bool = false) throws {
        let hostile = try RunningBackend()
        let other = try RunningBackend()
        let frontEnd = try #require(ScriptedFrontEnd.connect(to: hostile.path))
        try #require(frontEnd.negotiate())
        try #require(frontEnd.setMemoryTable([(ram, 0, UInt64(ram.size), 0)]))
        #expect(hostile.backend.memory.regions.allSatisfy { $0.guardSlot >= 0 })   // an unsealed memfd can shrink
        let ring = HandLaidRing(in: ram, at: ringAt)
        try #require(frontEnd.start(ring, queue: 1))
        #expect(ring.request(GuestRequests.initialize()) == 0)
        // The next request is written while the memory is whole; from the
        // shrink on, this side touches only what is left of it (the ring, if any).
        ring.place(GuestRequests.getattrRoot())
        let faultsBefore = cvhost_guard_fault_count()
        #expect(ftruncate(ram.fd, newSize) == 0)
        if offerAfter { ring.offer(0) }
        var one: UInt64 = 1
        #expect(write(ring.kick, &one, 8) == 8)

        #expect(closedByPeer(frontEnd.socket))
        #expect(cvhost_guard_fault_count() > faultsBefore)
        // Still here: another backend and this one's next front end are served.
        try expectServesANewFrontEnd(other)
        try expectServesANewFrontEnd(hostile)
        #expect(hostile.stop())
        #expect(other.stop())
    }

    @Test func aMemfdSealedAgainstShrinkingIsNotGuarded() throws {
        let running = try RunningBackend()
        let frontEnd = try #require(ScriptedFrontEnd.connect(to: running.path))
        let ram = try #require(GuestRAM(memfdSize: Self.ramSize, sealedAgainstShrinking: true))
        try #require(frontEnd.negotiate())
        try #require(frontEnd.setMemoryTable([(ram, 0, UInt64(Self.ramSize), 0)]))
        #expect(running.backend.memory.regions.map(\.guardSlot) == [-1])
        // The kernel refuses the shrink, so nothing can fault.
        #expect(ftruncate(ram.fd, 0) == -1 && errno == EPERM)
        let ring = HandLaidRing(in: ram, at: 0)
        #expect(frontEnd.start(ring, queue: 1))
        #expect(ring.request(GuestRequests.initialize()) == 0)
        #expect(ring.request(GuestRequests.getattrRoot()) == 0)
        #expect(running.stop())
    }

    @Test func guardsComeOffWithTheMemoryTable() throws {
        let running = try RunningBackend()
        let frontEnd = try #require(ScriptedFrontEnd.connect(to: running.path))
        let ram = try #require(GuestRAM(memfdSize: Self.ramSize, sealedAgainstShrinking: false))
        try #require(frontEnd.negotiate())
        try #require(frontEnd.setMemoryTable([(ram, 0, UInt64(Self.ramSize), 0)]))
        let first = try #require(running.backend.memory.regions.first?.guardSlot)
        // A new table: its mapping is guarded, the old one's guard is gone.
        try #require(frontEnd.setMemoryTable([(ram, 0, UInt64(Self.ramSize / 2), 0)]))
        let second = try #require(running.backend.memory.regions.first?.guardSlot)
        #expect(second >= 0 && second != first)
        #expect(running.stop())
    }

    @Test func theRegistryIsBoundedAndReusesFreedSlots() {
        let table = UnsafeMutablePointer<cvhost_guard_table>.allocate(capacity: 1)
        defer { table.deallocate() }
        memset(table, 0, MemoryLayout<cvhost_guard_table>.size)
        let page = 4096
        let base = UnsafeMutableRawPointer(bitPattern: 0x7e00_0000_0000)!
        var slots: [Int32] = []
        for i in 0..<Int(CVHOST_GUARD_SLOTS) { slots.append(cvhost_guard_table_register(table, base + i * page, page, page)) }
        #expect(Set(slots).count == Int(CVHOST_GUARD_SLOTS) && slots.allSatisfy { $0 >= 0 })
        #expect(cvhost_guard_table_register(table, base, page, page) == -ENOSPC)
        cvhost_guard_table_unregister(table, slots[17])
        #expect(cvhost_guard_table_register(table, base, page, page) == slots[17])
        #expect(cvhost_guard_table_faulted(table, slots[17]) == 0)
        // Misaligned or empty ranges are refused; out-of-range slots are ignored.
        cvhost_guard_table_unregister(table, slots[3])
        #expect(cvhost_guard_table_register(table, base + 1, page, page) == -EINVAL)
        #expect(cvhost_guard_table_register(table, base, 0, page) == -EINVAL)
        #expect(cvhost_guard_table_register(table, base, page, 3000) == -EINVAL)
        cvhost_guard_table_unregister(table, -1)
        cvhost_guard_table_unregister(table, CVHOST_GUARD_SLOTS)
        #expect(cvhost_guard_table_faulted(table, CVHOST_GUARD_SLOTS) == 0)
    }

    /// A SIGBUS outside every guarded range is not swallowed: a child (which
    /// calls nothing but system calls after fork) touches a truncated mapping
    /// nobody registered and dies of SIGBUS, after Swift's crash reporter
    /// (the handler installed before ours) has had its say.
    @Test func aSigbusOutsideGuardedMemoryStillKills() throws {
        let guarded = try #require(GuestRAM(memfdSize: 4096, sealedAgainstShrinking: false))
        let slot = cvhost_guard_register(guarded.base, 4096, 4096)   // installs the handler
        try #require(slot >= 0)
        cvhost_guard_unregister(slot)
        let victim = try #require(GuestRAM(memfdSize: 4096, sealedAgainstShrinking: false))
        let (fd, address) = (victim.fd, victim.base)
        // The fork copies this process's descriptors and mappings, pools' among
        // them, while other suites open and reopen pools: a copied pool mapping
        // holds the pool's flock until the child exits. Pools open under the spawn
        // lock, so it is held for the child's whole (short) life.
        let status = PoolDescriptors.withSpawnLock { () -> Int32 in
            let child = fork()
            if child == 0 {
                let note: StaticString = "ShrunkMemoryTests: the child's crash report below is expected\n"
                _ = write(2, note.utf8Start, note.utf8CodeUnitCount)
                var noCore = rlimit(rlim_cur: 0, rlim_max: 0)
                _ = setrlimit(__rlimit_resource_t(RLIMIT_CORE.rawValue), &noCore)
                _ = ftruncate(fd, 0)
                address.storeBytes(of: 1, as: UInt8.self)
                _exit(0)
            }
            guard child > 0 else { return -1 }
            var status: Int32 = 0
            var waited = 0
            while waitpid(child, &status, WNOHANG) == 0 {
                if waited == 30_000 { kill(child, SIGKILL) }   // a hang fails the test, it does not hold up the run
                usleep(1000); waited += 1
            }
            return status
        }
        #expect(status & 0x7f == SIGBUS, "child status \(status)")   // WTERMSIG
    }
}
