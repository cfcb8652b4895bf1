import CPMDK
import Glibc
import PMFSCheck
import PMFSConcurrency
import Testing
@testable import PMFSMetadata

/// One class of damage: how to inflict it, and the problem code -n must report.
enum Damage: String, CaseIterable, CustomTestStringConvertible {
    case linkCount, directoryEntryCount, hashChain, entryToFreeInode, unreachableInode, directoryCycle
    case extentOutsideDevice, sharedBlocks, bitmapUsedMarkedFree, bitmapFreeMarkedUsed, leakedObject
    case badSymlink, badXattr, orphanList, unreachableDirectory
    case directoryHardLink, hashChainLoop, superblockDataBlocks, extentTreeKeys, inodeChunksNeverMade
    case sizePastLargestFile

    var testDescription: String { rawValue }

    var expectedCode: String {
        switch self {
        case .linkCount: return "LINK_COUNT"
        case .directoryEntryCount: return "DIR_ENTRY_COUNT"
        case .hashChain: return "DIR_HASH_CHAIN"
        case .entryToFreeInode: return "ENTRY_FREE_INODE"
        case .unreachableInode: return "INODE_UNATTACHED"
        case .directoryCycle: return "DIR_LOOP"
        case .extentOutsideDevice: return "EXTENT_OUT_OF_RANGE"
        case .sharedBlocks: return "BLOCKS_SHARED_UNRECORDED"   // v2: recorded as shared by pass 1c
        case .bitmapUsedMarkedFree: return "BITMAP_USED_MARKED_FREE"
        case .bitmapFreeMarkedUsed: return "BITMAP_FREE_MARKED_USED"
        case .leakedObject: return "OBJECT_LEAKED"
        case .badSymlink: return "SYMLINK_BAD"
        case .badXattr: return "XATTR_BLOB"
        case .orphanList: return "ORPHAN_LIST"
        case .unreachableDirectory: return "DIR_UNREACHABLE"
        case .directoryHardLink: return "DIR_MULTIPLY_LINKED"
        case .hashChainLoop: return "DIR_HASH_CHAIN"
        case .superblockDataBlocks: return "SB_DATA_BLOCKS"
        case .extentTreeKeys: return "EXTENT_TREE"
        case .inodeChunksNeverMade: return "TABLE_CHUNK_COUNT"
        case .sizePastLargestFile: return "INODE_FIELDS"
        }
    }

