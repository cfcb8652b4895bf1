import ArgumentParser
import CPMDK
import Glibc
import PMFSControl
import PMFSMetadata
import struct SystemPackage.Errno

/// pmfs-inspect: reads a pmfs pool without serving it. The pool is opened in
/// MetadataStore's inspect mode, which writes nothing to it; the data device is
/// only read.
struct PmfsInspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pmfs-inspect",
        abstract: "Look inside a pmfs file system without serving it (changes nothing).",
        discussion: """
            Paths are resolved from the root directory of the file system, one lookup per \
            component; a relative path is taken from the root too. No symbolic link is followed, \
            except by 'cat', which follows them as a reader would. The pool must not be open in \
            another process (PMDK locks it).
            """,
        subcommands: [Info.self, Df.self, Du.self, Ls.self, Stat.self, Tree.self, Cat.self, Xattr.self])
}

struct PoolOptions: ParsableArguments {
    @Option(help: "Path of the pmfs metadata pool.")
    var pool: String

    /// Opens the pool for reading, runs `body`, closes it; every error ends the
    /// program with one line and exit code 1.
    func withStore(_ body: (MetadataStore) throws -> Void) {
        let store: MetadataStore
        do { store = try MetadataStore.open(poolPath: pool, mode: .inspect) } catch { fail(describePoolError(error, pool)) }
        do {
            try body(store)
        } catch {
            try? store.close()
            fail(describe(error))
        }
        try? store.close()
    }
}

// MARK: info

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the superblock and the space in use.")
    @OptionGroup var options: PoolOptions
    @Option(help: "Also check that this data device belongs to the pool (exit 1 if not).") var data: String?

    func run() throws {
        // The superblock is read raw first, so a pool the engine refuses (newer
        // version, damage) still shows what it claims to be.
        let sb: pmfs_superblock
        do { sb = try readSuperblock(options.pool) } catch { fail(describePoolError(error, options.pool)) }
        let label = withUnsafeBytes(of: sb.label) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        let state: String
        switch sb.state {
        case PMFS_STATE_CLEAN: state = "clean"
        case PMFS_STATE_IN_USE: state = "in use (being served, or not closed cleanly)"
        default: state = "unknown (\(sb.state))"
        }
        print("pool:             \(options.pool)")
        print("UUID:             \(formatUUID(withUnsafeBytes(of: sb.uuid) { Array($0) }))")
        print("label:            \(label.isEmpty ? "(none)" : label)")
        print("format version:   \(sb.format_version)")
        print("features:         incompat 0x\(String(sb.incompat_features, radix: 16)), ro-compat 0x\(String(sb.rocompat_features, radix: 16))")
        print("state:            \(state)")
        print("mount count:      \(sb.mount_count)")
        print("unclean opens:    \(sb.unclean_count)")
        print("created:          \(AttributeText.time(sb.created.sec, sb.created.nsec))")
        print("last opened:      \(sb.last_open.sec == 0 ? "never" : AttributeText.time(sb.last_open.sec, sb.last_open.nsec))")
        print("block size:       \(sb.block_size)")
        print("data blocks:      \(sb.data_blocks)")
        print("data device UUID: \(formatUUID(withUnsafeBytes(of: sb.data_uuid) { Array($0) }))")
        options.withStore { store in
            let s = store.statistics()
            print("free blocks:      \(s.freeBlocks) of \(s.totalBlocks) usable (\(human(s.freeBlocks * UInt64(s.blockSize))) free)")
            print("inodes:           \(s.totalInodes - s.freeInodes) in use, \(s.freeInodes) free (estimated from pool space)")
            print("orphan inodes:    \(try store.orphans().count)")
            print("pool size:        \(s.poolBytes) bytes (\(human(s.poolBytes)))")
            if let data {
                guard let header = try DataDeviceHeader.read(from: data) else {
                    throw Message("data device \(data) has no pmfs header")
                }
                try store.checkDataDevice(header)
                print("data device:      \(data): matches (\(header.blockCount) blocks)")
            }
        }
    }
}

