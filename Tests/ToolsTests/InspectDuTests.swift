import CPMDK
import Glibc
import Testing
import PMFSMetadata

/// pmfs-inspect du: a tree's blocks, exclusive and shared, through a clone of
/// the tree, a copy-on-write in the clone and the source's removal; the pool
/// is made by mkfs.pmfs and changed by the real engine between the runs.
@Suite struct InspectDuTests {
    /// du's figures in blocks (the byte counts beside them are checked here).
    struct Space: Equatable, CustomStringConvertible {
        var mapped: UInt64, exclusive: UInt64, shared: UInt64
        var description: String { "mapped \(mapped), exclusive \(exclusive), shared \(shared)" }
    }

    final class Pool {
        let scratch: Scratch
        let path: String
        let header: DataDeviceHeader

        init() throws {
            scratch = try Scratch()
            path = scratch.path("fs.pool")
            let data = scratch.path("data.img")
            try mkfs(pool: path, data: data, ["--data-size", "8M", "-q"])
            header = try #require(try DataDeviceHeader.read(from: data))
        }

        /// Opens the pool with the engine for `body`, then closes it (du needs it closed).
        func change<T>(_ body: (MetadataStore) throws -> T) throws -> T {
            let store = try MetadataStore.open(poolPath: path, dataDevice: header)
            defer { try? store.close() }
            return try body(store)
        }

        func du(_ path: String) throws -> (space: Space, output: String) {
            let r = try Tool.run("pmfs-inspect", ["du", "--pool", self.path, path])
            #expect(r.status == 0, "du \(path): \(r.stderr)")
            func blocks(_ label: String) throws -> UInt64 {
                let line = try #require(r.output.split(separator: "\n").first { $0.hasPrefix(label + ":") }, "no \(label) in:\n\(r.output)")
                let words = line.split(separator: " ")
                let count = try #require(UInt64(words[1]))
                #expect(words[3] == "\(count * 4096)" && words[4] == "bytes", "\(line)")
                return count
            }
            return (Space(mapped: try blocks("mapped"), exclusive: try blocks("exclusive"), shared: try blocks("shared")), r.output)
        }
    }

    static let file = NewInode(mode: UInt32(S_IFREG) | 0o644)
    static let directory = NewInode(mode: UInt32(S_IFDIR) | 0o755)

    /// /src: a (3 blocks), sub/b (2 blocks, also named b-again), twice (one block mapped at file blocks 0 and 1).
    func makeSource(_ pool: Pool) throws {
        try pool.change { s in
            let src = try s.mkdir(1, name("src"), Self.directory)
            let sub = try s.mkdir(src.ino, name("sub"), Self.directory)
            let a = try s.create(src.ino, name("a"), Self.file)
            _ = try s.allocateBlocks(a.ino, start: 0, count: 3)
            let b = try s.create(sub.ino, name("b"), Self.file)
            _ = try s.allocateBlocks(b.ino, start: 0, count: 2)
            _ = try s.link(b.ino, newParent: src.ino, newName: name("b-again"))
            let twice = try s.create(src.ino, name("twice"), Self.file)
            _ = try s.allocateBlocks(twice.ino, start: 0, count: 1)
            try s.cloneBlocks(from: twice.ino, block: 0, to: twice.ino, block: 1, count: 1, targetSize: 2 * 4096)
        }
    }

    /// What the data tier's write-back does for the first write to a shared
    /// block: a new block for it, committed in place of the shared one.
    func copyOnWrite(_ s: MetadataStore, _ ino: UInt64, block: UInt64) throws {
        let before = try s.mapBlocks(ino, start: block, count: 1)
        #expect(before.count == 1 && before[0].shared, "file block \(block) of \(ino) should be shared: \(before)")
        try s.reserveBlocks(1)
        let run = try #require(try s.claimBlocks(ino, fileBlock: block, count: 1, fromReservation: 1).first)
        try s.commitWrites(ino, mappings: [NewMapping(fileBlock: block, deviceBlock: run.start, length: 1, replacesShared: true)])
        let after = try s.mapBlocks(ino, start: block, count: 1)
        #expect(after.count == 1 && !after[0].shared && after[0].deviceBlock == run.start)
    }

