import CPMDK
import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

/// Pool structures damaged in place: offsets that wrap or point at the pool's
/// last bytes, chunks that run past its end, directory chains that loop,
/// headers with values that overflow the arithmetic built on them. Each gives
/// an error for the inode it belongs to (the server's EIO), never a trap or a
/// read past the mapping, and the rest of the file system keeps working.
@Suite struct PoolDamageMetadataTests {
    /// An offset whose first 8 bytes are in the pool, but nothing after.
    static func lastWord(_ s: MetadataStore) -> UInt64 { (s.pool.size - 8) & ~7 }

    static func stillServes(_ s: MetadataStore) throws {
        let n = "fine-\(UInt32.random(in: 0...UInt32.max))"
        let a = try s.create(root, name(n), file())
        #expect(try s.lookup(root, name(n)).ino == a.ino)
        try s.setxattr(a.ino, Array("user.k".utf8), [1])
        #expect(try s.getxattr(a.ino, Array("user.k".utf8)) == [1])
    }

    /// Offsets near 2^64 used to pass the bounds check (offset + size wrapped)
    /// and then trap converting the offset to Int.
    @Test func offsetsThatWrapAreRefused() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let f = try s.create(root, name("f"), file()).ino
        try s.setxattr(f, Array("user.a".utf8), [1, 2])
        let l = try s.symlink(root, name("l"), target: Array("target".utf8), uid: 0, gid: 0).ino
        for bad in [UInt64.max - 7, UInt64.max - 255, 1 << 63, s.pool.size, s.pool.size - 4] {
            try s.inodes.inode(f).pointee.xattr_off = bad
            try s.inodes.inode(l).pointee.content_off = bad
            #expect(throws: PoolError.self) { _ = try s.getxattr(f, Array("user.a".utf8)) }
            #expect(throws: PoolError.self) { _ = try s.listxattr(f) }
            #expect(throws: PoolError.self) { _ = try s.readlink(l) }
            #expect(throws: PoolError.self) { try s.allocateBlocks(f, start: 0, count: 1); try s.setxattr(f, Array("user.b".utf8), [3]) }
        }
        try s.inodes.inode(f).pointee.xattr_off = 0
        try s.inodes.inode(l).pointee.content_off = 0
        try Self.stillServes(s)
    }

    /// A second inode chunk at the pool's last bytes: one inode fits, the
    /// chunk's other 4,095 do not.
    @Test func inodeChunkRunningPastThePoolIsRefused() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let table: UnsafeMutablePointer<pmfs_inode_table> = try s.pool.pointer(s.pool.superblock.pointee.inode_table_off)
        table.pointee.chunk_count = 2
        cpmdk_inode_table_chunks(table)[1] = (s.pool.size - 256) & ~7
        let inos: [UInt64] = [4096, 4196, 8191]
        for ino in inos {
            #expect(throws: PoolError.self) { _ = try s.getattr(ino) }
        }
        table.pointee.chunk_count = 1
        cpmdk_inode_table_chunks(table)[1] = 0
        try Self.stillServes(s)
    }

    /// Slots 16..47 of a directory live in its second slot chunk; pointing that
    /// chunk at the pool's last word must not let slot 17 be read past the end.
    @Test func directorySlotChunkRunningPastThePoolIsRefused() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let d = try s.mkdir(root, name("d"), dir()).ino
        for i in 0..<20 { _ = try s.create(d, name("e\(i)"), file()) }
        let header: UnsafeMutablePointer<pmfs_directory> = try s.pool.pointer(s.inodes.inode(d).pointee.content_off)
        let saved = element(header, \.slot_chunk_off, 1, as: UInt64.self).pointee
        for bad in [Self.lastWord(s), (s.pool.size - 64 * 16) & ~7, UInt64.max - 63] {
            element(header, \.slot_chunk_off, 1, as: UInt64.self).pointee = bad
            #expect(throws: PoolError.self) { _ = try s.names(d) }
            #expect(throws: PoolError.self) { _ = try s.create(d, name("new"), file()) }
        }
        element(header, \.slot_chunk_off, 1, as: UInt64.self).pointee = saved
        #expect(try s.names(d).count == 20)
        try Self.stillServes(s)
    }

    /// A directory header whose split counter is at its maximum used to trap
    /// the header check itself (bucket count arithmetic).
    @Test func directoryHeaderFieldsAtTheirBoundsAreRefused() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let d = try s.mkdir(root, name("d"), dir()).ino
        _ = try s.create(d, name("x"), file())
        let header: UnsafeMutablePointer<pmfs_directory> = try s.pool.pointer(s.inodes.inode(d).pointee.content_off)
        let saved = header.pointee
        // split at max; level 26 with split at its largest (buckets in chunk 27, past the header's array).
        for damage: (inout pmfs_directory) -> Void in [
            { $0.split = UInt64.max }, { $0.split = UInt64.max - 15; $0.bucket_count = 0 },
            { $0.level = 26; $0.split = (16 << 26) - 1; $0.bucket_count = (16 << 26) + (16 << 26) - 1 },
            { $0.slot_count = UInt64.max }, { $0.level = UInt32.max },
        ] {
            header.pointee = saved
            damage(&header.pointee)
            #expect(throws: PoolError.self) { _ = try s.lookup(d, name("x")) }
            #expect(throws: PoolError.self) { _ = try s.readdir(d, cookie: 0) }
            #expect(throws: PoolError.self) { _ = try s.create(d, name("y"), file()) }
        }
        header.pointee = saved
        #expect(try s.lookup(d, name("x")).type == .regular)
        try Self.stillServes(s)
    }

    /// The chain of the bucket about to split loops on itself: the split walks
    /// it (under the directory's lock), and used to loop forever.
    @Test func directoryHashChainLoopEndsTheWalk() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let d = try s.mkdir(root, name("d"), dir()).ino
        for i in 0..<8 { _ = try s.create(d, name("e\(i)"), file()) }
        let index = try s.directory(s.inodes.inode(d))
        let victim = try #require(try index.find(name("e3")))
        try index.bucket(index.dir.pointee.split).pointee = victim + 1
        try index.slot(victim).pointee.next = victim + 1
        let start = Timestamp.now()
        var failures = 0
        for i in 0..<64 {
            do { _ = try s.create(d, name("more\(i)"), file()) } catch is PoolError { failures += 1 }
        }
        #expect(failures > 0)
        #expect(Timestamp.now().seconds - start.seconds < 5)
        try Self.stillServes(s)
    }

    /// A space-map header whose block count overflows the word arithmetic: the
    /// open is refused with a message (the map is pool-wide), not a trap.
    @Test func spaceMapHeaderWithAHugeBlockCountRefusesTheOpen() throws {
        let t = try TestPool()
        try t.store.close()
        t.store = nil
        func withBitmap(_ body: (UnsafeMutablePointer<pmfs_space_bitmap>) -> Void) throws {
            let pool = try PersistentPool.open(path: t.path)
            defer { pool.close() }
            let bitmap: UnsafeMutablePointer<pmfs_space_bitmap> = try pool.pointer(pool.superblock.pointee.space_bitmap_off)
            body(bitmap)
            pool.persist(bitmap, 32)
        }
        var saved = pmfs_space_bitmap()
        try withBitmap { saved = $0.pointee }
        for (blocks, words) in [(UInt64.max, UInt64(0)), (UInt64.max - 62, 1 << 58), (1 << 62, 1 << 56)] {
            try withBitmap { $0.pointee.block_count = blocks; $0.pointee.word_count = words }
            #expect(throws: PoolError.self) { _ = try MetadataStore.open(poolPath: t.path) }
        }
        try withBitmap { $0.pointee = saved }
        t.store = try MetadataStore.open(poolPath: t.path)
        try Self.stillServes(t.store)
    }

    /// Block counts (`blocks`, in 512-byte units) at 0 or at the maximum do not
    /// trap the allocation and punch that step them.
    @Test func blockCountsAtTheirBoundsSaturate() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let f = try s.create(root, name("f"), file()).ino
        try s.allocateBlocks(f, start: 0, count: 4)
        try s.inodes.inode(f).pointee.blocks = 0
        try s.punchBlocks(f, start: 0, count: 2)
        #expect(try s.getattr(f).blocks == 0)
        try s.inodes.inode(f).pointee.blocks = UInt64.max
        try s.inodes.inode(f).pointee.extent_count = UInt64.max   // found by pmfs-damage-fuzz (seeds 20523, 21265)
        try s.allocateBlocks(f, start: 10, count: 4)
        #expect(try s.getattr(f).blocks == UInt64.max)
        #expect(try s.inodes.inode(f).pointee.extent_count == UInt64.max)
        try Self.stillServes(s)
    }
}