/// The pool's root object, read through libpmemobj without the engine.
func readSuperblock(_ path: String) throws -> pmfs_superblock {
    guard let pop = pmemobj_open(path, PMFS_LAYOUT_NAME) else {
        let e = errno
        if e == EINVAL, access(path, R_OK) == 0 { throw PoolError.notPMFS(path: path) }
        throw PoolError.cannotOpen(path: path, reason: String(cString: strerror(e)))
    }
    defer { pmemobj_close(pop) }
    // pmemobj_root would allocate a missing root object; check its size first.
    guard pmemobj_root_size(pop) >= MemoryLayout<pmfs_superblock>.size,
          let p = pmemobj_direct(pmemobj_root(pop, MemoryLayout<pmfs_superblock>.size)) else {
        throw PoolError.notPMFS(path: path)
    }
    let sb = p.assumingMemoryBound(to: pmfs_superblock.self).pointee
    guard sb.magic == PMFS_MAGIC else { throw PoolError.notPMFS(path: path) }
    return sb
}

// MARK: df

struct Df: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show blocks and inodes: total, used, free.")
    @OptionGroup var options: PoolOptions

    func run() throws {
        options.withStore { store in
            let s = store.statistics()
            let usedBlocks = s.totalBlocks - s.freeBlocks
            let usedInodes = s.totalInodes - s.freeInodes
            let rows: [[String]] = [
                ["", "total", "used", "free", "use%"],
                ["blocks", "\(s.totalBlocks)", "\(usedBlocks)", "\(s.freeBlocks)", percent(usedBlocks, s.totalBlocks)],
                ["inodes", "\(s.totalInodes)", "\(usedInodes)", "\(s.freeInodes)", percent(usedInodes, s.totalInodes)],
            ]
            printTable(rows)
            print("block size \(s.blockSize) bytes: \(human(s.totalBlocks * UInt64(s.blockSize))) total, \(human(s.freeBlocks * UInt64(s.blockSize))) free; pool \(human(s.poolBytes)), \(human(s.poolObjectBytes)) in objects")
            try printSharing(store, blockSize: UInt64(s.blockSize))
        }
    }

    /// Clones: blocks with more than one owner, and what sharing them saves.
    func printSharing(_ store: MetadataStore, blockSize: UInt64) throws {
        let records = try store.sharedBlockRecords()
        let blocks = records.reduce(UInt64(0)) { $0.addingClamped($1.length) }
        let references = records.reduce(UInt64(0)) { $0.addingClamped($1.length.multipliedClamped($1.owners)) }
        guard blocks > 0 else { print("shared blocks: none"); return }
        let saved = references > blocks ? references - blocks : 0     // a damaged count may say fewer
        print("shared blocks: \(blocks) (\(human(blocks.multipliedClamped(blockSize)))) in \(records.count) run(s), \(references) references; "
              + "clones save \(saved) blocks (\(human(saved.multipliedClamped(blockSize))))")
    }

    func percent(_ used: UInt64, _ total: UInt64) -> String {
        guard total > 0 else { return "-" }
        // Rounded up, as df does: any use shows.
        return "\((used * 100 + total - 1) / total)%"
    }
}

// MARK: ls

struct Ls: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List a directory (or show one entry).")
    @OptionGroup var options: PoolOptions
    @Flag(name: .short, help: "Long format: inode, mode, links, owner, size, mtime.") var l = false
    @Flag(name: .short, help: "Include names starting with '.' (and . and ..).") var a = false
    @Argument(help: "Path inside the file system.") var path: String = "/"

    func run() throws {
        options.withStore { store in
            let target = try resolve(store, path, followLinks: false)
            guard target.attributes.type == .directory else {
                try printEntry(store, name: Array(lastComponent(path).utf8), target.attributes)
                return
            }
            for entry in try allEntries(store, target.ino) where a || entry.name.first != 0x2E {
                try printEntry(store, name: entry.name, try store.getattr(entry.ino))
            }
        }
    }

    func printEntry(_ store: MetadataStore, name: [UInt8], _ attrs: InodeAttributes) throws {
        guard l else { print(AttributeText.displayName(name)); return }
        var line = "\(pad(attrs.ino, 8)) \(AttributeText.mode(attrs.mode)) \(pad(attrs.nlink, 3)) \(pad(attrs.uid, 5)) \(pad(attrs.gid, 5)) "
        if attrs.type == .characterDevice || attrs.type == .blockDevice {
            line += pad("\(AttributeText.major(attrs.rdev)), \(AttributeText.minor(attrs.rdev))", 12)
        } else {
            line += pad(attrs.size, 12)
        }
        line += " \(AttributeText.time(attrs.mtime.seconds, attrs.mtime.nanoseconds)) \(AttributeText.displayName(name))"
        if attrs.type == .symbolicLink { line += " -> \(AttributeText.displayName(try store.readlink(attrs.ino)))" }
        print(line)
    }
}

