import SystemPackage
import Testing
@testable import PMFSMetadata

/// The pool's count of bytes in live objects (pmfs_pool_object_bytes, `pmfsctl df`):
/// moved by each committed transaction, it must agree with what a fresh open sums.
@Suite struct PoolObjectBytesTests {
    @Test func followsCreatesAndRemovesAndAgreesWithAReopen() throws {
        let t = try TestPool()
        let empty = t.store.statistics().poolObjectBytes
        #expect(empty > 0, "the superblock and root directory are objects")
        try t.reopen()
        #expect(t.store.statistics().poolObjectBytes == empty)

        let d = try t.store.mkdir(root, name("d"), dir())
        for i in 0..<300 {
            let f = try t.store.create(d.ino, name("file-\(i)"), file())
            try t.store.setxattr(f.ino, Array("user.k".utf8), [UInt8](repeating: 7, count: 200))
        }
        let full = t.store.statistics().poolObjectBytes
        #expect(full > empty + 300 * 200, "300 inodes with 200-byte xattrs and their directory entries")
        try t.reopen()
        #expect(t.store.statistics().poolObjectBytes == full)

        // A refused create (the name exists) commits nothing.
        #expect(throws: Errno.fileExists) { try t.store.create(d.ino, name("file-0"), file()) }
        #expect(t.store.statistics().poolObjectBytes == full)

        for i in 0..<300 { try t.store.unlink(d.ino, name("file-\(i)")) }
        try t.store.rmdir(root, name("d"))
        let emptied = t.store.statistics().poolObjectBytes
        #expect(emptied < full - 300 * 200)
        try t.reopen()
        #expect(t.store.statistics().poolObjectBytes == emptied)
    }
}
