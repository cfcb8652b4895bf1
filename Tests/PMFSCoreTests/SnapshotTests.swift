import CPMDK
import Glibc
import PMFSCheck
import PMFSConcurrency
import PMFSData
import SystemPackage
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// Tree snapshots on a real pool and data file: the copy equals the source
/// (types, modes, owners, times, xattrs, symlinks, hard links, contents, the
/// dirty cached data included), its files share every block (two owners),
/// writes to either side are copied on write, read-only copies carry the
/// flag, refusals change nothing, and fsck finds the pool clean.
@Suite struct SnapshotTests {
    static let block = 4096

    func name(_ s: String) throws -> FileName { try FileName(s) }

    func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed) &+ $0 / 4096) }
    }

    /// base/{a (3 blocks, synced), b (dirty, 1.5 blocks), sub/{c (times set), link-to-a, deep/empty/}, sym -> a, fifo, dev},
    /// with xattrs, owners, modes and explicit times; outside/x is a hard link to base/sub/c.
    @discardableResult
    func makeTree(_ t: CoreFixture) throws -> UInt64 {
        let m = t.metadata!
        let base = try m.mkdir(1, try name("base"), NewInode(mode: 0o750, uid: 10, gid: 20)).ino
        let a = try m.create(base, try name("a"), NewInode(mode: UInt32(S_IFREG) | 0o640, uid: 11, gid: 21)).ino
        _ = try t.write(a, 0, pattern(3 * Self.block, seed: 1))
        try t.fs.fsync(a)
        let b = try m.create(base, try name("b"), NewInode(mode: UInt32(S_IFREG) | 0o600)).ino
        _ = try t.write(b, 0, pattern(Self.block * 3 / 2, seed: 2))   // left dirty in the cache
        let sub = try m.mkdir(base, try name("sub"), NewInode(mode: 0o755)).ino
        let c = try m.create(sub, try name("c"), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
        _ = try t.write(c, 0, pattern(100, seed: 3))
        try t.fs.fsync(c)
        _ = try m.link(a, newParent: sub, newName: try name("link-to-a"))
        let deep = try m.mkdir(sub, try name("deep"), NewInode(mode: 0o700)).ino
        _ = try m.mkdir(deep, try name("empty"), NewInode(mode: 0o1777))
        _ = try m.symlink(base, try name("sym"), target: Array("a".utf8), uid: 12, gid: 22)
        _ = try m.create(base, try name("fifo"), NewInode(mode: UInt32(S_IFIFO) | 0o644))
        _ = try m.create(base, try name("dev"), NewInode(mode: UInt32(S_IFCHR) | 0o600, rdev: 0x0103))
        try m.setxattr(a, Array("user.colour".utf8), Array("blue".utf8))
        try m.setxattr(base, Array("trusted.dir".utf8), [0, 1, 2])
        let outside = try m.mkdir(1, try name("outside"), NewInode(mode: 0o755)).ino
        _ = try m.link(c, newParent: outside, newName: try name("x"))
        _ = try t.fs.setattr(c, AttributeChanges(atime: Timestamp(seconds: 1_000, nanoseconds: 5), mtime: Timestamp(seconds: 2_000, nanoseconds: 7)))
        return base
    }

    /// One inode as the tree shows it, with its entries (by name) below it.
    struct Node: Equatable {
        var attributes: InodeAttributes
        var xattrs: [[UInt8]: [UInt8]]
        var target: [UInt8]?
        var contents: [UInt8]?
        var children: [[UInt8]: Node]
    }

    func describe(_ t: CoreFixture, _ ino: UInt64) throws -> Node {
        let m = t.metadata!
        let a = try t.fs.getattr(ino)
        var xattrs: [[UInt8]: [UInt8]] = [:]
        for n in try m.listxattr(ino) { xattrs[n] = try m.getxattr(ino, n) }
        var node = Node(attributes: a, xattrs: xattrs, target: nil, contents: nil, children: [:])
        switch a.type {
        case .directory:
            for e in try m.readdir(ino, cookie: 0, limit: 10_000) where e.name != [0x2E] && e.name != [0x2E, 0x2E] {
                node.children[e.name] = try describe(t, e.ino)
            }
        case .symbolicLink: node.target = try m.readlink(ino)
        case .regular: node.contents = try t.read(ino, 0, Int(a.size) + 1)
        default: break
        }
        return node
    }

    /// Equal but for inode numbers, generations, parents' numbers and the flags.
    func expectSameTree(_ x: Node, _ y: Node, path: String = "", readOnly: Bool = false,
                        _ sourceLocation: SourceLocation = #_sourceLocation) {
        var ax = x.attributes, ay = y.attributes
        #expect(ay.readOnly == readOnly, "\(path): read-only flag", sourceLocation: sourceLocation)
        ax.ino = 0; ay.ino = 0; ax.generation = 0; ay.generation = 0; ax.readOnly = false; ay.readOnly = false
        if ax.type != .directory { ax.nlink = 0; ay.nlink = 0 }   // links inside the tree: checked apart
        #expect(ax == ay, "\(path)", sourceLocation: sourceLocation)
        #expect(x.xattrs == y.xattrs, "\(path) xattrs", sourceLocation: sourceLocation)
        #expect(x.target == y.target, "\(path) target", sourceLocation: sourceLocation)
        #expect(x.contents == y.contents, "\(path) contents", sourceLocation: sourceLocation)
        #expect(Set(x.children.keys) == Set(y.children.keys), "\(path) entries", sourceLocation: sourceLocation)
        for (k, cx) in x.children {
            guard let cy = y.children[k] else { continue }
            expectSameTree(cx, cy, path: path + "/" + String(decoding: k, as: UTF8.self), readOnly: readOnly, sourceLocation)
        }
    }

    @Test func snapshotCopiesTheTreeAtOnePointAndSharesEveryBlock() throws {
        let t = try CoreFixture()
        let base = try makeTree(t)
        let before = try describe(t, base)
        let made = try t.fs.snapshot(base, into: 1, name: try name("clone"), readOnly: false)
        #expect(made.inodes == 10 && made.directories == 4 && made.regularFiles == 3)
        #expect(made.sharedBlocks == 3 + 2 + 1)
        let copy = try describe(t, made.root)
        expectSameTree(before, copy)
        #expect(try describe(t, base) == before)
        // Hard links: link-to-a and a are one inode in the copy, not the source's.
        let ca = try t.metadata.lookup(made.root, try name("a"))
        let sub = try t.metadata.lookup(made.root, try name("sub")).ino
        #expect(try t.metadata.lookup(sub, try name("link-to-a")).ino == ca.ino)
        let sourceA = try t.metadata.lookup(base, try name("a")).ino
        #expect(ca.nlink == 2 && ca.ino != sourceA)
        // c has a second link outside the tree: the copy has only the one inside.
        #expect(try t.metadata.lookup(sub, try name("c")).nlink == 1)
        #expect(try t.metadata.getattr(made.root).nlink == before.attributes.nlink)
        #expect(try t.metadata.lookup(made.root, try name("..")).ino == 1)
        // Every block of the tree's files has two owners.
        let records = try t.metadata.sharedBlockRecords()
        #expect(records.reduce(0) { $0 + $1.length } == 6 && records.allSatisfy { $0.owners == 2 })
        try expectClean(t)
        expectSameTree(before, try describe(t, made.root))
    }

    /// With nothing of the tree owed to the pool the snapshot skips its
    /// write-back pass; dirty files outside the tree are left to the cache.
    @Test func snapshotOfAWrittenBackTreeLeavesOtherDirtyFilesCached() throws {
        let t = try CoreFixture()
        let base = try makeTree(t)
        try t.fs.syncAll()
        let outside = try t.metadata.lookup(1, try name("outside")).ino
        let y = try t.metadata.create(outside, try name("y"), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
        _ = try t.write(y, 0, pattern(Self.block, seed: 9))
        let before = try describe(t, base)
        let made = try t.fs.snapshot(base, into: 1, name: try name("clone"), readOnly: false)
        expectSameTree(before, try describe(t, made.root))
        let cachedY = try #require(t.fs.cachedFiles().first { $0.ino == y })
        #expect(t.fs.cache.holdsDirtyPages(cachedY), "y was written back")
        #expect(try t.read(y, 0, Self.block) == pattern(Self.block, seed: 9))
        try expectClean(t)
    }

    @Test func writesAndUnlinksOnEitherSideLeaveTheOtherAlone() throws {
        let t = try CoreFixture()
        let base = try makeTree(t)
        let made = try t.fs.snapshot(base, into: 1, name: try name("clone"), readOnly: false)
        let sa = try t.metadata.lookup(base, try name("a")).ino, ca = try t.metadata.lookup(made.root, try name("a")).ino
        let original = pattern(3 * Self.block, seed: 1)
        let patch = [UInt8](repeating: 0x5A, count: 300)
        _ = try t.write(ca, 4096 + 10, patch)
        _ = try t.write(sa, 0, [UInt8](repeating: 0x11, count: Self.block))
        try t.fs.syncAll()
        var wantClone = original, wantSource = original
        wantClone.replaceSubrange((4096 + 10)..<(4096 + 310), with: patch)
        wantSource.replaceSubrange(0..<4096, with: [UInt8](repeating: 0x11, count: Self.block))
        #expect(try t.read(ca, 0, original.count) == wantClone)
        #expect(try t.read(sa, 0, original.count) == wantSource)
        try t.metadata.setxattr(ca, Array("user.colour".utf8), Array("red".utf8))
        #expect(try t.metadata.getxattr(sa, Array("user.colour".utf8)) == Array("blue".utf8))
        // Remove the whole source tree: the clone keeps its data, blocks lose an owner each.
        let sub = try t.metadata.lookup(base, try name("sub")).ino
        let deep = try t.metadata.lookup(sub, try name("deep")).ino
        try t.metadata.rmdir(deep, try name("empty"))
        try t.metadata.rmdir(sub, try name("deep"))
        for n in ["c", "link-to-a"] { try t.metadata.unlink(sub, try name(n)) }
        try t.metadata.rmdir(base, try name("sub"))
        for n in ["a", "b", "sym", "fifo", "dev"] { try t.metadata.unlink(base, try name(n)) }
        try t.metadata.rmdir(1, try name("base"))
        // Only c's block is still shared: outside/x keeps the source's c.
        #expect(try t.metadata.sharedBlockRecords().map { [$0.length, $0.owners] } == [[1, 2]])
        #expect(try t.read(ca, 0, original.count) == wantClone)
        let cb = try t.metadata.lookup(made.root, try name("b")).ino
        #expect(try t.read(cb, 0, Self.block * 2) == pattern(Self.block * 3 / 2, seed: 2))
        try expectClean(t)
    }

    @Test func readOnlySnapshotFlagsEveryInodeAndThePool() throws {
        let t = try CoreFixture()
        let base = try makeTree(t)
        let before = try describe(t, base)
        let made = try t.fs.snapshot(base, into: 1, name: try name("ro"), readOnly: true)
        expectSameTree(before, try describe(t, made.root), readOnly: true)
        #expect(t.metadata.pool.superblock.pointee.rocompat_features & PMFS_ROCOMPAT_READONLY_INODES != 0)
        #expect(try t.metadata.getattr(base).readOnly == false)
        // Nothing may be made inside a read-only tree by a snapshot either.
        #expect(throws: Errno.readOnlyFileSystem) { try t.fs.snapshot(base, into: made.root, name: try name("x"), readOnly: false) }
        // A writable clone of a read-only snapshot is writable again, and copies no data block.
        let free = t.metadata.statistics().freeBlocks
        let again = try t.fs.snapshot(made.root, into: 1, name: try name("rw"), readOnly: false)
        #expect(t.metadata.statistics().freeBlocks == free)
        expectSameTree(before, try describe(t, again.root))
        let records = try t.metadata.sharedBlockRecords()
        #expect(records.reduce(0) { $0 + $1.length } == 6 && records.allSatisfy { $0.owners == 3 })
        try expectClean(t)
        #expect(try t.metadata.getattr(made.root).readOnly)
    }

    @Test func refusalsChangeNothing() throws {
        let t = try CoreFixture()
        let base = try makeTree(t)
        let sub = try t.metadata.lookup(base, try name("sub")).ino
        let a = try t.metadata.lookup(base, try name("a")).ino
        try t.fs.syncAll()
        let live = t.metadata.statistics().freeInodes
        #expect(throws: Errno.fileExists) { try t.fs.snapshot(base, into: 1, name: try name("outside"), readOnly: false) }
        #expect(throws: Errno.invalidArgument) { try t.fs.snapshot(base, into: sub, name: try name("loop"), readOnly: false) }
        #expect(throws: Errno.invalidArgument) { try t.fs.snapshot(base, into: base, name: try name("self"), readOnly: false) }
        #expect(throws: Errno.notDirectory) { try t.fs.snapshot(a, into: 1, name: try name("file"), readOnly: false) }
        #expect(throws: Errno.notDirectory) { try t.fs.snapshot(base, into: a, name: try name("x"), readOnly: false) }
        #expect(t.metadata.statistics().freeInodes == live)
        #expect(try t.metadata.sharedBlockRecords().isEmpty)
        // A sibling of the source's parent is fine, and so is the root as source... but for the copy itself.
        _ = try t.fs.snapshot(sub, into: base, name: try name("sub2"), readOnly: false)
        try expectClean(t)
    }

    /// A tree larger than one inode chunk: the table grows inside the one
    /// transaction by whole chunks, not one chunk per inode.
    @Test func largeTreeGrowsTheInodeTableByChunks() throws {
        let t = try CoreFixture()
        let base = try t.metadata.mkdir(1, try name("big"), NewInode(mode: 0o755)).ino
        for d in 0..<10 {
            let dir = try t.metadata.mkdir(base, try name("d\(d)"), NewInode(mode: 0o755)).ino
            for f in 0..<500 {
                let ino = try t.metadata.create(dir, try name("f\(f)"), NewInode(mode: UInt32(S_IFREG) | 0o644)).ino
                if f % 50 == 0 { _ = try t.write(ino, 0, pattern(10, seed: UInt8(f % 200))) }
            }
        }
        let made = try t.fs.snapshot(base, into: 1, name: try name("big2"), readOnly: false)
        #expect(made.inodes == 5011 && made.regularFiles == 5000 && made.sharedBlocks == 100)
        #expect(t.metadata.inodes.chunkCount == 3)   // 1 + 5011 + 5011 inodes: three chunks, no more
        let d7 = try t.metadata.lookup(made.root, try name("d7")).ino
        #expect(try t.read(try t.metadata.lookup(d7, try name("f450")).ino, 0, 20) == pattern(10, seed: 50))
        try expectClean(t)
    }

    @Test func writerGateHoldsChangesWhileClosed() throws {
        let gate = WriterGate()
        let entered = GateCounter(0)
        let release = ConditionLock()
        var open = false
        let first = JoinableThread.spawn {
            gate.pass {
                entered.add(1)
                release.withLock { while !open { release.wait(milliseconds: 10) } }
            }
        }
        while entered.load() == 0 { usleep(1000) }
        var closedRan = false
        let closer = JoinableThread.spawn { gate.closed { closedRan = true } }
        usleep(50_000)
        #expect(!closedRan)                       // waits for the change in flight
        release.withLock { open = true; release.broadcast() }
        closer?.join()
        first?.join()
        #expect(closedRan)
    }
}

/// A counter threads share.
final class GateCounter: @unchecked Sendable {
    private var value: Int
    private let lock = Lock()
    init(_ v: Int) { value = v }
    func add(_ n: Int) { lock.withLock { value += n } }
    func load() -> Int { lock.withLock { value } }
}