// MARK: stat

struct Stat: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show every attribute of one inode.")
    @OptionGroup var options: PoolOptions
    @Argument(help: "Path inside the file system.") var path: String

    func run() throws {
        options.withStore { store in
            let target = try resolve(store, path, followLinks: false)
            let a = target.attributes
            var file = path
            if a.type == .symbolicLink { file += " -> \(AttributeText.displayName(try store.readlink(a.ino)))" }
            print("      File: \(file)")
            print("      Type: \(AttributeText.typeName(a.mode))")
            print("     Inode: \(a.ino)   Generation: \(a.generation)")
            print("      Mode: \(AttributeText.permissions(a.mode)) (\(AttributeText.mode(a.mode)))   Links: \(a.nlink)")
            print("       Uid: \(a.uid)   Gid: \(a.gid)")
            print("      Size: \(a.size)   Blocks: \(a.blocks) (512-byte units)")
            if a.type == .characterDevice || a.type == .blockDevice {
                print("    Device: \(AttributeText.major(a.rdev)),\(AttributeText.minor(a.rdev))   (rdev \(a.rdev))")
            }
            print("     Flags: 0x\(String(a.flags, radix: 16))")
            print("    Access: \(AttributeText.time(a.atime.seconds, a.atime.nanoseconds))")
            print("    Modify: \(AttributeText.time(a.mtime.seconds, a.mtime.nanoseconds))")
            print("    Change: \(AttributeText.time(a.ctime.seconds, a.ctime.nanoseconds))")
            print("     Birth: \(AttributeText.time(a.btime.seconds, a.btime.nanoseconds))")
            let names = try store.listxattr(a.ino).map(AttributeText.displayName)
            print("    Xattrs: \(names.isEmpty ? "(none)" : names.joined(separator: ", "))")
            if a.type == .regular {
                let blocks = (a.size + UInt64(store.blockSize) - 1) / UInt64(store.blockSize)
                let segments = blocks == 0 ? [] : try store.mapBlocks(a.ino, start: 0, count: blocks)
                let mapped = segments.filter { $0.deviceBlock != nil }
                print("   Extents: \(mapped.count) mapped run(s) within the size")
                let mappedBlocks = mapped.reduce(UInt64(0)) { $0.addingClamped($1.length) }
                let sharedBlocks = mapped.filter { $0.shared }.reduce(UInt64(0)) { $0.addingClamped($1.length) }
                print("    Shared: \(sharedBlocks) of \(mappedBlocks) mapped block(s) shared with clones (copied on write)")
                // The map itself, shortened: enough to see where the data is.
                for s in segments.prefix(16) {
                    let range = "file blocks \(s.fileBlock)..<\(s.fileBlock + s.length)"
                    if let d = s.deviceBlock {
                        print("            \(range) -> device blocks \(d)..<\(d + s.length)\(s.unwritten ? " (unwritten)" : "")\(s.shared ? " (shared)" : "")")
                    } else {
                        print("            \(range): hole")
                    }
                }
                if segments.count > 16 { print("            ... \(segments.count - 16) more") }
            }
        }
    }
}

// MARK: tree

struct Tree: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show a directory tree, with symlink targets.")
    @OptionGroup var options: PoolOptions
    @Argument(help: "Directory to start at.") var path: String = "/"

    func run() throws {
        options.withStore { store in
            let top = try resolve(store, path, followLinks: false)
            print(path)
            var directories = 0, files = 0
            var visited: Set<UInt64> = [top.ino]
            func walk(_ ino: UInt64, _ prefix: String) throws {
                let entries = try allEntries(store, ino).filter { $0.name != [0x2E] && $0.name != [0x2E, 0x2E] }
                for (i, entry) in entries.enumerated() {
                    let last = i == entries.count - 1
                    let attrs = try store.getattr(entry.ino)
                    var line = prefix + (last ? "└── " : "├── ") + AttributeText.displayName(entry.name)
                    switch attrs.type {
                    case .directory: line += "/"
                    case .symbolicLink: line += " -> " + AttributeText.displayName(try store.readlink(entry.ino))
                    default: break
                    }
                    print(line)
                    if attrs.type == .directory {
                        directories += 1
                        // A directory reached twice means a damaged pool; do not loop.
                        guard visited.insert(entry.ino).inserted else {
                            print(prefix + (last ? "    " : "│   ") + "(directory \(entry.ino) seen before: not descending)")
                            continue
                        }
                        try walk(entry.ino, prefix + (last ? "    " : "│   "))
                    } else {
                        files += 1
                    }
                }
            }
            if top.attributes.type == .directory { try walk(top.ino, "") }
            print("\n\(directories) director\(directories == 1 ? "y" : "ies"), \(files) file\(files == 1 ? "" : "s")")
        }
    }
}

