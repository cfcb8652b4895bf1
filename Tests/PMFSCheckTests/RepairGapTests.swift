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
}
