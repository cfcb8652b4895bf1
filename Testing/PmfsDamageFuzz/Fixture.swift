import Glibc
import Logging
import PMFSCore
import PMFSData
import PMFSMetadata

/// The pristine file system every iteration starts from: a pool and a data file
/// on /dev/shm holding a small tree with a bit of every persistent structure —
/// directories (one large enough that its buckets split), files with data
/// (one fragmented into a two-level extent tree, one with preallocated blocks),
/// xattrs, short and long symlinks, a hard link, a long (out-of-line) name, a
/// fifo, and an unlinked-but-open file left on the orphan list.
struct Fixture {
    static let dataBlocks: UInt64 = 4096
    static let poolSize: UInt64 = 24 << 20
    let poolPath: String
    let dataPath: String

    static func make(directory: String) throws -> Fixture {
        let f = Fixture(poolPath: directory + "/pristine.pool", dataPath: directory + "/pristine.data")
        let fd = open(f.dataPath, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        guard fd >= 0, ftruncate(fd, off_t(dataBlocks * 4096)) == 0 else { throw FuzzError("cannot create \(f.dataPath)") }
        close(fd)
        let quiet = Logger(label: "pmfs.fixture", factory: { _ in SwiftLogNoOpLogHandler() })
        let metadata = try MetadataStore.format(poolPath: f.poolPath, options: .init(poolSize: poolSize, dataBlocks: dataBlocks), logger: quiet)
        try DataDeviceHeader(blockSize: 4096, blockCount: dataBlocks, fsUUID: metadata.uuid, dataUUID: metadata.dataUUID).write(to: f.dataPath)
        let device = try DataDevice(path: f.dataPath, engine: .threads, logger: quiet)
        var options = FileDataTier.Options()
        options.cacheBytes = 4 << 20
        let fs = try FileDataTier(metadata: metadata, device: device, options: options, logger: quiet)
        try populate(metadata, fs)
        try fs.shutdown()
        device.close()
        try metadata.close()
        return f
    }

    private static func populate(_ m: MetadataStore, _ fs: FileDataTier) throws {
        let file = NewInode(mode: UInt32(S_IFREG) | 0o644, uid: 1000, gid: 1000)
        let dir = NewInode(mode: UInt32(S_IFDIR) | 0o755, uid: 1000, gid: 1000)
        func write(_ ino: UInt64, _ offset: UInt64, _ count: Int, _ byte: UInt8) throws {
            let bytes = [UInt8](repeating: byte, count: count)
            _ = try bytes.withUnsafeBytes { try fs.write(ino, offset: offset, from: $0) }
        }
        let docs = try m.mkdir(1, FileName("docs"), dir).ino
        let sub = try m.mkdir(docs, FileName("sub"), dir).ino
        let a = try m.create(docs, FileName("a.txt"), file).ino
        try write(a, 0, 3 * 4096 + 100, 0x61)
        try m.setxattr(a, Array("user.color".utf8), Array("blue".utf8))
        try m.setxattr(a, Array("user.shape".utf8), [UInt8](repeating: 0x72, count: 300))
        _ = try m.link(a, newParent: 1, newName: FileName("hard"))
        let deep = try m.create(sub, FileName("deep.bin"), file).ino
        try write(deep, 0, 5 * 4096, 0x64)
        let fragmented = try m.create(1, FileName("frag"), file).ino
        for i in 0..<70 { try write(fragmented, UInt64(i) * 2 * 4096, 4096, UInt8(i)) }
        let prealloc = try m.create(1, FileName("prealloc"), file).ino
        try write(prealloc, 0, 4096, 0x70)
        try fs.fallocate(prealloc, mode: [], offset: 4096, length: 6 * 4096)
        _ = try m.symlink(1, FileName("link"), target: Array("docs/a.txt".utf8), uid: 0, gid: 0)
        _ = try m.symlink(docs, FileName("longlink"), target: [UInt8](repeating: 0x78, count: 200), uid: 0, gid: 0)
        let long = try m.create(1, FileName(String(repeating: "long-name-", count: 8)), file).ino
        try write(long, 0, 10, 0x6c)
        _ = try m.create(1, FileName("fifo"), NewInode(mode: UInt32(S_IFIFO) | 0o600))
        let many = try m.mkdir(1, FileName("many"), dir).ino
        for i in 0..<120 {
            let f = try m.create(many, FileName("entry-\(i)"), file).ino
            if i % 10 == 0 { try write(f, 0, 4096 + i, UInt8(i)) }
        }
        for i in stride(from: 0, to: 120, by: 7) { try m.unlink(many, FileName("entry-\(i)")) }
        _ = try m.mkdir(many, FileName("subdir"), dir)
        try fs.syncAll()
        // Open when the pool closes: stays on the orphan list for the next open.
        let orphan = try m.tmpfile(1, file).ino
        try m.allocateBlocks(orphan, start: 0, count: 2)
    }

    /// A fresh copy of the pristine pool and data file for one iteration.
    func copy(to poolCopy: String, _ dataCopy: String) throws {
        try copyFile(poolPath, poolCopy)
        try copyFile(dataPath, dataCopy)
    }
}

func copyFile(_ from: String, _ to: String) throws {
    let src = open(from, O_RDONLY)
    guard src >= 0 else { throw FuzzError("cannot open \(from)") }
    defer { close(src) }
    let dst = open(to, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
    guard dst >= 0 else { throw FuzzError("cannot create \(to)") }
    defer { close(dst) }
    var buffer = [UInt8](repeating: 0, count: 1 << 20)
    while true {
        let n = buffer.withUnsafeMutableBytes { read(src, $0.baseAddress, $0.count) }
        guard n >= 0 else { throw FuzzError("reading \(from) failed") }
        if n == 0 { return }
        let w = buffer.withUnsafeBytes { Glibc.write(dst, $0.baseAddress, n) }
        guard w == n else { throw FuzzError("writing \(to) failed") }
    }
}

struct FuzzError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