    @Test func exclusiveAndSharedThroughCloneCopyOnWriteAndDelete() throws {
        let pool = try Pool()
        try makeSource(pool)
        // Every block is the tree's own: b once despite its two names, twice's block once despite its two mappings.
        let alone = try pool.du("/src")
        #expect(alone.space == Space(mapped: 6, exclusive: 6, shared: 0), "\(alone.output)")
        #expect(alone.output.hasPrefix("/src: 1 directory, 3 files\n"), "\(alone.output)")
        #expect(try pool.du("/").space == Space(mapped: 6, exclusive: 6, shared: 0))
        #expect(try pool.du("/src/a").space == Space(mapped: 3, exclusive: 3, shared: 0))

        // A snapshot shares everything: neither tree alone frees a block, both together free all.
        let summary = try pool.change { s in try s.snapshot(try s.lookup(1, name("src")).ino, into: 1, name: name("clone"), readOnly: false) }
        #expect(summary.regularFiles == 3)
        #expect(try pool.du("/src").space == Space(mapped: 6, exclusive: 0, shared: 6))
        #expect(try pool.du("/clone").space == Space(mapped: 6, exclusive: 0, shared: 6))
        #expect(try pool.du("/").space == Space(mapped: 6, exclusive: 6, shared: 0))

        // The first write to block 1 of /clone/a copies it: that block is each tree's own now.
        try pool.change { s in
            try copyOnWrite(s, try s.lookup(try s.lookup(1, name("clone")).ino, name("a")).ino, block: 1)
        }
        #expect(try pool.du("/src").space == Space(mapped: 6, exclusive: 1, shared: 5))
        #expect(try pool.du("/clone").space == Space(mapped: 6, exclusive: 1, shared: 5))
        #expect(try pool.du("/clone/a").space == Space(mapped: 3, exclusive: 1, shared: 2))
        #expect(try pool.du("/").space == Space(mapped: 7, exclusive: 7, shared: 0))

        // Without the source, the clone owns all it maps (twice's block still has two owners, both its own).
        try pool.change { s in
            let src = try s.lookup(1, name("src")).ino, sub = try s.lookup(src, name("sub")).ino
            try s.unlink(sub, name("b"))
            try s.rmdir(src, name("sub"))
            for n in ["a", "b-again", "twice"] { try s.unlink(src, name(n)) }
            try s.rmdir(1, name("src"))
        }
        #expect(try pool.du("/clone").space == Space(mapped: 6, exclusive: 6, shared: 0))
        #expect(try pool.du("/").space == Space(mapped: 6, exclusive: 6, shared: 0))
        #expect(try Tool.run("pmfs-inspect", ["df", "--pool", pool.path]).output.contains("shared blocks: 1 (4 KiB) in 1 run(s), 2 references"))
    }

    @Test func aFileNamedOutsideTheTreeIsNotItsToFree() throws {
        let pool = try Pool()
        try makeSource(pool)
        try pool.change { s in
            let src = try s.lookup(1, name("src")).ino
            _ = try s.link(try s.lookup(src, name("a")).ino, newParent: 1, newName: name("a-outside"))
        }
        let r = try pool.du("/src")
        #expect(r.space == Space(mapped: 6, exclusive: 3, shared: 3), "\(r.output)")
        #expect(r.output.contains("(1 also named outside the tree)"), "\(r.output)")
        // The file's two names are both inside the root's tree.
        #expect(try pool.du("/").space == Space(mapped: 6, exclusive: 6, shared: 0))
        // A file on its own: one of its two names is only part of it.
        #expect(try pool.du("/a-outside").space == Space(mapped: 3, exclusive: 0, shared: 3))
    }

    /// A refcount table that lost its records says one owner where the files
    /// map a block twice: du answers with an error, not a figure or a trap.
    @Test func aDamagedRefcountTableIsAnError() throws {
        let pool = try Pool()
        try makeSource(pool)
        try pool.change { s in _ = try s.snapshot(try s.lookup(1, name("src")).ino, into: 1, name: name("clone"), readOnly: false) }
        let raw = try PersistentPool.open(path: pool.path)
        let root = field(raw.superblock, \.refcount_root)
        root.pointee = 0
        raw.persist(root, MemoryLayout<UInt64>.size)
        raw.close()
        let r = try Tool.run("pmfs-inspect", ["du", "--pool", pool.path, "/"])
        expectFailure(r, tool: "pmfs-inspect", mentioning: "the pool is damaged")
        #expect(r.stderr.contains("1 owner(s) in the refcount table"), "\(r.stderr)")

        // A scribbled record (one owner) is refused by the engine: an error too.
        let pool2 = try Pool()
        try makeSource(pool2)
        let raw2 = try PersistentPool.open(path: pool2.path)
        let node: UnsafeMutablePointer<pmfs_extent_node> = try raw2.pointer(raw2.superblock.pointee.refcount_root)
        #expect(node.pointee.is_leaf != 0)
        let record = element(node, \.u, 0, as: pmfs_extent.self)
        field(record, \.flags).pointee = 1
        raw2.persist(record, MemoryLayout<pmfs_extent>.size)
        raw2.close()
        expectFailure(try Tool.run("pmfs-inspect", ["du", "--pool", pool2.path, "/src"]), tool: "pmfs-inspect", mentioning: "refcount record")
    }
}
