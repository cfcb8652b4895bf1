import CPMDK
import Glibc
import SystemPackage

/// setattr and the metadata half of truncate.
extension MetadataStore {
    /// Applies `changes` to `ino` in one transaction and returns the new attributes.
    /// A size change on a regular file frees the blocks wholly past the new end;
    /// zeroing the tail of a partial last block is the data tier's job.
    public func setattr(_ ino: UInt64, _ changes: AttributeChanges) throws -> InodeAttributes {
        try locks.withExclusive(ino) {
            let p = try inodes.inode(ino)
            let type = FileType(mode: p.pointee.mode)
            if let size = changes.size {
                switch type {
                case .regular: break
                case .directory: throw Errno.isDirectory
                default: throw Errno.invalidArgument
                }
                guard size <= Self.maxFileSize else { throw Errno.fileTooLarge }
            }
            return try pool.transaction { tx in
                let now = Timestamp.now().persistent
                try tx.snapshot(p)
                if let mode = changes.mode { p.pointee.mode = (p.pointee.mode & UInt32(S_IFMT)) | (mode & 0o7777) }
                if let uid = changes.uid { p.pointee.uid = uid }
                if let gid = changes.gid { p.pointee.gid = gid }
                if let atime = changes.atime { p.pointee.atime = atime.persistent }
                if let mtime = changes.mtime { p.pointee.mtime = mtime.persistent }
                if let flags = changes.flags { p.pointee.attr_flags = flags }
                if let size = changes.size {
                    // Any truncate, even to the current size, drops blocks past the new
                    // end (fallocate KEEP_SIZE leftovers), as ext4 and xfs do.
                    let keep = (size + UInt64(blockSize) - 1) / UInt64(blockSize)
                    try punchBlocksLocked(ino, p, from: keep, to: UInt64.max, tx)
                    p.pointee.size = size
                    if changes.mtime == nil { p.pointee.mtime = now }
                }
                p.pointee.ctime = changes.ctime?.persistent ?? now
                return attributes(ino, p)
            }
        }
    }

    /// Records a read access (relatime: only when atime is older than mtime or
    /// ctime, or a day old), without touching ctime. Returns whether it wrote.
    @discardableResult
    public func noteAccess(_ ino: UInt64, at now: Timestamp = .now()) throws -> Bool {
        try locks.withExclusive(ino) {
            let p = try inodes.inode(ino)
            guard Timestamp.relatimeUpdateDue(atime: Timestamp(p.pointee.atime), mtime: Timestamp(p.pointee.mtime),
                                              ctime: Timestamp(p.pointee.ctime), now: now) else { return false }
            try pool.transaction { tx in
                try tx.snapshot(field(p, \.atime))
                p.pointee.atime = now.persistent
            }
            return true
        }
    }

    /// The largest file size: 2^32 blocks * 4 KiB * 2^12... bounded by 64-bit block keys; 8 EiB - 1 block.
    public static let maxFileSize: UInt64 = (1 << 63) - 4096
}

/// Extended attributes: stored as one packed blob per inode, rewritten whole on
/// change (xattr sets are small and rare next to data I/O).
extension MetadataStore {
    public static let xattrNameMax = 255
    public static let xattrValueMax = 65536
    /// All names and values of one inode together.
    public static let xattrTotalMax = 1 << 20

    package static func validateXattrName(_ name: [UInt8]) throws {
        guard !name.isEmpty, !name.contains(0) else { throw Errno.invalidArgument }
        guard name.count <= xattrNameMax else { throw Errno.outOfRange }
        let prefixes: [[UInt8]] = ["user.", "trusted.", "security.", "system."].map { Array($0.utf8) }
        guard let prefix = prefixes.first(where: { name.starts(with: $0) }) else { throw Errno.notSupported }
        guard name.count > prefix.count else { throw Errno.invalidArgument }
    }

