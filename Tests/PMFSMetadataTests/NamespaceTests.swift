import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

@Suite struct NamespaceTests {
    @Test func freshFileSystemHasRootDirectory() throws {
        let t = try TestPool()
        let a = try t.store.getattr(root)
        #expect(a.type == .directory)
        #expect(a.nlink == 2)
        #expect(try t.store.names(root).isEmpty)
        let entries = try t.store.readdir(root, cookie: 0)
        #expect(entries.map(\.name) == [[0x2E], [0x2E, 0x2E]])
        #expect(entries[1].ino == root)
    }

    @Test func createLookupAndAttributes() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("hello.txt"), file(0o640))
        #expect(f.type == .regular)
        #expect(f.permissions == 0o640)
        #expect(f.uid == 1000 && f.gid == 1000)
        #expect(f.nlink == 1 && f.size == 0)
        #expect(try t.store.lookup(root, name("hello.txt")) == f)
        #expect(throws: Errno.fileExists) { try t.store.create(root, name("hello.txt"), file()) }
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.lookup(root, name("nope")) }
        #expect(throws: Errno.notDirectory) { try t.store.create(f.ino, name("x"), file()) }
        #expect(throws: Errno.notDirectory) { try t.store.lookup(f.ino, name("x")) }
        // Parent times move on create.
        let r = try t.store.getattr(root)
        #expect(r.mtime >= f.ctime)
        try t.reopen()
        #expect(try t.store.lookup(root, name("hello.txt")).ino == f.ino)
    }

    @Test func namesAreBytesExceptSlashAndNul() throws {
        let t = try TestPool()
        let odd: [UInt8] = [0xFF, 0x01, 0x20, 0x7F, 0xC3, 0x28]
        let n = try FileName(bytes: odd)
        _ = try t.store.create(root, n, file())
        #expect(try t.store.readdir(root, cookie: 2).first?.name == odd)
        let longest = try FileName(bytes: [UInt8](repeating: 0x61, count: 255))
        _ = try t.store.create(root, longest, file())
        #expect(try t.store.lookup(root, longest).type == .regular)
        #expect(throws: Errno.fileNameTooLong) { try FileName(bytes: [UInt8](repeating: 0x61, count: 256)) }
        #expect(throws: Errno.invalidArgument) { try FileName("a/b") }
        #expect(throws: Errno.invalidArgument) { try FileName(bytes: [0x61, 0]) }
        #expect(throws: Errno.fileExists) { try t.store.create(root, name("."), file()) }
        #expect(throws: Errno.fileExists) { try t.store.mkdir(root, name(".."), dir()) }
    }

    @Test func mkdirRmdirAndLinkCounts() throws {
        let t = try TestPool()
        let a = try t.store.mkdir(root, name("a"), dir())
        #expect(a.nlink == 2)
        #expect(try t.store.getattr(root).nlink == 3)
        let b = try t.store.mkdir(a.ino, name("b"), dir())
        #expect(try t.store.getattr(a.ino).nlink == 3)
        #expect(try t.store.lookup(b.ino, name("..")).ino == a.ino)
        #expect(try t.store.lookup(b.ino, name(".")).ino == b.ino)
        _ = try t.store.create(b.ino, name("f"), file())
        #expect(throws: Errno.directoryNotEmpty) { try t.store.rmdir(a.ino, name("b")) }
        #expect(throws: Errno.notDirectory) { try t.store.rmdir(b.ino, name("f")) }
        #expect(throws: Errno.isDirectory) { try t.store.unlink(a.ino, name("b")) }
        #expect(throws: Errno.invalidArgument) { try t.store.rmdir(a.ino, name(".")) }
        #expect(throws: Errno.directoryNotEmpty) { try t.store.rmdir(a.ino, name("..")) }
        try t.store.unlink(b.ino, name("f"))
        try t.store.rmdir(a.ino, name("b"))
        #expect(try t.store.getattr(a.ino).nlink == 2)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.getattr(b.ino) }
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.rmdir(a.ino, name("b")) }
        try t.store.rmdir(root, name("a"))
        #expect(try t.store.getattr(root).nlink == 2)
    }

    @Test func specialFilesAndSymlinks() throws {
        let t = try TestPool()
        let fifo = try t.store.create(root, name("fifo"), NewInode(mode: UInt32(S_IFIFO) | 0o600))
        #expect(fifo.type == .fifo)
        let sock = try t.store.create(root, name("sock"), NewInode(mode: UInt32(S_IFSOCK) | 0o600))
        #expect(sock.type == .socket)
        let chr = try t.store.create(root, name("null"), NewInode(mode: UInt32(S_IFCHR) | 0o666, rdev: 0x0103))
        #expect(chr.type == .characterDevice && chr.rdev == 0x0103)
        let blk = try t.store.create(root, name("sda"), NewInode(mode: UInt32(S_IFBLK) | 0o660, rdev: 0x0800))
        #expect(blk.type == .blockDevice && blk.rdev == 0x0800)
        #expect(throws: Errno.invalidArgument) { try t.store.create(root, name("bad"), NewInode(mode: 0o644)) }

        let target = Array("../some/where/quite/far".utf8)
        let l = try t.store.symlink(root, name("link"), target: target, uid: 5, gid: 6)
        #expect(l.type == .symbolicLink && l.size == UInt64(target.count) && l.uid == 5)
        #expect(try t.store.readlink(l.ino) == target)
        #expect(throws: Errno.invalidArgument) { try t.store.readlink(fifo.ino) }
        let long = [UInt8](repeating: 0x78, count: 4095)
        let l2 = try t.store.symlink(root, name("long"), target: long, uid: 0, gid: 0)
        #expect(try t.store.readlink(l2.ino) == long)
        #expect(throws: Errno.fileNameTooLong) { try t.store.symlink(root, name("toolong"), target: long + [0x78], uid: 0, gid: 0) }
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.symlink(root, name("empty"), target: [], uid: 0, gid: 0) }
        try t.reopen()
        #expect(try t.store.readlink(l2.ino) == long)
        #expect(try t.store.getattr(chr.ino).rdev == 0x0103)
    }

    @Test func hardLinks() throws {
        let t = try TestPool()
        let d = try t.store.mkdir(root, name("d"), dir())
        let f = try t.store.create(root, name("f"), file())
        let l = try t.store.link(f.ino, newParent: d.ino, newName: name("g"))
        #expect(l.ino == f.ino && l.nlink == 2)
        #expect(throws: Errno.fileExists) { try t.store.link(f.ino, newParent: d.ino, newName: name("g")) }
        #expect(throws: Errno.notPermitted) { try t.store.link(d.ino, newParent: root, newName: name("d2")) }
        try t.store.unlink(root, name("f"))
        #expect(try t.store.getattr(f.ino).nlink == 1)
        #expect(try t.store.lookup(d.ino, name("g")).ino == f.ino)
        try t.store.unlink(d.ino, name("g"))
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.getattr(f.ino) }
    }

    @Test func linkLimitGivesEMLINK() throws {
        let t = try TestPool(poolSize: 256 << 20)
        let f = try t.store.create(root, name("f"), file())
        // Start close to the limit by writing nlink directly (65,000 links take a while).
        let p = try t.store.inodes.inode(f.ino)
        p.pointee.nlink = MetadataStore.maxLinks - 1
        _ = try t.store.link(f.ino, newParent: root, newName: name("last"))
        #expect(throws: Errno.tooManyLinks) { try t.store.link(f.ino, newParent: root, newName: name("over")) }
    }

    @Test func inodeNumbersAreReusedWithNewGeneration() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file())
        try t.store.unlink(root, name("f"))
        let g = try t.store.create(root, name("g"), file())
        #expect(g.ino == f.ino)
        #expect(g.generation > f.generation)
    }

    @Test func unlinkWhileOpenMakesOrphanReclaimedOnLastClose() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file(), pin: true)
        try t.store.allocateBlocks(f.ino, start: 0, count: 10)
        let freeBefore = t.store.statistics().freeBlocks
        try t.store.unlink(root, name("f"))
        #expect(try t.store.getattr(f.ino).nlink == 0)
        #expect(try t.store.orphans() == [f.ino])
        #expect(t.store.statistics().freeBlocks == freeBefore)
        try t.store.unpin(f.ino)
        #expect(try t.store.orphans().isEmpty)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.getattr(f.ino) }
        #expect(t.store.statistics().freeBlocks == freeBefore + 10)
    }

    @Test func orphansAreReclaimedAtNextOpenAfterCrash() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("f"), file(), pin: true)
        try t.store.allocateBlocks(f.ino, start: 0, count: 4)
        try t.store.unlink(root, name("f"))
        #expect(try t.store.orphans() == [f.ino])
        // A crash: the pool is never marked clean and the pin is gone.
        t.store.pool.close()
        t.store = try MetadataStore.open(poolPath: t.path)
        #expect(t.store.recoveredFromUncleanShutdown)
        #expect(t.store.reclaimedOrphans == 1)
        #expect(try t.store.orphans().isEmpty)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.getattr(f.ino) }
        #expect(t.store.statistics().freeBlocks == t.store.statistics().totalBlocks)
    }

    @Test func cleanCloseIsNotRecovery() throws {
        let t = try TestPool()
        try t.reopen()
        #expect(!t.store.recoveredFromUncleanShutdown)
    }

    @Test func tmpfileCanBeLinkedLater() throws {
        let t = try TestPool()
        let f = try t.store.tmpfile(root, file())
        #expect(f.nlink == 0)
        #expect(try t.store.orphans() == [f.ino])
        let linked = try t.store.link(f.ino, newParent: root, newName: name("now-named"))
        #expect(linked.nlink == 1)
        #expect(try t.store.orphans().isEmpty)
        try t.store.unpin(f.ino)
        #expect(try t.store.lookup(root, name("now-named")).ino == f.ino)
    }

    @Test func removedDirectoryStillOpenRefusesNewEntries() throws {
        let t = try TestPool()
        let d = try t.store.mkdir(root, name("d"), dir(), pin: true)
        try t.store.rmdir(root, name("d"))
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.create(d.ino, name("x"), file()) }
        #expect(try t.store.names(d.ino).isEmpty)
        try t.store.unpin(d.ino)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.getattr(d.ino) }
    }
}