    func inflict(_ f: CheckFixture, _ raw: RawPool) throws {
        switch self {
        case .linkCount:
            raw.poke(field(try raw.inode(f.a), \.nlink), 7)
        case .directoryEntryCount:
            let d = try raw.directory(f.docs)
            raw.poke(field(d.dir, \.entry_count), d.dir.pointee.entry_count + 1)
        case .hashChain:
            // Splice one bucket's chain onto another bucket: its entries sit on a chain
            // their hashes do not address, and the first bucket's chain is lost.
            let d = try raw.directory(f.many)
            let count = d.dir.pointee.bucket_count
            let from = try (0..<count).first { try d.bucket($0).pointee != 0 }!
            let to = (from + 1) % count
            raw.poke(try d.bucket(to), try d.bucket(from).pointee)
            raw.poke(try d.bucket(from), 0)
        case .entryToFreeInode:
            raw.poke(field(try raw.entry(1, "b.txt"), \.ino), 4000)
        case .unreachableInode:
            // Remove b.txt's only entry, leaving the inode with nlink 1.
            let d = try raw.directory(1)
            try raw.pool.transaction { tx in try d.remove(slot: d.find(FileName("b.txt"))!, in: tx) }
        case .directoryCycle:
            // /docs leaves the root and appears inside its own subdirectory.
            let rootDir = try raw.directory(1)
            let subDir = try raw.directory(f.sub)
            try raw.pool.transaction { tx in
                try rootDir.remove(slot: rootDir.find(FileName("docs"))!, in: tx)
                try subDir.insert(FileName("back"), ino: f.docs, type: .directory, in: tx)
            }
        case .extentOutsideDevice:
            raw.poke(field(try raw.firstExtent(f.b), \.device_block), CheckFixture.dataBlocks + 5)
        case .sharedBlocks:
            raw.poke(field(try raw.firstExtent(f.deep), \.device_block), try raw.firstExtent(f.a).pointee.device_block + 2)
        case .bitmapUsedMarkedFree:
            let block = try raw.firstExtent(f.b).pointee.device_block + 1
            let words = try raw.bitmapWords()
            raw.poke(words + Int(block / 64), words[Int(block / 64)] & ~(1 << (block % 64)))
        case .bitmapFreeMarkedUsed:
            let block = CheckFixture.dataBlocks - 3
            let words = try raw.bitmapWords()
            precondition(words[Int(block / 64)] & (1 << (block % 64)) == 0)
            raw.poke(words + Int(block / 64), words[Int(block / 64)] | (1 << (block % 64)))
        case .leakedObject:
            try raw.pool.transaction { tx in _ = try DirectoryIndex.storeBlob(Array("nobody".utf8), type: PMFS_T_NAME, in: tx) }
        case .badSymlink:
            let blob: UnsafeMutablePointer<pmfs_blob> = try raw.pool.pointer(try raw.inode(f.link).pointee.content_off)
            raw.poke(field(blob, \.length), 5000)
        case .badXattr:
            // The second record's name length becomes 0; the first record survives.
            let off = try raw.inode(f.a).pointee.xattr_off
            let first = 5 + "user.color".utf8.count + "blue".utf8.count
            let bytes = try raw.pool.raw(off, length: 8 + first + 1).assumingMemoryBound(to: UInt8.self)
            raw.poke(bytes + 8 + first, 0)
        case .orphanList:
            // The orphan points at itself: a loop.
            raw.poke(field(try raw.inode(f.orphan), \.orphan_next), f.orphan)
        case .unreachableDirectory:
            // A directory named by nobody, with files inside it.
            let d = try raw.directory(1)
            try raw.pool.transaction { tx in try d.remove(slot: d.find(FileName("many"))!, in: tx) }
        case .directoryHardLink:
            // A second name for /docs/sub, in the root.
            let d = try raw.directory(1)
            try raw.pool.transaction { tx in try d.insert(FileName("alias"), ino: f.sub, type: .directory, in: tx) }
        case .hashChainLoop:
            // A chain's last entry links back to its first.
            let d = try raw.directory(f.many)
            let head = try (0..<d.dir.pointee.bucket_count).lazy.map { try d.bucket($0).pointee }.first { $0 != 0 }!
            var last = try d.slot(head - 1)
            while last.pointee.next != 0 { last = try d.slot(last.pointee.next - 1) }
            raw.poke(field(last, \.next), head)
        case .superblockDataBlocks:
            raw.poke(field(raw.sb, \.data_blocks), 999_999)
        case .extentTreeKeys:
            // The root's first separator drops below every key of its first child.
            let root: UnsafeMutablePointer<pmfs_extent_node> = try raw.pool.pointer(raw.inode(f.fragmented).pointee.content_off)
            precondition(root.pointee.is_leaf == 0)
            raw.poke(element(root, \.keys, 0, as: UInt64.self), 0)
        case .inodeChunksNeverMade:
            // 4,094 chunks that were never made: the count goes down (making
            // them, 1 MiB each, took minutes and failed for want of pool space).
            let table: UnsafeMutablePointer<pmfs_inode_table> = try raw.pool.pointer(raw.sb.pointee.inode_table_off)
            raw.poke(field(table, \.chunk_count), 4095)
        case .sizePastLargestFile:
            // The engine answers EIO for such a file; fsck sets the size from its extents.
            raw.poke(field(try raw.inode(f.b), \.size), 1 << 63)
        }
    }
}

