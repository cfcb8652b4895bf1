import CPMDK
import SystemPackage

/// What a snapshot made.
public struct SnapshotSummary: Sendable, Equatable {
    /// The copy's root directory.
    public var root: UInt64
    /// Inodes copied (a hard-linked file counts once).
    public var inodes: Int
    public var directories: Int
    public var regularFiles: Int
    /// Data blocks the copy shares with the source (every mapped block of its files).
    public var sharedBlocks: UInt64
}

/// Directory-tree snapshots: a copy of a tree whose files share their data
/// blocks with the source's (one more owner per block in the refcount tree),
/// with every inode, directory entry, symlink target and xattr copied.
///
/// The copy is **one transaction** made with every inode lock held: it is
/// one point of the source, and a crash leaves no trace of it or all of it.
/// Its undo log holds the 256-byte slot of each new inode (and the nodes it
/// changes), so a tree is limited to `maxSnapshotInodes`; past the pool's
/// room the transaction fails with ENOSPC and nothing changes.
extension MetadataStore {
    /// The most inodes one snapshot copies (its undo log: ~64 MiB of inode slots).
    public static let maxSnapshotInodes = 1 << 18

    /// Source inodes in copy order, the entries of each directory and how many
    /// times each inode is named inside the tree.
    struct SnapshotPlan {
        struct Entry { var name: [UInt8]; var source: UInt64; var type: FileType }
        /// Source inodes; [0] is the tree's root.
        var order: [UInt64] = []
        var index: [UInt64: Int] = [:]
        /// For each directory's position in `order`: its entries.
        var entries: [Int: [Entry]] = [:]
        /// For each directory's position: its parent directory's position.
        var parentOf: [Int: Int] = [:]
        /// Links inside the tree of each non-directory position.
        var links: [Int: UInt32] = [:]
        var directories: Int { entries.count }
    }

    /// Makes `name` in directory `parent` a copy of the tree at directory
    /// `source` (see above). With `readOnly` every copied inode carries
    /// PMFS_INODE_READONLY. The caller wrote back the dirty data of the
    /// tree's files first and keeps writers out until this returns.
    public func snapshot(_ source: UInt64, into parent: UInt64, name: FileName, readOnly: Bool) throws -> SnapshotSummary {
        if name.isDot || name.isDotDot { throw Errno.fileExists }
        return try locks.withAllExclusive {
            let plan = try snapshotPlan(source, into: parent, name: name)
            return try pool.transaction { tx in try copyTree(plan, into: parent, name: name, readOnly: readOnly, tx) }
        }
    }

    /// The regular files of the tree at `source` (whose cached data a snapshot
    /// writes back first).
    public func regularFiles(inTree source: UInt64) throws -> [UInt64] {
        try locks.withAllExclusive {
            let plan = try walkTree(source)
            return try plan.order.filter { FileType(mode: try inodes.inode($0).pointee.mode) == .regular }
        }
    }

    /// Checks the request (all inode locks held) and walks the tree.
    private func snapshotPlan(_ source: UInt64, into parent: UInt64, name: FileName) throws -> SnapshotPlan {
        let (parentInode, parentDir) = try liveDirectory(parent)
        if parentInode.pointee.flags & PMFS_INODE_READONLY != 0 { throw Errno.readOnlyFileSystem }
        if try parentDir.find(name) != nil { throw Errno.fileExists }
        guard parentInode.pointee.nlink < Self.maxLinks else { throw Errno.tooManyLinks }
        _ = try liveDirectory(source)
        // A copy inside its own source would be part of what it copies.
        if try isAncestor(source, of: parent) { throw Errno.invalidArgument }
        return try walkTree(source)
    }

    /// Every inode reachable from directory `source`, breadth first. A
    /// directory met twice is damage (directories have one name).
    private func walkTree(_ source: UInt64) throws -> SnapshotPlan {
        var plan = SnapshotPlan()
        plan.order = [source]
        plan.index[source] = 0
        plan.entries[0] = []
        var next = 0
        while next < plan.order.count {
            let position = next
            next += 1
            let ino = plan.order[position]
            let p = try inodes.inode(ino)
            guard FileType(mode: p.pointee.mode) == .directory else { continue }
            let d = try directory(p)
            var entries: [SnapshotPlan.Entry] = []
            try d.forEach(fromSlot: 0) { _, entry in
                let child = entry.pointee.ino
                let type = FileType(mode: try inodes.inode(child).pointee.mode)
                entries.append(SnapshotPlan.Entry(name: Array(try d.name(of: entry)), source: child, type: type))
                return true
            }
            for e in entries {
                if let seen = plan.index[e.source] {
                    guard e.type != .directory else { throw PoolError.damagedInode(e.source, "directory named twice in the tree of \(source)") }
                    guard plan.links[seen, default: 0] < Self.maxLinks else { throw Errno.tooManyLinks }
                    plan.links[seen, default: 0] += 1
                    continue
                }
                guard plan.order.count < Self.maxSnapshotInodes else { throw Errno.noSpace }
                let child = plan.order.count
                plan.order.append(e.source)
                plan.index[e.source] = child
                if e.type == .directory { plan.entries[child] = []; plan.parentOf[child] = position } else { plan.links[child] = 1 }
            }
            plan.entries[position] = entries
        }
        return plan
    }

