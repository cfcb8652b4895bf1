import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

@Suite struct ExtentTests {
    @Test func holesAndMappedRuns() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file())
        #expect(try t.store.mapBlocks(f.ino, start: 0, count: 100) == [ExtentSegment(fileBlock: 0, length: 100, deviceBlock: nil, unwritten: false)])
        let segs = try t.store.allocateBlocks(f.ino, start: 10, count: 5)
        #expect(segs.count == 1 && segs[0].fileBlock == 10 && segs[0].length == 5 && segs[0].deviceBlock != nil)
        let map = try t.store.mapBlocks(f.ino, start: 0, count: 20)
        #expect(map.map(\.fileBlock) == [0, 10, 15])
        #expect(map.map(\.length) == [10, 5, 5])
        #expect(map[1].deviceBlock == segs[0].deviceBlock)
        // Allocating over a range that is partly mapped fills only the holes.
        let again = try t.store.allocateBlocks(f.ino, start: 8, count: 10)
        #expect(again.allSatisfy { $0.deviceBlock != nil })
        #expect(again.first(where: { $0.fileBlock == 10 })?.deviceBlock == segs[0].deviceBlock)
        #expect(try t.store.getattr(f.ino).blocks == 10 * 8)
    }

    @Test func sequentialAllocationIsContiguousAndMerges() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file())
        for i in 0..<100 { try t.store.allocateBlocks(f.ino, start: UInt64(i) * 4, count: 4) }
        let map = try t.store.mapBlocks(f.ino, start: 0, count: 400)
        #expect(map.count == 1)
        #expect(try t.store.inodes.inode(f.ino).pointee.extent_count == 1)
    }

    @Test func punchSplitsExtentsAndFreesBlocks() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file())
        let seg = try t.store.allocateBlocks(f.ino, start: 0, count: 100)[0]
        let free = t.store.statistics().freeBlocks
        try t.store.punchBlocks(f.ino, start: 40, count: 20)
        let map = try t.store.mapBlocks(f.ino, start: 0, count: 100)
        #expect(map.map(\.fileBlock) == [0, 40, 60])
        #expect(map[0].deviceBlock == seg.deviceBlock)
        #expect(map[1].deviceBlock == nil)
        #expect(map[2].deviceBlock == seg.deviceBlock! + 60)
        #expect(t.store.statistics().freeBlocks == free + 20)
        #expect(try t.store.getattr(f.ino).blocks == 80 * 8)
        // Punching a hole again, or past the end, changes nothing.
        try t.store.punchBlocks(f.ino, start: 45, count: 5)
        try t.store.punchBlocks(f.ino, start: 1000, count: 5)
        #expect(t.store.statistics().freeBlocks == free + 20)
    }

    @Test func unwrittenExtentsBecomeWritten() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file())
        _ = try t.store.allocateBlocks(f.ino, start: 0, count: 10, unwritten: true)
        #expect(try t.store.mapBlocks(f.ino, start: 0, count: 10).allSatisfy(\.unwritten))
        try t.store.markWritten(f.ino, start: 3, count: 2)
        let map = try t.store.mapBlocks(f.ino, start: 0, count: 10)
        #expect(map.map(\.unwritten) == [true, false, true])
        #expect(map.map(\.length) == [3, 2, 5])
    }

    /// A million fragments: random single-block writes into a sparse file.
    @Test func manyFragmentsFromRandomWrites() throws {
        let t = try TestPool(dataBlocks: 1 << 20, poolSize: 512 << 20)
        let f = try t.store.create(root, name("f"), file())
        var rng = SystemRandomNumberGenerator()
        var mapped = Set<UInt64>()
        // Every other block so nothing merges; shuffled order.
        var blocks = (0..<UInt64(30_000)).map { $0 * 2 }
        blocks.shuffle(using: &rng)
        for b in blocks { try t.store.allocateBlocks(f.ino, start: b, count: 1); mapped.insert(b) }
        let p = try t.store.inodes.inode(f.ino)
        #expect(p.pointee.extent_count == 30_000)
        let tree = t.store.extentTree(p)
        var previousEnd: UInt64 = 0
        var count = 0
        try tree.forEach { e in
            #expect(e.fileBlock >= previousEnd)
            previousEnd = e.end
            count += 1
        }
        #expect(count == 30_000)
        for b in blocks.prefix(2000) {
            let seg = try t.store.mapBlocks(f.ino, start: b, count: 2)
            #expect(seg[0].deviceBlock != nil && seg[0].length == 1 && seg[1].deviceBlock == nil)
        }
        // Punch half of them in random order; the tree shrinks and stays ordered.
        for b in blocks.prefix(15_000) { try t.store.punchBlocks(f.ino, start: b, count: 1) }
        #expect(p.pointee.extent_count == 15_000)
        #expect(t.store.statistics().freeBlocks == t.store.statistics().totalBlocks - 15_000)
        _ = try t.store.setattr(f.ino, AttributeChanges(size: 0))
        #expect(p.pointee.extent_count == 0 && p.pointee.content_off == 0)
        #expect(t.store.statistics().freeBlocks == t.store.statistics().totalBlocks)
    }

    /// One extent of 100 GiB: 26 million blocks in one tree entry.
    @Test func oneHugeExtent() throws {
        let blocks: UInt64 = (100 << 30) / 4096
        let t = try TestPool(dataBlocks: blocks + 16, poolSize: 64 << 20)
        let f = try t.store.create(root, name("f"), file())
        let segs = try t.store.allocateBlocks(f.ino, start: 0, count: blocks)
        #expect(segs.count == 1 && segs[0].length == blocks)
        #expect(try t.store.inodes.inode(f.ino).pointee.extent_count == 1)
        #expect(try t.store.getattr(f.ino).blocks == blocks * 8)
        let mid = try t.store.mapBlocks(f.ino, start: blocks / 2, count: 1)
        #expect(mid[0].deviceBlock == segs[0].deviceBlock! + blocks / 2)
        try t.store.unlink(root, name("f"))
        #expect(t.store.statistics().freeBlocks == t.store.statistics().totalBlocks)
    }
}
