import Testing
@testable import VhostUser

@Suite struct MemoryTableChangeTests {
    /// A chain still in flight when a new memory table comes is walked again:
    /// its buffers are then found in the new mappings, not the old ones.
    @Test func aChainInFlightIsFoundAgainInTheNewMappings() throws {
        let g = FakeGuest()
        g.placeRequestChain()
        g.offer(0)
        let first = try #require(try g.queue.pop())
        // The same guest memory, mapped elsewhere now (as after SET_MEM_TABLE).
        let copy = UnsafeMutableRawPointer.allocate(byteCount: g.size, alignment: 4096)
        defer { copy.deallocate() }
        copy.copyMemory(from: g.buffer, byteCount: g.size)
        let moved = GuestMemory(regions: [GuestMemory.Region(guestPhysical: FakeGuest.gpa, size: UInt64(g.size), userAddress: 0x7000_0000,
                                                             mapping: copy, mappingSize: g.size, offsetInMapping: 0)])
        #expect(g.queue.attach(moved))
        let again = try g.queue.walk(first.head)
        #expect(again.readableBytes == 40 && again.writableBytes == 100)
        let w = try #require(again.writable.first?.baseAddress)
        #expect(w >= copy && w < copy + g.size)
        #expect(first.writable.first?.baseAddress.map { $0 >= g.buffer && $0 < g.buffer + g.size } == true)
    }
}