// MARK: cat

struct Cat: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a file's contents to stdout, read from the data device.",
        discussion: "Symbolic links are followed. Holes and unwritten extents read as zeros.")
    @OptionGroup var options: PoolOptions
    @Option(help: "Path of the data device (checked against the pool).") var data: String
    @Argument(help: "Path inside the file system.") var path: String

    func run() throws {
        options.withStore { store in
            let target = try resolve(store, path, followLinks: true)
            switch target.attributes.type {
            case .regular: break
            case .directory: throw Message("\(path): Is a directory")
            default: throw Message("\(path): not a regular file")
            }
            guard let header = try DataDeviceHeader.read(from: data) else {
                throw Message("data device \(data) has no pmfs header")
            }
            try store.checkDataDevice(header)
            let fd = Glibc.open(data, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw Message("cannot open data device \(data): \(String(cString: strerror(errno)))") }
            defer { Glibc.close(fd) }
            let blockSize = UInt64(store.blockSize)
            let chunkBlocks: UInt64 = 256
            var buffer = [UInt8](repeating: 0, count: Int(chunkBlocks * blockSize))
            var remaining = target.attributes.size
            var fileBlock: UInt64 = 0
            while remaining > 0 {
                let count = min(chunkBlocks, (remaining + blockSize - 1) / blockSize)
                let bytes = Int(count * blockSize)
                try buffer.withUnsafeMutableBytes { buf in
                    // Zeros first: holes and unwritten extents read as zeros.
                    _ = memset(buf.baseAddress!, 0, bytes)
                    for s in try store.mapBlocks(target.ino, start: fileBlock, count: count) {
                        guard let device = s.deviceBlock, !s.unwritten else { continue }
                        guard device + s.length <= header.blockCount else {
                            throw Message("\(path): block \(s.fileBlock) maps to device block \(device) past the device end (\(header.blockCount))")
                        }
                        let at = Int((s.fileBlock - fileBlock) * blockSize)
                        try readFully(fd, buf.baseAddress! + at, Int(s.length * blockSize), offset: device * blockSize)
                    }
                    let n = Int(min(remaining, UInt64(bytes)))
                    try writeFully(1, UnsafeRawBufferPointer(rebasing: buf[..<n]))
                }
                remaining -= min(remaining, UInt64(bytes))
                fileBlock += count
            }
        }
    }

    func readFully(_ fd: Int32, _ to: UnsafeMutableRawPointer, _ length: Int, offset: UInt64) throws {
        var done = 0
        while done < length {
            let n = pread(fd, to + done, length - done, off_t(offset) + off_t(done))
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { throw Message("reading data device \(data): \(String(cString: strerror(errno)))") }
            guard n > 0 else { throw Message("data device \(data) ends before byte \(offset + UInt64(done))") }
            done += n
        }
    }
}

// MARK: xattr

struct Xattr: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the extended attributes of one inode, names and values.")
    @OptionGroup var options: PoolOptions
    @Argument(help: "Path inside the file system.") var path: String

    func run() throws {
        options.withStore { store in
            let target = try resolve(store, path, followLinks: false)
            for name in try store.listxattr(target.ino) {
                print("\(AttributeText.displayName(name))=\(displayValue(try store.getxattr(target.ino, name)))")
            }
        }
    }

    /// Text in quotes when it is printable UTF-8, else hex (as getfattr -e text / -e hex).
    func displayValue(_ value: [UInt8]) -> String {
        if let text = String(validating: value, as: UTF8.self),
           !text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            return "\"" + text.replacingAll("\\", "\\\\").replacingAll("\"", "\\\"") + "\""
        }
        return "0x" + value.map { String(format2: $0) }.joined()
    }
}

// MARK: path resolution

struct Message: Error, CustomStringConvertible {
    var description: String
    init(_ text: String) { description = text }
}

struct Resolved {
    var ino: UInt64
    var attributes: InodeAttributes
}

