import CPMDK
import Glibc
import PMFSCheck
import Testing
@testable import PMFSMetadata

/// Pass 1c and the refcount table: a pool with clones is clean, and each way
/// the table can be wrong is found with -n and rebuilt with -y.
@Suite struct RefcountCheckTests {
    /// The fixture plus /clone, a clone of the 8 written blocks of /docs/a.txt.
    func clonedFixture(_ name: String = #function) throws -> (CheckFixture, UInt64) {
        let f = try CheckFixture(name: name)
        let store = try MetadataStore.open(poolPath: f.path)
        let clone = try store.create(1, FileName("clone"), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
        try store.cloneBlocks(from: f.a, block: 0, to: clone, block: 0, count: 8, targetSize: 8 * 4096)
        try store.close()
        return (f, clone)
    }

    func firstRecord(_ raw: RawPool) throws -> UnsafeMutablePointer<pmfs_extent> {
        var n: UnsafeMutablePointer<pmfs_extent_node> = try raw.pool.pointer(raw.sb.pointee.refcount_root)
        while n.pointee.is_leaf == 0 { n = try raw.pool.pointer(element(n, \.u, 0, as: UInt64.self).pointee) }
        return element(n, \.u, 0, as: pmfs_extent.self)
    }

    func records(_ f: CheckFixture) throws -> [UInt64] {
        let store = try MetadataStore.open(poolPath: f.path)
        defer { try? store.close() }
        return try store.sharedBlockRecords().map { $0.owners }
    }

    @Test func clonedPoolIsClean() throws {
        let (f, _) = try clonedFixture()
        let check = try f.check(repair: false)
        #expect(check.exitCode == 0, "\(check.problems.map { "\($0.code): \($0.message)" })")
        #expect(try records(f) == [2])
    }

    enum TableDamage: String, CaseIterable {
        case scribbledCount, tableLost, recordMisplaced, recordForUnsharedBlocks
        var expectedCode: String {
            switch self {
            case .scribbledCount, .recordForUnsharedBlocks: return "REFCOUNT_WRONG"
            case .tableLost: return "BLOCKS_SHARED_UNRECORDED"
            case .recordMisplaced: return "REFCOUNT_TABLE"
            }
        }
    }

    @Test(arguments: TableDamage.allCases)
    func findsAndRebuildsTheTable(_ damage: TableDamage) throws {
        let (f, clone) = try clonedFixture(damage.rawValue)
        try f.withRawPool { raw in
            let r = try firstRecord(raw)
            switch damage {
            case .scribbledCount: raw.poke(field(r, \.flags), 5)
            case .tableLost: raw.poke(field(raw.sb, \.refcount_root), 0)
            case .recordMisplaced: raw.poke(field(r, \.device_block), r.pointee.device_block + 1)
            case .recordForUnsharedBlocks:
                // The clone's extent moves to the blocks of /b.txt: a's blocks now have
                // one owner (the record is wrong) and b's have two with no record.
                raw.poke(field(try raw.firstExtent(clone), \.device_block), try raw.firstExtent(f.b).pointee.device_block)
            }
        }
        let check = try f.check(repair: false)
        #expect(check.exitCode == 4)
        #expect(check.problems.contains { $0.code == damage.expectedCode }, "\(check.problems.map { "\($0.code): \($0.message)" })")
        let repair = try f.check(repair: true)
        #expect(repair.problems.allSatisfy { $0.fixed }, "\(repair.problems.map { "\($0.code): \($0.message) fixed=\($0.fixed)" })")
        let again = try f.check(repair: false)
        #expect(again.exitCode == 0, "\(again.problems.map { "\($0.code): \($0.message)" })")
        #expect(try records(f) == [2])
    }

    /// The engine meets a damaged table with an error for the request, not a trap.
    @Test func damagedTableIsAnErrorForTheEngine() throws {
        let (f, clone) = try clonedFixture()
        try f.withRawPool { raw in raw.poke(field(try firstRecord(raw), \.flags), 1) }
        let store = try MetadataStore.open(poolPath: f.path)
        defer { try? store.close() }
        #expect(throws: (any Error).self) { try store.unlink(1, FileName("clone")) }
        #expect(throws: (any Error).self) { _ = try store.mapBlocks(clone, start: 0, count: 8) }
        _ = try store.create(1, FileName("still-works"), NewInode(mode: UInt32(S_IFREG) | 0o644))
    }

    @Test func versionOnePoolIsUpgradedAtOpenAndNewerIsRefused() throws {
        let f = try CheckFixture()
        try f.withRawPool { raw in raw.poke(field(raw.sb, \.format_version), 1) }
        let store = try MetadataStore.open(poolPath: f.path)
        #expect(store.pool.superblock.pointee.format_version == 2)
        try store.close()
        #expect(try f.check(repair: false).exitCode == 0)
        try f.withRawPool { raw in raw.poke(field(raw.sb, \.format_version), 3) }
        #expect { _ = try MetadataStore.open(poolPath: f.path) } throws: { "\($0)".contains("format version 3 is newer") }
    }
}
