import CPMDK
import Glibc
import SystemPackage

/// Namespace operations: each is one transaction, atomic and durable on return.
extension MetadataStore {

    // MARK: lookup and listing

    /// Looks up `name` in directory `parent`. With `pin`, the inode is pinned
    /// atomically with the lookup (a FUSE lookup reference).
    public func lookup(_ parent: UInt64, _ name: FileName, pin: Bool = false) throws -> InodeAttributes {
        try name.bytes.withUnsafeBytes { try lookup(parent, validName: $0, pin: pin) }
    }

    /// `lookup` of a name given where it lies (FUSE LOOKUP: in the request);
    /// the bytes are checked as `FileName` checks them.
    public func lookup(_ parent: UInt64, nameBytes: UnsafeRawBufferPointer, pin: Bool = false) throws -> InodeAttributes {
        try FileName.validate(nameBytes)
        return try lookup(parent, validName: nameBytes, pin: pin)
    }

    private func lookup(_ parent: UInt64, validName name: UnsafeRawBufferPointer, pin: Bool) throws -> InodeAttributes {
        let dot = FileName.isDot(name), dotDot = FileName.isDotDot(name)
        while true {
            let candidate: UInt64 = try locks.withShared(parent) {
                let p = try inodes.inode(parent)
                let d = try directory(p)
                if dot { return parent }
                if dotDot { return p.pointee.parent }
                guard let slot = try d.find(bytes: name) else { throw Errno.noSuchFileOrDirectory }
                return try d.slot(slot).pointee.ino
            }
            // Recheck under both locks: the entry may have changed in between.
            let result: InodeAttributes? = try locks.withShared(parent, candidate) {
                let p = try inodes.inode(parent)
                let d = try directory(p)
                let now: UInt64
                if dot { now = parent } else if dotDot { now = p.pointee.parent } else {
                    guard let slot = try d.find(bytes: name) else { throw Errno.noSuchFileOrDirectory }
                    now = try d.slot(slot).pointee.ino
                }
                guard now == candidate else { return nil }
                let c = try inodes.inode(candidate)
                if pin { pinInode(candidate) }
                return attributes(candidate, c)
            }
            if let result { return result }
        }
    }

    func pinInode(_ ino: UInt64) { pinLockedIncrement(ino) }

    /// Directory entries after `cookie` (0 = from the start), at most `limit`.
    /// Cookies stay valid while the directory changes: an entry present during
    /// the whole listing is returned exactly once.
    public func readdir(_ ino: UInt64, cookie: UInt64, limit: Int = 256) throws -> [DirectoryEntry] {
        try locks.withShared(ino) {
            let p = try inodes.inode(ino)
            let d = try directory(p)
            var result: [DirectoryEntry] = []
            var position = cookie
            if position == 0 && result.count < limit {
                result.append(DirectoryEntry(name: [0x2E], ino: ino, type: .directory, nextCookie: 1)); position = 1
            }
            if position == 1 && result.count < limit {
                result.append(DirectoryEntry(name: [0x2E, 0x2E], ino: p.pointee.parent, type: .directory, nextCookie: 2)); position = 2
            }
            guard result.count < limit else { return result }
            try d.forEach(fromSlot: position - 2) { slot, entry in
                let name = Array(try d.name(of: entry))
                result.append(DirectoryEntry(name: name, ino: entry.pointee.ino,
                                             type: FileType(rawValue: entry.pointee.type) ?? .unknown, nextCookie: slot + 3))
                return result.count < limit
            }
            return result
        }
    }

    public func readlink(_ ino: UInt64) throws -> [UInt8] {
        try locks.withShared(ino) {
            let p = try inodes.inode(ino)
            guard FileType(mode: p.pointee.mode) == .symbolicLink else { throw Errno.invalidArgument }
            return try DirectoryIndex.loadBlob(pool, p.pointee.content_off, maxLength: Self.maxSymlinkLength)
        }
    }

    // MARK: creation

    /// Creates a regular file, fifo, socket or device node (create, mknod).
    public func create(_ parent: UInt64, _ name: FileName, _ new: NewInode, pin: Bool = false) throws -> InodeAttributes {
        switch FileType(mode: new.mode) {
        case .regular, .fifo, .socket, .characterDevice, .blockDevice: break
        case .directory: return try mkdir(parent, name, new, pin: pin)
        default: throw Errno.invalidArgument
        }
        return try makeEntry(parent, name, new, pin: pin) { _, _ in }
    }