    private func copyTree(_ plan: SnapshotPlan, into parent: UInt64, name: FileName, readOnly: Bool, _ tx: Transaction) throws -> SnapshotSummary {
        // Inode numbers first: the inode-table lock ranks below the space map's.
        let numbers = try inodes.allocate(count: plan.order.count, in: tx)
        var summary = SnapshotSummary(root: numbers[0], inodes: numbers.count, directories: plan.directories, regularFiles: 0, sharedBlocks: 0)
        for (position, source) in plan.order.enumerated() {
            let copied = try copyInode(source, to: numbers[position], readOnly: readOnly, tx)
            let c = copied.inode
            if let up = plan.parentOf[position] { c.pointee.parent = numbers[up] }
            if position == 0 { c.pointee.parent = parent }
            if let links = plan.links[position] { c.pointee.nlink = links }
            if FileType(mode: c.pointee.mode) == .regular { summary.regularFiles += 1 }
            summary.sharedBlocks = summary.sharedBlocks.addingClamped(copied.blocks)
        }
        for (position, entries) in plan.entries {
            let d = try directory(try inodes.inode(numbers[position]))
            for e in entries {
                guard let child = plan.index[e.source] else { throw PoolError.corrupt("snapshot plan lost inode \(e.source)") }
                try d.insert(try FileName(bytes: e.name), ino: numbers[child], type: e.type, in: tx)
            }
        }
        let (parentInode, parentDir) = try liveDirectory(parent)
        try parentDir.insert(name, ino: numbers[0], type: .directory, in: tx)
        try Self.touch(parentInode, tx, Timestamp.now().persistent)
        try tx.snapshot(field(parentInode, \.nlink))
        parentInode.pointee.nlink.incrementSaturating()
        if readOnly { try noteReadOnlyInodes(tx) }
        return summary
    }

    /// Copies inode `source` into the free slot `ino`: attributes and times as
    /// they are, its own xattr blob, symlink target or empty directory, and its
    /// extents with one more owner per block. Returns the blocks it shares.
    private func copyInode(_ source: UInt64, to ino: UInt64, readOnly: Bool,
                           _ tx: Transaction) throws -> (inode: UnsafeMutablePointer<pmfs_inode>, blocks: UInt64) {
        let s = try inodes.inode(source)
        guard let c = try inodes.slot(ino), c.pointee.mode == 0 else { throw PoolError.corrupt("allocated inode \(ino) is in use") }
        try tx.snapshot(c)
        var copy = s.pointee
        copy.generation = c.pointee.generation &+ 1   // from the pool: may be at its maximum
        copy.flags = readOnly ? PMFS_INODE_READONLY : 0
        copy.orphan_next = 0
        copy.orphan_prev = 0
        copy.content_off = 0
        copy.xattr_off = 0
        copy.extent_count = 0
        copy.parent = 0
        c.pointee = copy
        if s.pointee.xattr_off != 0 {
            let bytes = try DirectoryIndex.loadBlob(pool, s.pointee.xattr_off, maxLength: Self.xattrTotalMax + 4096)
            c.pointee.xattr_off = try DirectoryIndex.storeBlob(bytes, type: PMFS_T_XATTRS, in: tx)
        }
        var blocks: UInt64 = 0
        switch FileType(mode: s.pointee.mode) {
        case .directory:
            c.pointee.content_off = try DirectoryIndex.create(in: tx)
        case .symbolicLink:
            let target = try DirectoryIndex.loadBlob(pool, s.pointee.content_off, maxLength: Self.maxSymlinkLength)
            c.pointee.content_off = try DirectoryIndex.storeBlob(target, type: PMFS_T_SYMLINK, in: tx)
        case .regular:
            var extents: [ExtentTree.Entry] = []
            try extentTree(s).forEach { extents.append($0) }
            let tree = extentTree(c)
            for e in extents {
                try shared.addOwner(e.deviceBlock, e.length, in: tx)
                try tree.insert(e, in: tx)
                blocks = blocks.addingClamped(e.length)
            }
        default:
            break
        }
        return (c, blocks)
    }

    /// Marks the pool as holding read-only inodes (a rocompat feature: a pmfs
    /// that does not know the flag may only inspect the pool).
    private func noteReadOnlyInodes(_ tx: Transaction) throws {
        let sb = pool.superblock
        guard sb.pointee.rocompat_features & PMFS_ROCOMPAT_READONLY_INODES == 0 else { return }
        try tx.snapshot(field(sb, \.rocompat_features))
        sb.pointee.rocompat_features |= PMFS_ROCOMPAT_READONLY_INODES
    }
}
