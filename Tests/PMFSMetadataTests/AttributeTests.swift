import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

@Suite struct AttributeTests {
    @Test func setattrChangesOnlyWhatIsAsked() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file(0o644))
        let when = Timestamp(seconds: 1_000_000_000, nanoseconds: 123_456_789)
        let a = try t.store.setattr(f.ino, AttributeChanges(mode: UInt32(S_IFDIR) | 0o4711, uid: 7, atime: when))
        #expect(a.type == .regular)            // the type never changes
        #expect(a.permissions == 0o4711)
        #expect(a.uid == 7 && a.gid == 1000)
        #expect(a.atime == when)
        #expect(a.mtime == f.mtime)
        #expect(a.ctime >= f.ctime)
        let b = try t.store.setattr(f.ino, AttributeChanges(mtime: when, ctime: when))
        #expect(b.mtime == when && b.ctime == when)
        // Times before 1970 and far in the future are kept exactly.
        let old = Timestamp(seconds: -86_400 * 365 * 100, nanoseconds: 1)
        #expect(try t.store.setattr(f.ino, AttributeChanges(mtime: old)).mtime == old)
        try t.reopen()
        #expect(try t.store.getattr(f.ino).mtime == old)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.setattr(9999, AttributeChanges(uid: 1)) }
    }

    /// Directories report a size as ext4's do: whole 4 KiB blocks, one at least,
    /// growing with the entries (st_blocks in 512-byte units to match).
    @Test func directoriesReportASizeInBlocks() throws {
        let t = try TestPool()
        let d = try t.store.mkdir(root, name("d"), dir())
        #expect(d.size == 4096 && d.blocks == 8)
        for i in 0..<2000 { _ = try t.store.create(d.ino, name("file-\(i)"), file()) }
        let grown = try t.store.getattr(d.ino)
        #expect(grown.size > 4096 && grown.size % 4096 == 0)
        #expect(grown.blocks == grown.size / 512)
        #expect(try t.store.getattr(root).size >= 4096)
    }

    @Test func truncateFreesBlocksPastTheEnd() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file())
        _ = try t.store.setattr(f.ino, AttributeChanges(size: 40960))
        try t.store.allocateBlocks(f.ino, start: 0, count: 10)
        #expect(try t.store.getattr(f.ino).blocks == 80)
        let free = t.store.statistics().freeBlocks
        let a = try t.store.setattr(f.ino, AttributeChanges(size: 4097))
        #expect(a.size == 4097)
        #expect(a.blocks == 16)   // blocks 0 and 1 stay (the second holds byte 4096)
        #expect(t.store.statistics().freeBlocks == free + 8)
        let segs = try t.store.mapBlocks(f.ino, start: 0, count: 10)
        #expect(segs.first?.length == 2 && segs.first?.deviceBlock != nil)
        #expect(segs.last?.deviceBlock == nil)
        _ = try t.store.setattr(f.ino, AttributeChanges(size: 0))
        #expect(try t.store.getattr(f.ino).blocks == 0)
        #expect(t.store.statistics().freeBlocks == free + 10)
        // Sparse up to 16 TiB and beyond costs nothing.
        #expect(try t.store.setattr(f.ino, AttributeChanges(size: 16 << 40)).size == 16 << 40)
        let d = try t.store.mkdir(root, name("d"), dir())
        #expect(throws: Errno.isDirectory) { try t.store.setattr(d.ino, AttributeChanges(size: 0)) }
        let l = try t.store.symlink(root, name("l"), target: [0x61], uid: 0, gid: 0)
        #expect(throws: Errno.invalidArgument) { try t.store.setattr(l.ino, AttributeChanges(size: 0)) }
    }

    @Test func xattrsInEveryNamespace() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file())
        let names = ["user.comment", "trusted.overlay.opaque", "security.selinux", "system.posix_acl_access"].map { Array($0.utf8) }
        for (i, n) in names.enumerated() { try t.store.setxattr(f.ino, n, [UInt8](repeating: UInt8(i), count: i * 100)) }
        #expect(try t.store.listxattr(f.ino) == names)
        for (i, n) in names.enumerated() { #expect(try t.store.getxattr(f.ino, n) == [UInt8](repeating: UInt8(i), count: i * 100)) }
        #expect(throws: Errno.fileExists) { try t.store.setxattr(f.ino, names[0], [1], mode: .create) }
        #expect(throws: Errno.noData) { try t.store.setxattr(f.ino, Array("user.new".utf8), [1], mode: .replace) }
        try t.store.setxattr(f.ino, names[0], Array("replaced".utf8), mode: .replace)
        #expect(try t.store.getxattr(f.ino, names[0]) == Array("replaced".utf8))
        #expect(throws: Errno.noData) { try t.store.getxattr(f.ino, Array("user.none".utf8)) }
        #expect(throws: Errno.notSupported) { try t.store.setxattr(f.ino, Array("bogus.x".utf8), [1]) }
        #expect(throws: Errno.invalidArgument) { try t.store.setxattr(f.ino, Array("user.".utf8), [1]) }
        #expect(throws: Errno.outOfRange) { try t.store.setxattr(f.ino, Array(("user." + String(repeating: "x", count: 251)).utf8), [1]) }
        #expect(throws: Errno.argListTooLong) { try t.store.setxattr(f.ino, Array("user.big".utf8), [UInt8](repeating: 0, count: 65537)) }
        // An empty value is a value.
        try t.store.setxattr(f.ino, Array("user.empty".utf8), [])
        #expect(try t.store.getxattr(f.ino, Array("user.empty".utf8)) == [])
        try t.store.removexattr(f.ino, names[1])
        #expect(throws: Errno.noData) { try t.store.removexattr(f.ino, names[1]) }
        try t.reopen()
        #expect(try t.store.listxattr(f.ino).count == 4)
        #expect(try t.store.getxattr(f.ino, names[3]) == [UInt8](repeating: 3, count: 300))
        // Directories and symlinks carry xattrs too.
        try t.store.setxattr(root, Array("user.dir".utf8), [9])
        #expect(try t.store.getxattr(root, Array("user.dir".utf8)) == [9])
    }

    @Test func statisticsTrackSpaceAndInodes() throws {
        let t = try TestPool(dataBlocks: 1000)
        let s0 = t.store.statistics()
        #expect(s0.totalBlocks == 999)
        #expect(s0.freeBlocks == 999)
        #expect(s0.blockSize == 4096)
        let f = try t.store.create(root, name("f"), file())
        try t.store.allocateBlocks(f.ino, start: 0, count: 100)
        let s1 = t.store.statistics()
        #expect(s1.freeBlocks == 899)
        #expect(s1.freeInodes == s0.freeInodes - 1)
    }
}