    public func mkdir(_ parent: UInt64, _ name: FileName, _ new: NewInode, pin: Bool = false) throws -> InodeAttributes {
        var spec = new
        spec.mode = UInt32(S_IFDIR) | (new.mode & 0o7777)
        spec.rdev = 0
        return try makeEntry(parent, name, spec, pin: pin) { child, tx in
            child.pointee.nlink = 2
            child.pointee.parent = parent
            child.pointee.content_off = try DirectoryIndex.create(in: tx)
        }
    }

    public func symlink(_ parent: UInt64, _ name: FileName, target: [UInt8], uid: UInt32, gid: UInt32, pin: Bool = false) throws -> InodeAttributes {
        guard !target.isEmpty else { throw Errno.noSuchFileOrDirectory }
        guard target.count <= Self.maxSymlinkLength else { throw Errno.fileNameTooLong }
        guard !target.contains(0) else { throw Errno.invalidArgument }
        let spec = NewInode(mode: UInt32(S_IFLNK) | 0o777, uid: uid, gid: gid)
        return try makeEntry(parent, name, spec, pin: pin) { child, tx in
            child.pointee.size = UInt64(target.count)
            child.pointee.content_off = try DirectoryIndex.storeBlob(target, type: PMFS_T_SYMLINK, in: tx)
        }
    }

    /// An unnamed regular file (O_TMPFILE): no links, on the orphan list, pinned
    /// once; `link` can give it a name later.
    public func tmpfile(_ parent: UInt64, _ new: NewInode) throws -> InodeAttributes {
        guard FileType(mode: new.mode) == .regular else { throw Errno.invalidArgument }
        return try locks.withExclusive(parent) {
            _ = try liveDirectory(parent)
            return try pool.transaction { tx in
                // The orphan list ranks before inode allocation: take it first.
                tx.hold(.orphanList, orphanLock)
                let now = Timestamp.now().persistent
                let (ino, child) = try initInode(new, tx, now)
                child.pointee.nlink = 0
                try addOrphan(ino, tx)
                pinInode(ino)
                tx.onAbort { [self] in pinLockedDecrement(ino) }
                return attributes(ino, child)
            }
        }
    }

    private func initInode(_ new: NewInode, _ tx: Transaction, _ now: pmfs_timespec) throws -> (UInt64, UnsafeMutablePointer<pmfs_inode>) {
        let ino = try inodes.allocate(in: tx)
        guard let child = try inodes.slot(ino), child.pointee.mode == 0 else {
            throw PoolError.corrupt("allocated inode \(ino) is in use")
        }
        try tx.snapshot(child)
        let generation = child.pointee.generation &+ 1   // from the pool: may be at its maximum
        child.pointee = pmfs_inode()
        child.pointee.generation = generation
        child.pointee.mode = new.mode
        child.pointee.uid = new.uid
        child.pointee.gid = new.gid
        child.pointee.rdev = new.rdev
        child.pointee.nlink = 1
        child.pointee.atime = now; child.pointee.mtime = now; child.pointee.ctime = now; child.pointee.btime = now
        return (ino, child)
    }

    private func makeEntry(_ parent: UInt64, _ name: FileName, _ new: NewInode, pin: Bool,
                           _ setup: (UnsafeMutablePointer<pmfs_inode>, Transaction) throws -> Void) throws -> InodeAttributes {
        if name.isDot || name.isDotDot { throw Errno.fileExists }
        return try locks.withExclusive(parent) {
            let (dirInode, dir) = try liveDirectory(parent)
            if try dir.find(name) != nil { throw Errno.fileExists }
            let isDirectory = FileType(mode: new.mode) == .directory
            return try pool.transaction { tx in
                let now = Timestamp.now().persistent
                let (ino, child) = try initInode(new, tx, now)
                try setup(child, tx)
                try dir.insert(name, ino: ino, type: FileType(mode: new.mode), in: tx)
                try Self.touch(dirInode, tx, now)
                if isDirectory {
                    try tx.snapshot(field(dirInode, \.nlink))
                    dirInode.pointee.nlink.incrementSaturating()
                }
                if pin {
                    pinInode(ino)
                    tx.onAbort { [self] in pinLockedDecrement(ino) }
                }
                return attributes(ino, child)
            }
        }
    }

    // MARK: links

