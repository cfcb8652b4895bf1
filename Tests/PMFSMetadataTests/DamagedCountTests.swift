import Glibc
import SystemPackage
import Testing
@testable import PMFSMetadata

/// Counts read back from a damaged pool at their bounds (a directory's link
/// count too low or at UInt32.max) do not trap mkdir, rmdir or rename.
@Suite struct DamagedCountTests {
    @Test func directoryLinkCountsAtTheirBoundsDoNotTrap() throws {
        let t = try TestPool()
        let s = try #require(t.store)
        let a = try s.mkdir(1, name("a"), dir())
        let b = try s.mkdir(1, name("b"), dir())
        _ = try s.mkdir(a.ino, name("sub"), dir())
        try s.inodes.inode(a.ino).pointee.nlink = 1   // (0 would read as removed: ENOENT)
        try s.inodes.inode(b.ino).pointee.nlink = UInt32.max
        try s.rename(a.ino, name("sub"), b.ino, name("moved"), flags: [])
        _ = try s.mkdir(b.ino, name("more"), dir())
        try s.rmdir(b.ino, name("more"))
        try s.inodes.inode(b.ino).pointee.nlink = 1
        try s.rmdir(b.ino, name("moved"))
        // The file system still works.
        _ = try s.mkdir(1, name("c"), dir())
        #expect(try s.lookup(1, name("c"), pin: false).type == .directory)
    }
}
