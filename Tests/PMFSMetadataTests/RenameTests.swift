import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

@Suite struct RenameTests {
    @Test func renameWithinDirectory() throws {
        let t = try TestPool()
        let f = try t.store.create(root, name("a"), file())
        try t.store.rename(root, name("a"), root, name("b"))
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.lookup(root, name("a")) }
        #expect(try t.store.lookup(root, name("b")).ino == f.ino)
        #expect(try t.store.names(root) == ["b"])
        // Same name: nothing happens.
        try t.store.rename(root, name("b"), root, name("b"))
        #expect(try t.store.lookup(root, name("b")).ino == f.ino)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.rename(root, name("zz"), root, name("b")) }
    }

    @Test func renameOverExistingFileFreesIt() throws {
        let t = try TestPool()
        let a = try t.store.create(root, name("a"), file())
        let b = try t.store.create(root, name("b"), file())
        try t.store.allocateBlocks(b.ino, start: 0, count: 8)
        let free = t.store.statistics().freeBlocks
        try t.store.rename(root, name("a"), root, name("b"))
        #expect(try t.store.lookup(root, name("b")).ino == a.ino)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.getattr(b.ino) }
        #expect(t.store.statistics().freeBlocks == free + 8)
        #expect(try t.store.names(root) == ["b"])
    }

    @Test func renameOverHardLinkOfSameFileDoesNothing() throws {
        let t = try TestPool()
        let a = try t.store.create(root, name("a"), file())
        _ = try t.store.link(a.ino, newParent: root, newName: name("b"))
        try t.store.rename(root, name("a"), root, name("b"))
        #expect(Set(try t.store.names(root)) == ["a", "b"])
        #expect(try t.store.getattr(a.ino).nlink == 2)
    }

    @Test func crossDirectoryRenameOfDirectoryFixesParentAndLinks() throws {
        let t = try TestPool()
        let x = try t.store.mkdir(root, name("x"), dir())
        let y = try t.store.mkdir(root, name("y"), dir())
        let d = try t.store.mkdir(x.ino, name("d"), dir())
        #expect(try t.store.getattr(x.ino).nlink == 3)
        try t.store.rename(x.ino, name("d"), y.ino, name("moved"))
        #expect(try t.store.getattr(x.ino).nlink == 2)
        #expect(try t.store.getattr(y.ino).nlink == 3)
        #expect(try t.store.lookup(d.ino, name("..")).ino == y.ino)
        #expect(try t.store.readdir(d.ino, cookie: 1).first?.ino == y.ino)
    }

    @Test func renameDirectoryOverEmptyDirectory() throws {
        let t = try TestPool()
        let x = try t.store.mkdir(root, name("x"), dir())
        let y = try t.store.mkdir(root, name("y"), dir())
        try t.store.rename(root, name("x"), root, name("y"))
        #expect(try t.store.lookup(root, name("y")).ino == x.ino)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.getattr(y.ino) }
        #expect(try t.store.getattr(root).nlink == 3)
    }

    @Test func renameTypeAndEmptinessErrors() throws {
        let t = try TestPool()
        let x = try t.store.mkdir(root, name("x"), dir())
        _ = try t.store.mkdir(root, name("full"), dir())
        _ = try t.store.create(try t.store.lookup(root, name("full")).ino, name("f"), file())
        _ = try t.store.create(root, name("file"), file())
        #expect(throws: Errno.notDirectory) { try t.store.rename(root, name("x"), root, name("file")) }
        #expect(throws: Errno.isDirectory) { try t.store.rename(root, name("file"), root, name("x")) }
        #expect(throws: Errno.directoryNotEmpty) { try t.store.rename(root, name("x"), root, name("full")) }
        #expect(throws: Errno.invalidArgument) { try t.store.rename(root, name("."), root, name("y")) }
        #expect(throws: Errno.invalidArgument) { try t.store.rename(root, name("x"), root, name("..")) }
        #expect(try t.store.lookup(root, name("x")).ino == x.ino)
    }

    @Test func renameIntoOwnSubtreeIsRefused() throws {
        let t = try TestPool()
        let a = try t.store.mkdir(root, name("a"), dir())
        let b = try t.store.mkdir(a.ino, name("b"), dir())
        let c = try t.store.mkdir(b.ino, name("c"), dir())
        #expect(throws: Errno.invalidArgument) { try t.store.rename(root, name("a"), c.ino, name("a")) }
        #expect(throws: Errno.invalidArgument) { try t.store.rename(root, name("a"), a.ino, name("self")) }
        #expect(throws: Errno.invalidArgument) {
            try t.store.rename(root, name("a"), b.ino, name("x"), flags: [])
        }
        // Moving a subtree up is fine.
        try t.store.rename(b.ino, name("c"), root, name("c"))
        #expect(try t.store.lookup(c.ino, name("..")).ino == root)
    }

    @Test func noReplace() throws {
        let t = try TestPool()
        _ = try t.store.create(root, name("a"), file())
        _ = try t.store.create(root, name("b"), file())
        #expect(throws: Errno.fileExists) { try t.store.rename(root, name("a"), root, name("b"), flags: .noReplace) }
        try t.store.rename(root, name("a"), root, name("c"), flags: .noReplace)
        #expect(Set(try t.store.names(root)) == ["b", "c"])
        #expect(throws: Errno.invalidArgument) { try t.store.rename(root, name("b"), root, name("d"), flags: [.noReplace, .exchange]) }
    }

    @Test func exchangeSwapsEntriesAcrossDirectories() throws {
        let t = try TestPool()
        let x = try t.store.mkdir(root, name("x"), dir())
        let y = try t.store.mkdir(root, name("y"), dir())
        let f = try t.store.create(x.ino, name("f"), file())
        let d = try t.store.mkdir(y.ino, name("d"), dir())
        try t.store.rename(x.ino, name("f"), y.ino, name("d"), flags: .exchange)
        #expect(try t.store.lookup(x.ino, name("f")).ino == d.ino)
        #expect(try t.store.lookup(y.ino, name("d")).ino == f.ino)
        #expect(try t.store.lookup(d.ino, name("..")).ino == x.ino)
        #expect(try t.store.getattr(x.ino).nlink == 3)
        #expect(try t.store.getattr(y.ino).nlink == 2)
        #expect(try t.store.readdir(x.ino, cookie: 2).first?.type == .directory)
        #expect(throws: Errno.noSuchFileOrDirectory) { try t.store.rename(x.ino, name("f"), y.ino, name("none"), flags: .exchange) }
        // Exchanging a directory with its own descendant is refused.
        let inner = try t.store.mkdir(d.ino, name("inner"), dir())
        _ = inner
        #expect(throws: Errno.invalidArgument) { try t.store.rename(x.ino, name("f"), d.ino, name("inner"), flags: .exchange) }
    }

    @Test func renameKeepsLongNames() throws {
        let t = try TestPool()
        let long = String(repeating: "n", count: 200)
        let f = try t.store.create(root, name(long), file())
        try t.store.rename(root, name(long), root, name(long + "2"))
        #expect(try t.store.lookup(root, name(long + "2")).ino == f.ino)
        try t.reopen()
        #expect(try t.store.names(root) == [long + "2"])
    }
}
