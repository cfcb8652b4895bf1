import CLinux
import Glibc

/// The client's work when pmfsd itself serves the damaged pool: the same walk
/// as `Walker`, through the host mount with system calls, so every answer
/// comes through pmfsd's request path (FUSE decoding, sessions, handles,
/// exports) and not only the engine. Errors are answers (EIO for damage);
/// only pmfsd dying or hanging is a failure, and the parent sees those.
final class MountWalker {
    let tag: String
    var entries = 0
    var errors: [String: Int] = [:]
    var firstErrors: [String] = []
    var visited = Set<UInt64>()

    init(tag: String) { self.tag = tag }

    /// Runs a system call's wrapper; a negative result counts its errno.
    @discardableResult
    func attempt(_ what: String, _ body: () -> Int) -> Int? {
        let r = body()
        guard r < 0 else { return r }
        let e = errno
        let key = e == EIO ? "damage" : String(cString: strerror(e))
        errors[key, default: 0] += 1
        if firstErrors.count < 5 { firstErrors.append("\(what): \(String(cString: strerror(e)))") }
        return nil
    }

    func walk(_ dir: RawPath, depth: Int) {
        var st = stat()
        guard depth < 64, attempt("stat \(dir)", { Int(dir.c { lstat($0, &st) }) }) != nil, visited.insert(UInt64(st.st_ino)).inserted else { return }
        for name in list(dir) {
            entries += 1
            let path = dir.appending(name)
            guard attempt("lstat \(path)", { Int(path.c { lstat($0, &st) }) }) != nil else { continue }
            readXattrs(path)
            switch st.st_mode & S_IFMT {
            case S_IFDIR: walk(path, depth: depth + 1)
            case S_IFLNK:
                var target = [CChar](repeating: 0, count: 4096)
                attempt("readlink \(path)") { path.c { readlink($0, &target, target.count) } }
            case S_IFREG: readAndWrite(path, size: UInt64(max(0, st.st_size)), inode: UInt64(st.st_ino))
            default: break
            }
            changeEntry(path, mode: st.st_mode, size: UInt64(max(0, st.st_size)), inode: UInt64(st.st_ino))
        }
        changeDirectory(dir)
    }

