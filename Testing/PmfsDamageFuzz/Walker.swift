import Glibc
import Logging
import PMFSCore
import PMFSData
import PMFSMetadata
import SystemPackage

/// The child's work: open the (damaged) file system as pmfsd does — the data
/// device header checked against the pool, the engine, the data device, the
/// core — then walk the whole tree: list every directory, look up and stat
/// every entry, read every xattr, symlink and file (whole), seek in files, and
/// try a write to each file and a create, mkdir, rename and unlink in each
/// directory. Errors are answers (EIO for damage); only a trap or a hang is a
/// failure, and the parent sees those from outside.
final class Walker {
    let metadata: MetadataStore
    let fs: FileDataTier
    /// Part of the names this walk creates, so a later walk's do not collide.
    let tag: String
    var entries = 0
    var errors: [String: Int] = [:]
    var firstErrors: [String] = []
    var visited = Set<UInt64>()

    init(metadata: MetadataStore, fs: FileDataTier, tag: String) {
        self.metadata = metadata
        self.fs = fs
        self.tag = tag
    }

    func attempt<T>(_ what: String, _ body: () throws -> T) -> T? {
        do { return try body() } catch {
            let key = "\(error)".hasPrefix("inode") || "\(error)".hasPrefix("pool is damaged") ? "damage" : "\(error)"
            errors[key, default: 0] += 1
            if firstErrors.count < 5 { firstErrors.append("\(what): \(error)") }
            return nil
        }
    }

    func walk(_ dir: UInt64, depth: Int) {
        guard depth < 64, visited.insert(dir).inserted else { return }
        var cookie: UInt64 = 0
        for _ in 0..<1000 {
            guard let batch = attempt("readdir \(dir)", { try metadata.readdir(dir, cookie: cookie, limit: 64) }), !batch.isEmpty else { break }
            for e in batch {
                cookie = e.nextCookie
                if e.name == [0x2E] || e.name == [0x2E, 0x2E] { continue }
                entries += 1
                guard let name = try? FileName(bytes: e.name) else { continue }
                guard let a = attempt("lookup \(dir)/\(name)", { try metadata.lookup(dir, name) }) else { continue }
                _ = attempt("getattr \(a.ino)") { try fs.getattr(a.ino) }
                if let names = attempt("listxattr \(a.ino)", { try metadata.listxattr(a.ino) }) {
                    for n in names { _ = attempt("getxattr \(a.ino)") { try metadata.getxattr(a.ino, n) } }
                }
                switch a.type {
                case .directory: walk(a.ino, depth: depth + 1)
                case .symbolicLink: _ = attempt("readlink \(a.ino)") { try metadata.readlink(a.ino) }
                case .regular: readAndWrite(a.ino)
                default: break
                }
                changeEntry(dir, name, a)
            }
        }
        changeDirectory(dir)
    }

    func readAndWrite(_ ino: UInt64) {
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var offset: UInt64 = 0
        // Whole files, up to what a small tree can hold (a damaged size may be huge).
        while offset < 64 << 20 {
            guard let n = attempt("read \(ino)@\(offset)", { try buffer.withUnsafeMutableBytes { try fs.read(ino, offset: offset, into: $0) } }), n > 0 else { break }
            offset += UInt64(n)
        }
        // ENXIO (no data past the offset: an empty or all-hole file) is an answer, not an error.
        _ = attempt("seek data \(ino)") { do { _ = try fs.seek(ino, from: 0, to: .data) } catch Errno.noSuchAddressOrDevice {} }
        _ = attempt("seek hole \(ino)") { do { _ = try fs.seek(ino, from: 0, to: .hole) } catch Errno.noSuchAddressOrDevice {} }
        let bytes = [UInt8](repeating: 0x57, count: 5000)
        _ = attempt("write \(ino)") { try bytes.withUnsafeBytes { try fs.write(ino, offset: 4000, from: $0) } }
        _ = attempt("append \(ino)") { try bytes.withUnsafeBytes { try fs.write(ino, offset: offset, from: $0) } }
        _ = attempt("fsync \(ino)") { try fs.fsync(ino) }
    }