/// Walks `path` from the root by lookups. Symlinks are followed only with
/// `followLinks` (relative targets from the link's directory, at most 40).
func resolve(_ store: MetadataStore, _ path: String, followLinks: Bool) throws -> Resolved {
    let root = UInt64(PMFS_ROOT_INO)
    var pending = path.split(separator: "/", omittingEmptySubsequences: true).map { Array($0.utf8) }
    var current = Resolved(ino: root, attributes: try store.getattr(root))
    var walked = ""
    var hops = 0
    while !pending.isEmpty {
        let component = pending.removeFirst()
        if component == [0x2E] { continue }
        guard current.attributes.type == .directory else { throw Message("\(walked): Not a directory") }
        let name: FileName
        do { name = try FileName(bytes: component) } catch { throw Message("\(path): \(error)") }
        let attrs: InodeAttributes
        do { attrs = try store.lookup(current.ino, name) } catch let e as Errno {
            throw Message("\(walked)/\(AttributeText.displayName(component)): \(e)")
        }
        walked += "/" + AttributeText.displayName(component)
        if attrs.type == .symbolicLink && (followLinks || !pending.isEmpty) {
            guard followLinks else {
                throw Message("\(walked) is a symbolic link (pmfs-inspect follows no symlinks here; give the target's path)")
            }
            hops += 1
            guard hops <= 40 else { throw Message("\(path): Too many levels of symbolic links") }
            let target = try store.readlink(attrs.ino)
            pending = target.split(separator: 0x2F, omittingEmptySubsequences: true).map(Array.init) + pending
            if target.first == 0x2F {
                current = Resolved(ino: root, attributes: try store.getattr(root))
                walked = ""
            } else {
                walked = String(walked[..<walked.lastIndex(of: "/")!])
            }
            continue
        }
        current = Resolved(ino: attrs.ino, attributes: attrs)
    }
    return current
}

/// Every entry of a directory, . and .. first, the rest sorted by name bytes.
func allEntries(_ store: MetadataStore, _ ino: UInt64) throws -> [DirectoryEntry] {
    var cookie: UInt64 = 0
    var entries: [DirectoryEntry] = []
    while true {
        let batch = try store.readdir(ino, cookie: cookie, limit: 1024)
        guard let last = batch.last else { break }
        entries += batch
        cookie = last.nextCookie
    }
    let dots = entries.filter { $0.name == [0x2E] || $0.name == [0x2E, 0x2E] }
    let rest = entries.filter { $0.name != [0x2E] && $0.name != [0x2E, 0x2E] }
    return dots + rest.sorted { $0.name.lexicographicallyPrecedes($1.name) }
}

func lastComponent(_ path: String) -> String {
    path.split(separator: "/").last.map(String.init) ?? "/"
}

// MARK: formatting

func fail(_ message: String) -> Never {
    writeError("pmfs-inspect: \(message)\n")
    exit(1)
}

func writeError(_ text: String) {
    try? writeFully(2, Array(text.utf8).withUnsafeBytes { UnsafeRawBufferPointer($0) })
}

func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) throws {
    var done = 0
    while done < bytes.count {
        let n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done)
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { throw Message("write: \(String(cString: strerror(errno)))") }
        done += n
    }
}

func describe(_ error: Error) -> String {
    if let e = error as? PoolError { return e.description }
    if let e = error as? Message { return e.description }
    if let e = error as? Errno { return e.description }
    return "\(error)"
}

/// Open failures in words a user can act on.
func describePoolError(_ error: Error, _ path: String) -> String {
    if case .cannotOpen(_, let reason)? = error as? PoolError, reason.contains("Resource temporarily unavailable") {
        return "pool \(path) is in use by another process (stop the server to inspect it)"
    }
    return describe(error)
}

func pad<T>(_ value: T, _ width: Int) -> String {
    let s = "\(value)"
    return s.count >= width ? s : String(repeating: " ", count: width - s.count) + s
}

func printTable(_ rows: [[String]]) {
    let widths = (0..<rows[0].count).map { c in rows.map { $0[c].count }.max() ?? 0 }
    for row in rows {
        print(row.enumerated().map { c, cell in
            c == 0 ? cell + String(repeating: " ", count: widths[c] - cell.count) : pad(cell, widths[c] + 2)
        }.joined())
    }
}

func human(_ bytes: UInt64) -> String { ByteSize.human(bytes) }

extension String {
    init(format2 byte: UInt8) {
        let s = String(byte, radix: 16)
        self = s.count == 1 ? "0" + s : s
    }

    func replacingAll(_ target: Character, _ replacement: String) -> String {
        var out = ""
        for c in self { if c == target { out += replacement } else { out.append(c) } }
        return out
    }
}

PmfsInspect.main()