    public func link(_ ino: UInt64, newParent: UInt64, newName: FileName, pin: Bool = false) throws -> InodeAttributes {
        if newName.isDot || newName.isDotDot { throw Errno.fileExists }
        return try locks.withExclusive(ino, newParent) {
            let p = try inodes.inode(ino)
            guard FileType(mode: p.pointee.mode) != .directory else { throw Errno.notPermitted }
            guard p.pointee.nlink < Self.maxLinks else { throw Errno.tooManyLinks }
            let (dirInode, dir) = try liveDirectory(newParent)
            if try dir.find(newName) != nil { throw Errno.fileExists }
            let wasOrphan = p.pointee.nlink == 0
            if wasOrphan && p.pointee.flags & PMFS_INODE_ORPHAN == 0 { throw Errno.noSuchFileOrDirectory }
            return try pool.transaction { tx in
                let now = Timestamp.now().persistent
                if wasOrphan { try removeOrphan(ino, tx) }
                try dir.insert(newName, ino: ino, type: FileType(mode: p.pointee.mode), in: tx)
                try tx.snapshot(field(p, \.nlink))
                try tx.snapshot(field(p, \.ctime))
                p.pointee.nlink += 1
                p.pointee.ctime = now
                try Self.touch(dirInode, tx, now)
                if pin {
                    pinInode(ino)
                    tx.onAbort { [self] in pinLockedDecrement(ino) }
                }
                return attributes(ino, p)
            }
        }
    }

    /// Runs `body` with `parent` and the inode `name` names both locked, retrying
    /// if the entry changes between the first look and the locking.
    func withEntryLocked<T>(_ parent: UInt64, _ name: FileName,
                            _ body: (UnsafeMutablePointer<pmfs_inode>, DirectoryIndex, UInt64, UInt64) throws -> T) throws -> T {
        while true {
            let first: UInt64 = try locks.withShared(parent) {
                let d = try directory(try inodes.inode(parent))
                guard let slot = try d.find(name) else { throw Errno.noSuchFileOrDirectory }
                return try d.slot(slot).pointee.ino
            }
            let outcome: T? = try locks.withExclusive(parent, first) {
                let dirInode = try inodes.inode(parent)
                let d = try directory(dirInode)
                guard let slot = try d.find(name) else { throw Errno.noSuchFileOrDirectory }
                guard try d.slot(slot).pointee.ino == first else { return nil }
                return try body(dirInode, d, slot, first)
            }
            if let outcome { return outcome }
        }
    }

    public func unlink(_ parent: UInt64, _ name: FileName) throws {
        if name.isDot || name.isDotDot { throw Errno.isDirectory }
        try withEntryLocked(parent, name) { dirInode, dir, slot, ino in
            let p = try inodes.inode(ino)
            if FileType(mode: p.pointee.mode) == .directory { throw Errno.isDirectory }
            try pool.transaction { tx in
                let now = Timestamp.now().persistent
                try dir.remove(slot: slot, in: tx)
                try Self.touch(dirInode, tx, now)
                try dropLink(ino, p, isDirectory: false, tx, now)
            }
        }
    }

    public func rmdir(_ parent: UInt64, _ name: FileName) throws {
        if name.isDot { throw Errno.invalidArgument }
        if name.isDotDot { throw Errno.directoryNotEmpty }
        try withEntryLocked(parent, name) { dirInode, dir, slot, ino in
            let p = try inodes.inode(ino)
            let child = try directory(p)
            guard child.entryCount == 0 else { throw Errno.directoryNotEmpty }
            try pool.transaction { tx in
                let now = Timestamp.now().persistent
                try dir.remove(slot: slot, in: tx)
                try Self.touch(dirInode, tx, now)
                try tx.snapshot(field(dirInode, \.nlink))
                dirInode.pointee.nlink.decrementSaturating()
                try dropLink(ino, p, isDirectory: true, tx, now)
            }
        }
    }

    // MARK: rename