    /// The names in `dir` as the kernel gave them, bytes and all (at most
    /// 100,000: a damaged directory may loop).
    func list(_ dir: RawPath) -> [[UInt8]] {
        guard let d = dir.c({ opendir($0) }) else { attempt("opendir \(dir)") { -1 }; return [] }
        defer { closedir(d) }
        var names: [[UInt8]] = []
        errno = 0
        while names.count < 100_000, let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { Array($0.prefix(while: { $0 != 0 })) }
            if name != [0x2E] && name != [0x2E, 0x2E] { names.append(name) }
        }
        if errno != 0 { attempt("readdir \(dir)") { -1 } }
        return names
    }

    func readXattrs(_ path: RawPath) {
        var names = [CChar](repeating: 0, count: 64 << 10)
        guard let n = attempt("listxattr \(path)", { path.c { clinux_llistxattr($0, &names, names.count) } }) else { return }
        var value = [UInt8](repeating: 0, count: 64 << 10)
        for name in names[..<n].split(separator: 0) {
            let key = Array(name) + [0]
            attempt("getxattr \(path) \(RawPath(name.map { UInt8(bitPattern: $0) }))") {
                path.c { p in key.withUnsafeBufferPointer { clinux_lgetxattr(p, $0.baseAddress!, &value, value.count) } }
            }
        }
    }

    func readAndWrite(_ path: RawPath, size: UInt64, inode: UInt64) {
        let fd = path.c { open($0, O_RDWR) }
        guard fd >= 0 else { attempt("open \(path)") { -1 }; return }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var offset = 0
        // Whole files, up to what a small tree can hold (a damaged size may be huge).
        while offset < 64 << 20 {
            guard let n = attempt("read \(path)@\(offset)", { pread(fd, &buffer, buffer.count, off_t(offset)) }), n > 0 else { break }
            offset += n
        }
        for whence in [clinux_seek_data, clinux_seek_hole] {
            // ENXIO (no data past the offset) is an answer, not an error.
            if lseek(fd, 0, whence) < 0 && errno != ENXIO { attempt("seek \(path)") { -1 } }
        }
        let bytes = [UInt8](repeating: 0x57, count: 5000)
        attempt("write \(path)") { pwrite(fd, bytes, bytes.count, 4000) }
        attempt("append \(path)") { pwrite(fd, bytes, bytes.count, off_t(offset)) }
        attempt("fsync \(path)") { Int(fsync(fd)) }
        attempt("setxattr \(path)") { Int(clinux_fsetxattr(fd, "user.walk", tag, tag.utf8.count, 0)) }
        attempt("truncate \(path)") { Int(ftruncate(fd, off_t(size / 2))) }
    }

    /// Frees what an entry owns (the inode, a symlink's target), so frees of
    /// damaged offsets are tried through the mount too: every fourth file,
    /// every symlink and fifo.
    func changeEntry(_ path: RawPath, mode: mode_t, size: UInt64, inode: UInt64) {
        switch mode & S_IFMT {
        case S_IFREG where inode % 4 == 0, S_IFLNK, S_IFIFO: attempt("unlink \(path)") { Int(path.c { unlink($0) }) }
        default: break
        }
    }

    func changeDirectory(_ dir: RawPath) {
        let new = dir.appending(Array("fuzz-new-\(tag)".utf8)), renamed = dir.appending(Array("fuzz-renamed-\(tag)".utf8))
        let sub = dir.appending(Array("fuzz-dir-\(tag)".utf8))
        let fd = new.c { open($0, O_CREAT | O_RDWR | O_EXCL, 0o644) }
        guard fd >= 0 else { attempt("create \(new)") { -1 }; return }
        let bytes = [UInt8](repeating: 1, count: 100)
        attempt("write \(new)") { write(fd, bytes, bytes.count) }
        attempt("fdatasync \(new)") { Int(fdatasync(fd)) }
        close(fd)
        attempt("mkdir \(sub)") { Int(sub.c { mkdir($0, 0o755) }) }
        attempt("rmdir \(sub)") { Int(sub.c { rmdir($0) }) }
        attempt("rename \(new)") { Int(new.c { from in renamed.c { rename(from, $0) } }) }
        attempt("unlink \(renamed)") { Int(renamed.c { unlink($0) }) }
    }

    /// Walks the tree mounted at `root`; a one-line summary in `Walker.run`'s form.
    static func run(root: String, tag: String) -> String {
        let walker = MountWalker(tag: tag)
        walker.walk(RawPath(Array(root.utf8)), depth: 0)
        var fs = statvfs()
        walker.attempt("statfs") { Int(statvfs(root, &fs)) }
        let errs = walker.errors.sorted { $0.key < $1.key }.map { "\($0.key)×\($0.value)" }.joined(separator: ", ")
        return "walked \(walker.entries) entries through the mount; errors: \(errs.isEmpty ? "none" : errs)" +
            (walker.firstErrors.isEmpty ? "" : "; first: \(walker.firstErrors.joined(separator: " | "))")
    }
}

/// A path as the kernel holds it: bytes, not necessarily UTF-8 (a damaged or
/// repaired directory may hold any name; a String would replace such bytes
/// and name another file).
struct RawPath: CustomStringConvertible {
    let bytes: [UInt8]

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    func appending(_ name: [UInt8]) -> RawPath { RawPath(bytes + [UInt8(ascii: "/")] + name) }

    /// Calls `body` with the path as a C string.
    func c<R>(_ body: (UnsafePointer<CChar>) -> R) -> R {
        (bytes + [0]).withUnsafeBufferPointer { $0.withMemoryRebound(to: CChar.self) { body($0.baseAddress!) } }
    }

    /// For messages only: invalid bytes shown as U+FFFD.
    var description: String { String(decoding: bytes, as: UTF8.self) }
}
