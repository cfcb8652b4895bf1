import CPMDK
import Glibc
import PMFSCheck
import Testing
@testable import PMFSMetadata

/// A populated pool on /dev/shm (emulated PM: PMEM_IS_PMEM_FORCE=1) with a bit
/// of everything the checker looks at, and the numbers of the inodes the
/// damage cases aim at. Removed on deinit.
final class CheckFixture {
    let path: String
    static let dataBlocks: UInt64 = 4096

    // Inodes made by populate().
    var docs: UInt64 = 0          // /docs
    var sub: UInt64 = 0           // /docs/sub
    var many: UInt64 = 0          // /many: 150 entries, so its buckets split
    var a: UInt64 = 0             // /docs/a.txt (+ /hard): xattrs, two extents
    var b: UInt64 = 0             // /b.txt: one extent
    var deep: UInt64 = 0          // /docs/sub/deep.bin: one extent
    var link: UInt64 = 0          // /link -> docs/a.txt
    var orphan: UInt64 = 0        // an O_TMPFILE inode left on the orphan list
    var fragmented: UInt64 = 0    // /frag: 70 one-block extents, a two-level tree

    init(name: String = #function) throws {
        setenv("PMEM_IS_PMEM_FORCE", "1", 1)
        setenv("PMEMOBJ_CONF", "sds.at_create=0", 1)
        let tag = name.filter { $0.isLetter || $0.isNumber }.prefix(40)
        path = "/dev/shm/pmfs-fsck-\(getpid())-\(tag)-\(UInt32.random(in: 0...UInt32.max)).pool"
        let store = try MetadataStore.format(poolPath: path, options: .init(poolSize: 24 << 20, dataBlocks: Self.dataBlocks))
        try populate(store)
        try store.close()
    }

    deinit { unlink(path) }

    private func populate(_ s: MetadataStore) throws {
        let file = NewInode(mode: UInt32(S_IFREG) | 0o644, uid: 1000, gid: 1000)
        let dir = NewInode(mode: UInt32(S_IFDIR) | 0o755, uid: 1000, gid: 1000)
        docs = try s.mkdir(1, FileName("docs"), dir).ino
        sub = try s.mkdir(docs, FileName("sub"), dir).ino
        many = try s.mkdir(1, FileName("many"), dir).ino
        a = try s.create(docs, FileName("a.txt"), file).ino
        try s.allocateBlocks(a, start: 0, count: 8)
        try s.allocateBlocks(a, start: 100, count: 3, unwritten: true)
        try s.setxattr(a, Array("user.color".utf8), Array("blue".utf8))
        try s.setxattr(a, Array("user.shape".utf8), Array("round".utf8))
        _ = try s.link(a, newParent: 1, newName: FileName("hard"))
        b = try s.create(1, FileName("b.txt"), file).ino
        try s.allocateBlocks(b, start: 0, count: 5)
        deep = try s.create(sub, FileName("deep.bin"), file).ino
        try s.allocateBlocks(deep, start: 0, count: 4)
        link = try s.symlink(1, FileName("link"), target: Array("docs/a.txt".utf8), uid: 0, gid: 0).ino
        _ = try s.create(1, FileName(String(repeating: "long-name-", count: 8)), file)
        _ = try s.create(1, FileName("fifo"), NewInode(mode: UInt32(S_IFIFO) | 0o600))
        for i in 0..<150 {
            let f = try s.create(many, FileName("entry-\(i)"), file)
            if i % 10 == 0 { try s.allocateBlocks(f.ino, start: 0, count: 2) }
        }
        for i in stride(from: 0, to: 150, by: 7) { try s.unlink(many, FileName("entry-\(i)")) }
        _ = try s.mkdir(many, FileName("subdir"), dir)
        fragmented = try s.create(1, FileName("frag"), file).ino
        for i in 0..<70 { try s.allocateBlocks(fragmented, start: UInt64(i) * 2, count: 1) }
        orphan = try s.tmpfile(1, file).ino
        try s.allocateBlocks(orphan, start: 0, count: 2)
    }

    // MARK: raw access, for damage

    /// Opens the pool directly (no engine checks) for `body`, then closes it.
    func withRawPool(_ body: (RawPool) throws -> Void) throws {
        let pool = try PersistentPool.open(path: path)
        defer { pool.close() }
        try body(RawPool(pool: pool))
    }

    /// The pool file's bytes past the libpmemobj header (which every open rewrites).
    func contents() -> [UInt8] {
        let fd = open(path, O_RDONLY)
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        var bytes = [UInt8](repeating: 0, count: Int(st.st_size) - 8192)
        _ = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 8192) }
        return bytes
    }

    func check(repair: Bool) throws -> CheckReport {
        try FileSystemChecker(poolPath: path).run(CheckOptions(repair: repair))
    }
}

/// Engine internals over a raw pool: enough to aim damage precisely.
struct RawPool {
    let pool: PersistentPool
    var sb: UnsafeMutablePointer<pmfs_superblock> { pool.superblock }

    func inode(_ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_inode> {
        try InodeTable(pool: pool, tableOffset: sb.pointee.inode_table_off).slot(ino)!
    }

    func directory(_ ino: UInt64) throws -> DirectoryIndex {
        try DirectoryIndex(pool: pool, offset: inode(ino).pointee.content_off, seed: sb.pointee.hash_seed)
    }

    func entry(_ dir: UInt64, _ name: String) throws -> UnsafeMutablePointer<pmfs_dirent> {
        let d = try directory(dir)
        return try d.slot(d.find(FileName(name))!)
    }

    /// The first leaf extent of a file whose tree is one leaf.
    func firstExtent(_ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_extent> {
        let node: UnsafeMutablePointer<pmfs_extent_node> = try pool.pointer(inode(ino).pointee.content_off)
        precondition(node.pointee.is_leaf != 0)
        return element(node, \.u, 0, as: pmfs_extent.self)
    }

    func bitmapWords() throws -> UnsafeMutablePointer<UInt64> {
        let bm: UnsafeMutablePointer<pmfs_space_bitmap> = try pool.pointer(sb.pointee.space_bitmap_off)
        return (UnsafeMutableRawPointer(bm) + MemoryLayout<pmfs_space_bitmap>.size).assumingMemoryBound(to: UInt64.self)
    }

    /// A plain store, outside any transaction, made durable.
    func poke<T>(_ p: UnsafeMutablePointer<T>, _ value: T) {
        p.pointee = value
        pool.persist(p, MemoryLayout<T>.size)
    }
}

/// Walks the whole namespace through the engine's public API: every entry
/// looks up, stats, lists; symlinks read; xattrs list.
func walkTree(_ store: MetadataStore, _ dir: UInt64 = 1, depth: Int = 0) throws -> Int {
    var count = 0
    var cookie: UInt64 = 0
    while true {
        let batch = try store.readdir(dir, cookie: cookie, limit: 64)
        if batch.isEmpty { break }
        for e in batch {
            cookie = e.nextCookie
            if e.name == [0x2E] || e.name == [0x2E, 0x2E] { continue }
            count += 1
            let a = try store.lookup(dir, FileName(bytes: e.name))
            #expect(a.ino == e.ino)
            #expect(a.type == e.type)
            _ = try store.listxattr(a.ino)
            switch a.type {
            case .directory:
                #expect(depth < 32)
                count += try walkTree(store, a.ino, depth: depth + 1)
            case .symbolicLink: _ = try store.readlink(a.ino)
            case .regular: _ = try store.mapBlocks(a.ino, start: 0, count: 1 << 20)
            default: break
            }
        }
    }
    return count
}