/// References to something that is no object (or no longer one): libpmemobj
/// crashes freeing such an offset (SIGSEGV, SIGFPE), so the engine refuses.
@Suite struct DamagedReferenceFreeTests {
    @Test func freeingWhatIsNoObjectIsRefused() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let f = try s.create(root, name("f"), file()).ino
        let l = try s.symlink(root, name("l"), target: Array("target".utf8), uid: 0, gid: 0).ino
        // Zeros near the pool's end read as an empty blob; 8192 lies in the pool's lanes, before the heap.
        for bad in [(s.pool.size - 64) & ~7, 8192] {
            try s.inodes.inode(f).pointee.xattr_off = bad
            #expect(throws: PoolError.self) { try s.setxattr(f, Array("user.a".utf8), [1]) }
            try s.inodes.inode(l).pointee.content_off = bad
            #expect(throws: PoolError.self) { try s.unlink(root, name("l")) }
        }
        try s.inodes.inode(f).pointee.xattr_off = 0
        try s.setxattr(f, Array("user.a".utf8), [1])
        try PoolDamageMetadataTests.stillServes(s)
    }

    /// Two inodes sharing one xattr blob: the second rewrite must not free it again.
    @Test func aSharedObjectIsFreedOnce() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let a = try s.create(root, name("a"), file()).ino
        let b = try s.create(root, name("b"), file()).ino
        try s.setxattr(a, Array("user.k".utf8), [1])
        try s.inodes.inode(b).pointee.xattr_off = s.inodes.inode(a).pointee.xattr_off
        try s.setxattr(a, Array("user.k".utf8), [2])
        #expect(throws: PoolError.self) { try s.setxattr(b, Array("user.k".utf8), [3]) }
        #expect(try s.getxattr(a, Array("user.k".utf8)) == [2])
        try PoolDamageMetadataTests.stillServes(s)
    }
}