    public func rename(_ oldParent: UInt64, _ oldName: FileName, _ newParent: UInt64, _ newName: FileName,
                       flags: RenameFlags = []) throws {
        if flags.contains(.noReplace) && flags.contains(.exchange) { throw Errno.invalidArgument }
        if oldName.isDot || oldName.isDotDot || newName.isDot || newName.isDotDot { throw Errno.invalidArgument }
        let crossDirectory = oldParent != newParent
        if crossDirectory { renameLock.lock() }
        defer { if crossDirectory { renameLock.unlock() } }
        while true {
            // First look, unlocked by entry: which inodes are involved.
            let (src, dst): (UInt64, UInt64?) = try locks.withShared(oldParent, newParent) {
                let od = try directory(try inodes.inode(oldParent))
                guard let s = try od.find(oldName) else { throw Errno.noSuchFileOrDirectory }
                let nd = try directory(try inodes.inode(newParent))
                let d = try nd.find(newName).map { try nd.slot($0).pointee.ino }
                return (try od.slot(s).pointee.ino, d)
            }
            let done: Bool = try locks.withExclusive([oldParent, newParent, src] + (dst.map { [$0] } ?? [])) {
                let (oldDirInode, oldDir) = try liveDirectory(oldParent)
                let (newDirInode, newDir) = try liveDirectory(newParent)
                guard let srcSlot = try oldDir.find(oldName), try oldDir.slot(srcSlot).pointee.ino == src else { return false }
                let dstSlot = try newDir.find(newName)
                let dstNow = try dstSlot.map { try newDir.slot($0).pointee.ino }
                guard dstNow == dst else { return false }
                try renameLocked(oldParent, oldDirInode, oldDir, srcSlot, src, newParent, newDirInode, newDir, dstSlot, dst, newName,
                                 crossDirectory: crossDirectory, flags: flags)
                return true
            }
            if done { return }
        }
    }

    /// True if `ancestor` is `ino` or one of its ancestors. Directory parents only
    /// change under `renameLock`, which the caller holds.
    func isAncestor(_ ancestor: UInt64, of ino: UInt64) throws -> Bool {
        var current = ino
        var steps: UInt64 = 0
        while true {
            if current == ancestor { return true }
            if current == PMFS_ROOT_INO { return false }
            current = try inodes.inode(current).pointee.parent
            steps += 1
            if steps > inodes.capacity { throw PoolError.corrupt("directory parent chain loops at \(ino)") }
        }
    }

    /// The two ends of a rename, read under the entries' locks: where the
    /// name is (its directory and slot, the inode it names) and where it goes
    /// (the slot and inode already there, if any).
    private struct RenameEnds {
        let oldParent: UInt64, oldDirInode: UnsafeMutablePointer<pmfs_inode>, oldDir: DirectoryIndex
        let srcSlot: UInt64, src: UInt64, srcInode: UnsafeMutablePointer<pmfs_inode>, srcType: FileType
        let newParent: UInt64, newDirInode: UnsafeMutablePointer<pmfs_inode>, newDir: DirectoryIndex
        let dstSlot: UInt64?, dst: UInt64?
        let newName: FileName, crossDirectory: Bool
        var srcIsDir: Bool { srcType == .directory }
    }

    private func renameLocked(_ oldParent: UInt64, _ oldDirInode: UnsafeMutablePointer<pmfs_inode>, _ oldDir: DirectoryIndex,
                              _ srcSlot: UInt64, _ src: UInt64,
                              _ newParent: UInt64, _ newDirInode: UnsafeMutablePointer<pmfs_inode>, _ newDir: DirectoryIndex,
                              _ dstSlot: UInt64?, _ dst: UInt64?,
                              _ newName: FileName, crossDirectory: Bool, flags: RenameFlags) throws {
        let srcInode = try inodes.inode(src)
        let ends = RenameEnds(oldParent: oldParent, oldDirInode: oldDirInode, oldDir: oldDir, srcSlot: srcSlot, src: src,
                              srcInode: srcInode, srcType: FileType(mode: srcInode.pointee.mode),
                              newParent: newParent, newDirInode: newDirInode, newDir: newDir, dstSlot: dstSlot, dst: dst,
                              newName: newName, crossDirectory: crossDirectory)
        if flags.contains(.exchange) { try exchangeLocked(ends) } else { try moveLocked(ends, noReplace: flags.contains(.noReplace)) }
    }

