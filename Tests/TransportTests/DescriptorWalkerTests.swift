import Testing
@testable import VhostUser

/// Descriptor chains as a hostile guest may write them: walked within guest
/// memory and the queue, or refused.
@Suite struct DescriptorWalkerTests {
    @Test func aWellFormedChainSplitsReadableAndWritable() throws {
        let g = FakeGuest()
        g.placeRequestChain()
        g.offer(0)
        let c = try #require(try g.queue.pop())
        #expect(c.readableBytes == 40 && c.writableBytes == 100)
        #expect(try g.queue.pop() == nil)
        g.queue.push(c.head, length: 16)
        #expect(g.usedIndex == 1)
    }

    /// A served chain's arrays go back to the queue for the next pop: the next
    /// chain holds its own buffers only, whether it has more pieces or fewer.
    @Test func recycledSegmentArraysHoldOnlyTheNextChain() throws {
        let g = FakeGuest()
        g.placeRequestChain()   // head 0: 40 readable bytes, 100 writable
        // Head 2: three readable pieces, two writable ones.
        g.descriptor(2, address: g.data + 8192, length: 8, flags: Virtqueue.descriptorNext, next: 3)
        g.descriptor(3, address: g.data + 8200, length: 8, flags: Virtqueue.descriptorNext, next: 4)
        g.descriptor(4, address: g.data + 8208, length: 8, flags: Virtqueue.descriptorNext, next: 5)
        g.descriptor(5, address: g.data + 12288, length: 16, flags: Virtqueue.descriptorNext | Virtqueue.descriptorWrite, next: 6)
        g.descriptor(6, address: g.data + 12304, length: 32, flags: Virtqueue.descriptorWrite, next: 0)
        for (head, readable, writable) in [(UInt16(0), [40], [100]), (2, [8, 8, 8], [16, 32]), (0, [40], [100])] {
            g.offer(head)
            let c = try #require(try g.queue.pop())
            #expect(c.head == head)
            #expect(c.readable.map(\.count) == readable && c.writable.map(\.count) == writable)
            g.queue.push(c.head, length: 0)
            g.queue.recycle(c)
        }
    }

    @Test func hostileChainsAreRefused() throws {
        // A loop.
        var g = FakeGuest()
        g.descriptor(0, address: g.data, length: 8, flags: Virtqueue.descriptorNext, next: 1)
        g.descriptor(1, address: g.data, length: 8, flags: Virtqueue.descriptorNext, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // An address outside guest memory, and one that runs past its end.
        g = FakeGuest()
        g.descriptor(0, address: 0xdead_0000_0000, length: 8, flags: 0, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.descriptor(0, address: FakeGuest.gpa + UInt64(g.size) - 4, length: 8, flags: 0, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // A next index beyond the table, a head beyond the queue.
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 8, flags: Virtqueue.descriptorNext, next: 200)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.offer(9)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // Readable after writable.
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 8, flags: Virtqueue.descriptorWrite | Virtqueue.descriptorNext, next: 1)
        g.descriptor(1, address: g.data, length: 8, flags: 0, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        // Indirect: a table of odd length, a nested indirect, and a good one.
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 20, flags: Virtqueue.descriptorIndirect, next: 0)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 32, flags: Virtqueue.descriptorIndirect, next: 0)
        g.descriptor(0, address: g.data + 8192, length: 32, flags: Virtqueue.descriptorIndirect, next: 0, table: FakeGuest.dataArea)
        g.offer(0)
        #expect(throws: Virtqueue.ChainError.self) { try g.queue.pop() }
        g = FakeGuest()
        g.descriptor(0, address: g.data, length: 32, flags: Virtqueue.descriptorIndirect, next: 0)
        g.descriptor(0, address: g.data + 8192, length: 40, flags: Virtqueue.descriptorNext, next: 1, table: FakeGuest.dataArea)
        g.descriptor(1, address: g.data + 12288, length: 64, flags: Virtqueue.descriptorWrite, next: 0, table: FakeGuest.dataArea)
        g.offer(0)
        let c = try #require(try g.queue.pop())
        #expect(c.readableBytes == 40 && c.writableBytes == 64)
    }

    @Test func randomDescriptorTablesNeverCrash() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let g = FakeGuest(queueSize: 16)
            for i in 0..<16 {
                let address = Bool.random(using: &rng) ? g.data + UInt64.random(in: 0..<600_000, using: &rng) : UInt64.random(in: 0...UInt64.max, using: &rng)
                g.descriptor(i, address: address, length: UInt32.random(in: 0...70_000, using: &rng),
                             flags: UInt16.random(in: 0...7, using: &rng), next: UInt16.random(in: 0...20, using: &rng))
            }
            for _ in 0..<4 { g.offer(UInt16.random(in: 0...17, using: &rng)) }
            for _ in 0..<4 {
                do {
                    guard let c = try g.queue.pop() else { break }
                    // Whatever was accepted lies inside the region.
                    for r in c.readable { #expect(r.baseAddress! >= UnsafeRawPointer(g.buffer) && r.baseAddress! + r.count <= UnsafeRawPointer(g.buffer + g.size)) }
                    for w in c.writable { #expect(UnsafeRawPointer(w.baseAddress!) >= UnsafeRawPointer(g.buffer) && UnsafeRawPointer(w.baseAddress! + w.count) <= UnsafeRawPointer(g.buffer + g.size)) }
                } catch { break }
            }
        }
    }
}