    func loadXattrs(_ p: UnsafeMutablePointer<pmfs_inode>) throws -> [(name: [UInt8], value: [UInt8])] {
        guard p.pointee.xattr_off != 0 else { return [] }
        let bytes = try DirectoryIndex.loadBlob(pool, p.pointee.xattr_off, maxLength: Self.xattrTotalMax + 4096)
        return try Self.decodeXattrs(bytes)
    }

    /// Record layout: name length (1 byte), value length (4 bytes LE), name, value.
    package static func decodeXattrs(_ bytes: [UInt8]) throws -> [(name: [UInt8], value: [UInt8])] {
        var result: [(name: [UInt8], value: [UInt8])] = []
        var i = 0
        while i < bytes.count {
            guard i + 5 <= bytes.count else { throw PoolError.corrupt("xattr record header truncated") }
            let nameLength = Int(bytes[i])
            let valueLength = Int(bytes[i + 1]) | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3]) << 16 | Int(bytes[i + 4]) << 24
            i += 5
            guard nameLength > 0, valueLength <= xattrValueMax, i + nameLength + valueLength <= bytes.count else {
                throw PoolError.corrupt("xattr record lengths")
            }
            result.append((Array(bytes[i..<(i + nameLength)]), Array(bytes[(i + nameLength)..<(i + nameLength + valueLength)])))
            i += nameLength + valueLength
        }
        return result
    }

    package static func encodeXattrs(_ records: [(name: [UInt8], value: [UInt8])]) -> [UInt8] {
        var out: [UInt8] = []
        for r in records {
            out.append(UInt8(r.name.count))
            let n = UInt32(r.value.count)
            out += [UInt8(n & 0xff), UInt8(n >> 8 & 0xff), UInt8(n >> 16 & 0xff), UInt8(n >> 24 & 0xff)]
            out += r.name
            out += r.value
        }
        return out
    }

    public func getxattr(_ ino: UInt64, _ name: [UInt8]) throws -> [UInt8] {
        try locks.withShared(ino) {
            let p = try inodes.inode(ino)
            guard let r = try loadXattrs(p).first(where: { $0.name == name }) else { throw Errno.noData }
            return r.value
        }
    }

    public func listxattr(_ ino: UInt64) throws -> [[UInt8]] {
        try locks.withShared(ino) { try loadXattrs(try inodes.inode(ino)).map(\.name) }
    }

    public func setxattr(_ ino: UInt64, _ name: [UInt8], _ value: [UInt8], mode: XattrSetMode = .any) throws {
        try Self.validateXattrName(name)
        guard value.count <= Self.xattrValueMax else { throw Errno.argListTooLong }
        try locks.withExclusive(ino) {
            let p = try inodes.inode(ino)
            var records = try loadXattrs(p)
            if let i = records.firstIndex(where: { $0.name == name }) {
                if mode == .create { throw Errno.fileExists }
                records[i].value = value
            } else {
                if mode == .replace { throw Errno.noData }
                records.append((name, value))
            }
            try storeXattrs(ino, p, records)
        }
    }

    public func removexattr(_ ino: UInt64, _ name: [UInt8]) throws {
        try locks.withExclusive(ino) {
            let p = try inodes.inode(ino)
            var records = try loadXattrs(p)
            guard let i = records.firstIndex(where: { $0.name == name }) else { throw Errno.noData }
            records.remove(at: i)
            try storeXattrs(ino, p, records)
        }
    }

    private func storeXattrs(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>, _ records: [(name: [UInt8], value: [UInt8])]) throws {
        let encoded = Self.encodeXattrs(records)
        guard encoded.count <= Self.xattrTotalMax else { throw Errno.noSpace }
        try pool.transaction { tx in
            try tx.snapshot(field(p, \.xattr_off))
            try tx.snapshot(field(p, \.ctime))
            try tx.free(p.pointee.xattr_off)
            p.pointee.xattr_off = encoded.isEmpty ? 0 : try DirectoryIndex.storeBlob(encoded, type: PMFS_T_XATTRS, in: tx)
            p.pointee.ctime = Timestamp.now().persistent
        }
    }
}