    /// RENAME_EXCHANGE: the two names swap inodes.
    private func exchangeLocked(_ r: RenameEnds) throws {
        guard let dst = r.dst, let dstSlot = r.dstSlot else { throw Errno.noSuchFileOrDirectory }
        if dst == r.src { return }
        let dstInode = try inodes.inode(dst)
        let dstType = FileType(mode: dstInode.pointee.mode)
        let dstIsDir = dstType == .directory
        if r.crossDirectory {
            // Neither directory may move under itself.
            if r.srcIsDir, try isAncestor(r.src, of: r.newParent) { throw Errno.invalidArgument }
            if dstIsDir, try isAncestor(dst, of: r.oldParent) { throw Errno.invalidArgument }
        }
        try pool.transaction { tx in
            let now = Timestamp.now().persistent
            try r.oldDir.retarget(slot: r.srcSlot, ino: dst, type: dstType, in: tx)
            try r.newDir.retarget(slot: dstSlot, ino: r.src, type: r.srcType, in: tx)
            if r.crossDirectory {
                if r.srcIsDir != dstIsDir {
                    // A subdirectory changed sides: its ".." link moves with it.
                    let (losing, gaining) = r.srcIsDir ? (r.oldDirInode, r.newDirInode) : (r.newDirInode, r.oldDirInode)
                    try moveDirectoryLink(from: losing, to: gaining, tx)
                }
                if r.srcIsDir { try setParent(r.srcInode, r.newParent, tx) }
                if dstIsDir { try setParent(dstInode, r.oldParent, tx) }
            }
            try touchDirectories(r, tx, now)
            try Self.touch(r.srcInode, tx, mtime: false, now)
            try Self.touch(dstInode, tx, mtime: false, now)
        }
    }

    /// A plain rename: the name moves, replacing what the new name named (unless `noReplace`).
    private func moveLocked(_ r: RenameEnds, noReplace: Bool) throws {
        var dstInode: UnsafeMutablePointer<pmfs_inode>? = nil
        if let dst = r.dst {
            if noReplace { throw Errno.fileExists }
            // Two names of one file: POSIX says do nothing.
            if dst == r.src { return }
            dstInode = try replaceableInode(dst, by: r.srcIsDir)
        }
        if r.srcIsDir && r.crossDirectory, try isAncestor(r.src, of: r.newParent) { throw Errno.invalidArgument }
        try pool.transaction { tx in
            let now = Timestamp.now().persistent
            if let dstSlot = r.dstSlot, let dst = r.dst, let dstInode {
                let dstIsDir = FileType(mode: dstInode.pointee.mode) == .directory
                try r.newDir.retarget(slot: dstSlot, ino: r.src, type: r.srcType, in: tx)
                if dstIsDir {
                    try tx.snapshot(field(r.newDirInode, \.nlink))
                    r.newDirInode.pointee.nlink.decrementSaturating()
                }
                try dropLink(dst, dstInode, isDirectory: dstIsDir, tx, now)
            } else {
                try r.newDir.insert(r.newName, ino: r.src, type: r.srcType, in: tx)
            }
            // Slots never move, so srcSlot is still valid after the insert above.
            try r.oldDir.remove(slot: r.srcSlot, in: tx)
            if r.srcIsDir && r.crossDirectory {
                try setParent(r.srcInode, r.newParent, tx)
                try moveDirectoryLink(from: r.oldDirInode, to: r.newDirInode, tx)
            }
            try touchDirectories(r, tx, now)
            try Self.touch(r.srcInode, tx, mtime: false, now)
        }
    }

    /// The inode `dst` if a rename of a directory (`byDirectory`) or of a
    /// non-directory may replace it: same kind, and an empty directory.
    private func replaceableInode(_ dst: UInt64, by byDirectory: Bool) throws -> UnsafeMutablePointer<pmfs_inode> {
        let d = try inodes.inode(dst)
        let dstIsDir = FileType(mode: d.pointee.mode) == .directory
        if byDirectory && !dstIsDir { throw Errno.notDirectory }
        if !byDirectory && dstIsDir { throw Errno.isDirectory }
        if dstIsDir, try directory(d).entryCount != 0 { throw Errno.directoryNotEmpty }
        return d
    }

    /// A subdirectory's ".." counts as a link of its parent: one moves from `losing` to `gaining`.
    private func moveDirectoryLink(from losing: UnsafeMutablePointer<pmfs_inode>, to gaining: UnsafeMutablePointer<pmfs_inode>,
                                   _ tx: Transaction) throws {
        try tx.snapshot(field(losing, \.nlink))
        try tx.snapshot(field(gaining, \.nlink))
        losing.pointee.nlink.decrementSaturating()
        gaining.pointee.nlink.incrementSaturating()
    }

    private func setParent(_ inode: UnsafeMutablePointer<pmfs_inode>, _ parent: UInt64, _ tx: Transaction) throws {
        try tx.snapshot(field(inode, \.parent))
        inode.pointee.parent = parent
    }

    /// mtime and ctime of the directories a rename changed.
    private func touchDirectories(_ r: RenameEnds, _ tx: Transaction, _ now: pmfs_timespec) throws {
        try Self.touch(r.oldDirInode, tx, now)
        if r.crossDirectory { try Self.touch(r.newDirInode, tx, now) }
    }
}
