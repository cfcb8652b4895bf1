import CPMDK
import Glibc
import PMFSCheck
import Testing
@testable import PMFSMetadata

/// Damage the pool-damage fuzzer found fsck.pmfs repairing wrongly (issue 10),
/// each built directly: -n reports it, -y repairs it, -n then finds the pool
/// clean, and the engine opens the repaired pool and its root answers.
@Suite struct RepairGapTests {
    /// The checks every case ends with; returns the -y report.
    @discardableResult
    func expectRepaired(_ f: CheckFixture, code: String) throws -> CheckReport {
        let check = try f.check(repair: false)
        #expect(check.exitCode == 4, "\(check.problems.map { "\($0.code): \($0.message)" })")
        #expect(check.problems.contains { $0.code == code }, "\(check.problems.map { "\($0.code): \($0.message)" })")
        let repair = try f.check(repair: true)
        #expect(repair.exitCode == 1, "\(repair.problems.map { "\($0.code): \($0.message) fixed=\($0.fixed)" })")
        #expect(repair.problems.allSatisfy { $0.fixed })
        let again = try f.check(repair: false)
        #expect(again.exitCode == 0, "\(again.problems.map { "\($0.code): \($0.message)" })")

        if getenv("PMFS_FSCK_TEST_VERBOSE") != nil {
            print("== -y\n" + repair.problems.map { "  \($0.code): \($0.message) [\($0.fixed ? "fixed" : "NOT FIXED")]" }.joined(separator: "\n"))
        }
        let store = try MetadataStore.open(poolPath: f.path)
        let root = try store.getattr(PMFS_ROOT_INO)
        #expect(root.type == .directory)
        _ = try walkTree(store)
        let n = try store.create(PMFS_ROOT_INO, FileName("after-repair"), NewInode(mode: UInt32(S_IFREG) | 0o644))
        #expect(try store.lookup(PMFS_ROOT_INO, FileName("after-repair")).ino == n.ino)
        try store.close()
        #expect(try f.check(repair: false).exitCode == 0)
        return repair
    }

    func bitmap(_ raw: RawPool) throws -> UnsafeMutablePointer<pmfs_space_bitmap> {
        try raw.pool.pointer(raw.sb.pointee.space_bitmap_off)
    }

    func deviceBlocks(_ f: CheckFixture) throws -> (superblock: UInt64, bitmap: UInt64) {
        var result: (UInt64, UInt64) = (0, 0)
        try f.withRawPool { raw in result = (raw.sb.pointee.data_blocks, try bitmap(raw).pointee.block_count) }
        return result
    }

    // MARK: the device size

    /// The bitmap's count one short (same word count, so its header is
    /// self-consistent): the superblock is right, its tail bits say so.
    @Test func bitmapBlockCountOneShortIsRestored() throws {
        let f = try CheckFixture()
        try f.withRawPool { raw in raw.poke(field(try bitmap(raw), \.block_count), CheckFixture.dataBlocks - 1) }
        try expectRepaired(f, code: "BITMAP_BLOCK_COUNT")
        #expect(try deviceBlocks(f) == (CheckFixture.dataBlocks, CheckFixture.dataBlocks))
    }

    /// The superblock's count one short: the bitmap is right.
    @Test func superblockDataBlocksOneShortIsRestored() throws {
        let f = try CheckFixture()
        try f.withRawPool { raw in raw.poke(field(raw.sb, \.data_blocks), CheckFixture.dataBlocks - 1) }
        try expectRepaired(f, code: "SB_DATA_BLOCKS")
        #expect(try deviceBlocks(f) == (CheckFixture.dataBlocks, CheckFixture.dataBlocks))
    }

    // MARK: the inode table

    /// chunk_count raised past the one chunk made, with a scribbled slot among
    /// the chunks never made: the count goes down (making thousands of empty
    /// chunks ran the pool out of space and left the table unrepaired).
    @Test(arguments: [UInt64(4096), UInt64(PMFS_MAX_INODE_CHUNKS)])
    func inodeTableCountWithScribbledSlotGoesDown(_ count: UInt64) throws {
        let f = try CheckFixture(name: "table\(count)")
        try f.withRawPool { raw in
            let table: UnsafeMutablePointer<pmfs_inode_table> = try raw.pool.pointer(raw.sb.pointee.inode_table_off)
            raw.poke(field(table, \.chunk_count), count)
            let offsets = cpmdk_inode_table_chunks(table)!
            raw.poke(offsets + 180, 0xC4BE_2F6E_09A1_F10B)
            // A slot naming chunk 0 again is no usable chunk either.
            raw.poke(offsets + Int(count) - 1, offsets[0])
        }
        try expectRepaired(f, code: "TABLE_CHUNK_COUNT")
        try f.withRawPool { raw in
            let table: UnsafeMutablePointer<pmfs_inode_table> = try raw.pool.pointer(raw.sb.pointee.inode_table_off)
            #expect(table.pointee.chunk_count == 1)
        }
    }

    // MARK: the root