@Suite struct CheckerTests {
    @Test func freshPopulatedPoolIsClean() throws {
        let f = try CheckFixture()
        let before = f.contents()
        let report = try f.check(repair: false)
        #expect(report.problems.map { "\($0.code): \($0.message)" } == [])
        #expect(report.exitCode == 0)
        // Root, docs, sub, many, many/subdir; a.txt, b.txt, deep, link, long, fifo, frag,
        // 128 entries left in /many, the orphan.
        #expect(report.directories == 5)
        #expect(report.inodes == 5 + 7 + 128 + 1)
        #expect(report.usedBlocks == 8 + 3 + 5 + 4 + 70 + 2 + 2 * 15 - 2 * 3)
        #expect(report.summary.hasSuffix("clean"))
        #expect(report.summary.contains("\(report.inodes) inodes, 5 directories"))
        #expect(f.contents() == before)
        // -y on a clean pool changes nothing either.
        #expect(try f.check(repair: true).exitCode == 0)
        #expect(f.contents() == before)
    }

    @Test(arguments: Damage.allCases)
    func detectsAndRepairs(_ damage: Damage) throws {
        let f = try CheckFixture(name: damage.rawValue)
        try f.withRawPool { try damage.inflict(f, $0) }
        let damaged = f.contents()

        let check = try f.check(repair: false)
        #expect(check.exitCode == 4, "\(check.problems)")
        #expect(check.problems.contains { $0.code == damage.expectedCode }, "\(check.problems.map { "\($0.code): \($0.message)" })")
        #expect(check.problems.allSatisfy { !$0.fixed })
        #expect(f.contents() == damaged, "-n changed the pool")

        let repair = try f.check(repair: true)
        if getenv("PMFS_FSCK_TEST_VERBOSE") != nil {
            print("== \(damage): -n\n" + check.problems.map { "  \($0.code): \($0.message)" }.joined(separator: "\n"))
            print("== \(damage): -y\n" + repair.problems.map { "  \($0.code): \($0.message) [\($0.fixed ? "fixed" : "NOT FIXED")]" }.joined(separator: "\n"))
        }
        #expect(repair.exitCode == 1, "\(repair.problems.map { "\($0.code): \($0.message) fixed=\($0.fixed)" })")
        #expect(repair.problems.allSatisfy { $0.fixed })
        #expect(repair.summary.hasSuffix("errors corrected"))

        let again = try f.check(repair: false)
        #expect(again.exitCode == 0, "\(again.problems.map { "\($0.code): \($0.message)" })")

        // The engine opens the repaired pool and works.
        let store = try MetadataStore.open(poolPath: f.path)
        _ = try walkTree(store)
        let file = NewInode(mode: UInt32(S_IFREG) | 0o644)
        let n = try store.create(1, FileName("after-repair"), file)
        try store.allocateBlocks(n.ino, start: 0, count: 16)
        let d = try store.mkdir(1, FileName("after-dir"), NewInode(mode: UInt32(S_IFDIR) | 0o755))
        _ = try store.create(d.ino, FileName("inner"), file)
        try store.rename(1, FileName("after-repair"), d.ino, FileName("moved"))
        try store.unlink(d.ino, FileName("inner"))
        try store.close()
        let final = try f.check(repair: false)
        #expect(final.exitCode == 0, "\(final.problems.map { "\($0.code): \($0.message)" })")
    }

    @Test func badMagicIsAnOperationalError() throws {
        let f = try CheckFixture()
        try f.withRawPool { $0.poke(field($0.sb, \.magic), 0x1234) }
        let before = f.contents()
        for repair in [false, true] {
            let report = try f.check(repair: repair)
            #expect(report.exitCode == 8)
            #expect(report.summary.contains("magic"))
            #expect(report.summary.contains("not a pmfs pool"))
        }
        #expect(f.contents() == before)
    }