    /// Changes that free what the entry's inode owns (the old xattr blob,
    /// blocks past a new size, a symlink's target, the inode itself), so frees
    /// of damaged offsets are tried too. Every fourth file and every symlink.
    func changeEntry(_ dir: UInt64, _ name: FileName, _ a: InodeAttributes) {
        _ = attempt("setxattr \(a.ino)") { try metadata.setxattr(a.ino, Array("user.walk".utf8), Array(tag.utf8)) }
        switch a.type {
        case .regular where a.ino % 4 == 0:
            _ = attempt("truncate \(a.ino)") { try fs.setattr(a.ino, AttributeChanges(size: a.size / 2)) }
            _ = attempt("unlink \(dir)/\(name)") { try metadata.unlink(dir, name) }
        case .regular:
            _ = attempt("truncate \(a.ino)") { try fs.setattr(a.ino, AttributeChanges(size: a.size / 2)) }
        case .symbolicLink, .fifo:
            _ = attempt("unlink \(dir)/\(name)") { try metadata.unlink(dir, name) }
        default: break
        }
    }

    func changeDirectory(_ dir: UInt64) {
        let file = NewInode(mode: UInt32(S_IFREG) | 0o644)
        guard let created = attempt("create in \(dir)", { try metadata.create(dir, FileName("fuzz-new-\(tag)"), file) }) else { return }
        _ = attempt("write new \(created.ino)") { try [UInt8](repeating: 1, count: 100).withUnsafeBytes { try fs.write(created.ino, offset: 0, from: $0, sync: .data) } }
        _ = attempt("setxattr \(created.ino)") { try metadata.setxattr(created.ino, Array("user.fuzz".utf8), [1, 2, 3]) }
        _ = attempt("mkdir in \(dir)") { try metadata.mkdir(dir, FileName("fuzz-dir-\(tag)"), NewInode(mode: UInt32(S_IFDIR) | 0o755)) }
        _ = attempt("rmdir in \(dir)") { try metadata.rmdir(dir, FileName("fuzz-dir-\(tag)")) }
        _ = attempt("rename in \(dir)") { try metadata.rename(dir, FileName("fuzz-new-\(tag)"), dir, FileName("fuzz-renamed-\(tag)")) }
        _ = attempt("unlink in \(dir)") { try metadata.unlink(dir, FileName("fuzz-renamed-\(tag)")) }
    }

    /// Opens the file system at `pool`/`data` as pmfsd does and walks it all.
    /// Returns a one-line summary; throws only if the file system did not open.
    static func run(pool: String, data: String, tag: String) throws -> String {
        let quiet = Logger(label: "pmfs.walk", factory: { _ in SwiftLogNoOpLogHandler() })
        guard let header = try DataDeviceHeader.read(from: data) else { throw FuzzError("no data device header") }
        let metadata = try MetadataStore.open(poolPath: pool, dataDevice: header, logger: quiet)
        let device = try DataDevice(path: data, engine: .auto, logger: quiet)
        var options = FileDataTier.Options()
        options.cacheBytes = 4 << 20
        let fs = try FileDataTier(metadata: metadata, device: device, options: options, logger: quiet)
        let walker = Walker(metadata: metadata, fs: fs, tag: tag)
        walker.walk(1, depth: 0)
        _ = walker.attempt("statistics") { metadata.statistics() }
        _ = walker.attempt("shutdown") { try fs.shutdown() }
        device.close()
        _ = walker.attempt("close") { try metadata.close() }
        let errs = walker.errors.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: ", ")
        return "walked \(walker.entries) entries; errors: \(errs.isEmpty ? "none" : errs)" +
            (walker.firstErrors.isEmpty ? "" : "; first: \(walker.firstErrors.joined(separator: " | "))")
    }
}