    /// The table slot of chunk 0 (the root's) scribbled, the chunk itself
    /// intact: it goes back in its slot and nothing is lost.
    @Test(arguments: [UInt64(0), UInt64(8192), UInt64.max - 7])
    func lostRootChunkPointerIsFound(_ offset: UInt64) throws {
        let f = try CheckFixture(name: "rootptr\(offset)")
        try f.withRawPool { raw in
            let table: UnsafeMutablePointer<pmfs_inode_table> = try raw.pool.pointer(raw.sb.pointee.inode_table_off)
            raw.poke(cpmdk_inode_table_chunks(table)!, offset)
        }
        let repair = try expectRepaired(f, code: "TABLE_CHUNK_FOUND")
        #expect(repair.problems.map(\.code) == ["TABLE_CHUNK_FOUND"])
        let store = try MetadataStore.open(poolPath: f.path)
        defer { try? store.close() }
        #expect(try store.lookup(f.docs, FileName("a.txt")).ino == f.a)
    }

    /// Chunk 0 gone for good: a new, empty root that answers, and the files
    /// of the other chunks in /lost+found under it (as e2fsck reconnects).
    /// With the orphan list's head at inode 1 (seed 21005), the new root, being
    /// empty and unnamed, was taken for an orphan and reclaimed at open.
    @Test(arguments: [false, true])
    func lostRootChunkGivesAWorkingRootAndLostFound(_ rootOnOrphanList: Bool) throws {
        let f = try CheckFixture(name: "lostroot\(rootOnOrphanList)")
        // Fill chunk 0 so that files live in chunk 1 too.
        var outside: [UInt64] = []
        do {
            let store = try MetadataStore.open(poolPath: f.path)
            let dir = try store.mkdir(PMFS_ROOT_INO, FileName("fill"), NewInode(mode: UInt32(S_IFDIR) | 0o755))
            var i = 0
            while outside.count < 3 {
                let n = try store.create(dir.ino, FileName("f\(i)"), NewInode(mode: UInt32(S_IFREG) | 0o644))
                if n.ino >= UInt64(PMFS_INODES_PER_CHUNK) { outside.append(n.ino) }
                i += 1
            }
            try store.close()
        }
        try f.withRawPool { raw in
            let table: UnsafeMutablePointer<pmfs_inode_table> = try raw.pool.pointer(raw.sb.pointee.inode_table_off)
            let slot = cpmdk_inode_table_chunks(table)!
            let chunk0 = slot[0]
            try raw.pool.transaction { tx in
                try tx.snapshot(slot)
                slot.pointee = 0
                try tx.free(chunk0)
            }
            if rootOnOrphanList { raw.poke(field(raw.sb, \.orphan_head), PMFS_ROOT_INO) }
        }
        try expectRepaired(f, code: "ROOT_MISSING")
        let store = try MetadataStore.open(poolPath: f.path)
        defer { try? store.close() }
        let lostFound = try store.lookup(PMFS_ROOT_INO, FileName("lost+found"))
        #expect(lostFound.type == .directory)
        for ino in outside {
            #expect(try store.lookup(lostFound.ino, FileName("#\(ino)")).ino == ino)
        }
    }

    /// The orphan list's head at the live root: the root stays.
    @Test func rootOnTheOrphanListStays() throws {
        let f = try CheckFixture()
        try f.withRawPool { raw in raw.poke(field(raw.sb, \.orphan_head), PMFS_ROOT_INO) }
        try expectRepaired(f, code: "ORPHAN_LINKED")
        let store = try MetadataStore.open(poolPath: f.path)
        defer { try? store.close() }
        #expect(try store.lookup(PMFS_ROOT_INO, FileName("docs")).ino == f.docs)
    }

    // MARK: directories

    /// A slot count far beyond the chunks the directory has: cut to them,
    /// without a walk or an array sized by the count. With a scribbled chunk
    /// among the good ones (seed 21389) every chunk up to the count was to be
    /// replaced and 2^31 slots walked: fsck -y timed out.
    @Test(arguments: [UInt64.max - 7, UInt64(1) << 62, UInt64(8192), UInt64(PMFS_DIR_CHUNK0) * ((1 << 27) - 1)], [false, true])
    func hugeSlotCountIsCutQuickly(_ slots: UInt64, _ scribbledChunk: Bool) throws {
        let f = try CheckFixture(name: "slots\(slots)\(scribbledChunk)")
        try f.withRawPool { raw in
            let d = try raw.directory(f.many)
            raw.poke(field(d.dir, \.slot_count), slots)
            if scribbledChunk { raw.poke(element(d.dir, \.slot_chunk_off, 1, as: UInt64.self), 15) }
        }
        let start = Timestamp.now()
        try expectRepaired(f, code: "DIR_CHUNK")
        #expect(Timestamp.now().seconds - start.seconds < 20)
        try f.withRawPool { raw in
            // Chunks 0-3 hold /many's slots (16 + 32 + 64 + 128).
            let count = try raw.directory(f.many).dir.pointee.slot_count
            #expect(count <= 240)
        }
    }

    /// The engine added entries past a raised slot count before fsck ran
    /// (pmfsd served the damaged directory): the chunks between are missing.
    @Test(arguments: [UInt64(8192)])
    func entriesPastARaisedSlotCount(_ slots: UInt64) throws {
        let f = try CheckFixture(name: "past\(slots)")
        try f.withRawPool { raw in
            let d = try raw.directory(f.docs)
            raw.poke(field(d.dir, \.slot_count), slots)
        }
        do {
            let store = try MetadataStore.open(poolPath: f.path)
            for i in 0..<3 { _ = try? store.create(f.docs, FileName("new-\(i)"), NewInode(mode: UInt32(S_IFREG) | 0o644)) }
            try store.close()
        }
        let start = Timestamp.now()
        try expectRepaired(f, code: "DIR_CHUNK")
        #expect(Timestamp.now().seconds - start.seconds < 20)
    }
}