    @Test func missingPoolCannotBeOpened() {
        #expect(throws: CheckError.self) {
            try FileSystemChecker(poolPath: "/dev/shm/pmfs-fsck-no-such-pool-\(getpid())").run(CheckOptions())
        }
    }

    @Test func repairedDirectoriesKeepTheirEntries() throws {
        // A broken chain is rebuilt from the slots: every name still looks up, and
        // readdir cookies (slot positions) are unchanged.
        let f = try CheckFixture()
        var before = try MetadataStore.open(poolPath: f.path)
        let listing = try before.readdir(f.many, cookie: 0, limit: 1000)
        try before.close()
        try f.withRawPool { try Damage.hashChain.inflict(f, $0) }
        #expect(try f.check(repair: true).exitCode == 1)
        before = try MetadataStore.open(poolPath: f.path)
        #expect(try before.readdir(f.many, cookie: 0, limit: 1000) == listing)
        for e in listing where e.name.first != 0x2E {
            #expect(try before.lookup(f.many, FileName(bytes: e.name)).ino == e.ino)
        }
        try before.close()
    }

    @Test func rebuiltExtentTreeMapsTheSameBlocks() throws {
        let f = try CheckFixture()
        var store = try MetadataStore.open(poolPath: f.path)
        let before = try store.mapBlocks(f.fragmented, start: 0, count: 200)
        try store.close()
        try f.withRawPool { try Damage.extentTreeKeys.inflict(f, $0) }
        #expect(try f.check(repair: true).exitCode == 1)
        store = try MetadataStore.open(poolPath: f.path)
        #expect(try store.mapBlocks(f.fragmented, start: 0, count: 200) == before)
        #expect(try store.getattr(f.fragmented).blocks == 70 * 8)
        // The engine can keep changing the rebuilt tree.
        try store.punchBlocks(f.fragmented, start: 10, count: 50)
        try store.allocateBlocks(f.fragmented, start: 0, count: 200)
        try store.close()
        #expect(try f.check(repair: false).exitCode == 0)
    }

    @Test func unreachableFilesLandInLostAndFound() throws {
        let f = try CheckFixture()
        try f.withRawPool { try Damage.unreachableInode.inflict(f, $0) }
        #expect(try f.check(repair: true).exitCode == 1)
        let store = try MetadataStore.open(poolPath: f.path)
        let lf = try store.lookup(1, FileName("lost+found"))
        #expect(lf.type == .directory)
        let found = try store.lookup(lf.ino, FileName("#\(f.b)"))
        #expect(found.ino == f.b && found.nlink == 1)
        #expect(try store.mapBlocks(f.b, start: 0, count: 5).allSatisfy { $0.deviceBlock != nil })
        try store.close()
    }

    @Test func progressIsReported() throws {
        let f = try CheckFixture()
        // The checker calls back on the caller's thread, during run().
        final class Lines: @unchecked Sendable { var items: [String] = [] }
        let lines = Lines()
        let report = try FileSystemChecker(poolPath: f.path).run(CheckOptions(repair: false, progress: { lines.items.append($0) }))
        #expect(report.exitCode == 0)
        #expect(lines.items.contains { $0.hasPrefix("Pass 1") })
        #expect(lines.items.contains { $0.hasPrefix("Pass 6") })
    }
}


/// A large pool, only when PMFS_FSCK_BIG=N (files) is set: times the check and
/// shows the progress lines. Not part of the default run (it takes a while).
@Suite struct LargePoolTests {
    @Test(.enabled(if: getenv("PMFS_FSCK_BIG") != nil))
    func largePoolChecksCleanWithProgress() throws {
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        let files = Int(String(cString: getenv("PMFS_FSCK_BIG")!)) ?? 200_000
        let path = "/dev/shm/pmfs-fsck-big-\(getpid()).pool"
        defer { unlink(path) }
        let store = try MetadataStore.format(poolPath: path, options: .init(poolSize: UInt64(files) * 1200 + (64 << 20), dataBlocks: 1 << 20))
        let file = NewInode(mode: UInt32(S_IFREG) | 0o644)
        var dir: UInt64 = 1
        for i in 0..<files {
            if i % 10_000 == 0 { dir = try store.mkdir(1, FileName("d\(i)"), NewInode(mode: UInt32(S_IFDIR) | 0o755)).ino }
            let f = try store.create(dir, FileName("file-\(i)"), file)
            if i % 4 == 0 { try store.allocateBlocks(f.ino, start: 0, count: 1) }
        }
        try store.close()
        let start = monotonicNanoseconds()
        let report = try FileSystemChecker(poolPath: path).run(CheckOptions(progress: { print($0) }))
        print(report.summary, "in", Double(nanosecondsSince(start)) / 1e9, "s")
        #expect(report.exitCode == 0, "\(report.problems.prefix(10).map(\.message))")
    }
}
