import CPMDK
import Testing
@testable import PMFSMetadata

/// Feature bits a pool may carry that this pmfs does not know: an incompat bit
/// refuses every open, a rocompat bit refuses only a writer (pmfsd).
@Suite struct FeatureBitsTests {
    @Test func anUnknownRocompatBitRefusesAWriterAndLetsAnInspectorRead() throws {
        let t = try TestPool()
        _ = try t.store.create(root, name("kept"), file())
        t.store.pool.superblock.pointee.rocompat_features |= 1 << 7
        try t.store.close()
        t.store = nil
        #expect {
            _ = try MetadataStore.open(poolPath: t.path)
        } throws: { error in
            guard case PoolError.unknownWriteFeatures(let bits) = error else { return false }
            return bits == 1 << 7
        }
        let inspected = try MetadataStore.open(poolPath: t.path, mode: .inspect)
        #expect(try inspected.lookup(root, name("kept")).type == .regular)
        try inspected.close()
    }

    @Test func theKnownRocompatBitOpensForWriting() throws {
        let t = try TestPool()
        t.store.pool.superblock.pointee.rocompat_features |= UInt64(PMFS_ROCOMPAT_KNOWN)
        try t.reopen()
        #expect(t.store.pool.superblock.pointee.rocompat_features == UInt64(PMFS_ROCOMPAT_KNOWN))
    }
}
