import CPMDK
import Glibc
import SystemPackage

/// The extent-map half of file data: which device blocks hold a file's blocks.
/// The data tier (a later layer) reads and writes the blocks themselves.
extension MetadataStore {
    func regularFile(_ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_inode> {
        let p = try inodes.inode(ino)
        switch FileType(mode: p.pointee.mode) {
        case .regular: return p
        case .directory: throw Errno.isDirectory
        default: throw Errno.invalidArgument
        }
    }

    /// The extent tree of regular file `p`, whose extents must lie in the data area.
    func extentTree(_ p: UnsafeMutablePointer<pmfs_inode>) -> ExtentTree {
        ExtentTree(pool: pool, inode: p, dataArea: space.reservedBlocks..<space.blockCount)
    }

    /// Where new blocks for `fileBlock` should go: just past `previous` (the
    /// extent before it), as far on as the file is. nil if `previous` reaches
    /// past `fileBlock` (only in a damaged tree) or there is none.
    static func allocationGoal(after previous: ExtentTree.Entry?, for fileBlock: UInt64) -> UInt64? {
        guard let e = previous, e.end <= fileBlock else { return nil }
        // Both terms are bounded (device blocks, file blocks < 2^51): no overflow.
        return e.deviceBlock + e.length + (fileBlock - e.end)
    }

    /// The mapping of file blocks [start, start+count): mapped runs and holes, in order.
    public func mapBlocks(_ ino: UInt64, start: UInt64, count: UInt64) throws -> [ExtentSegment] {
        var result: [ExtentSegment] = []
        try mapBlocks(ino, start: start, count: count, into: &result)
        return result
    }

    /// `mapBlocks` into `result`, emptied first with its storage kept: a
    /// caller that keeps the array (one per file) maps without allocating once
    /// it has grown to the file's usual number of segments.
    public func mapBlocks(_ ino: UInt64, start: UInt64, count: UInt64, into result: inout [ExtentSegment]) throws {
        result.removeAll(keepingCapacity: true)
        try locks.withShared(ino) {
            let p = try regularFile(ino)
            try forEachSegment(extentTree(p), start, start.addingClamped(count)) { try appendSplittingShared($0, to: &result) }
        }
    }

    /// Appends `s`, cut where its blocks' sharing changes.
    func appendSplittingShared(_ s: ExtentSegment, to result: inout [ExtentSegment]) throws {
        guard !shared.isEmpty, let device = s.deviceBlock else { result.append(s); return }
        for piece in try shared.pieces(device, s.length) {
            var part = s
            part.fileBlock = s.fileBlock + (piece.start - device)
            part.deviceBlock = piece.start
            part.length = piece.length
            part.shared = piece.owners > 1
            result.append(part)
        }
    }

    /// Drops one owner of device blocks [start, start+length) in `tx`, freeing
    /// those whose last owner this was.
    func dropOwner(_ start: UInt64, _ length: UInt64, _ tx: Transaction) throws {
        for run in try shared.removeOwner(start, length, in: tx) { try space.free(run.start, run.length, in: tx) }
    }

    func segments(_ tree: ExtentTree, _ start: UInt64, _ end: UInt64) throws -> [ExtentSegment] {
        var result: [ExtentSegment] = []
        try forEachSegment(tree, start, end) { result.append($0) }
        return result
    }

    /// The mapped runs and holes of [start, end), in order, handed to `body`.
    func forEachSegment(_ tree: ExtentTree, _ start: UInt64, _ end: UInt64, _ body: (ExtentSegment) throws -> Void) throws {
        guard start < end else { return }
        var position = start
        try tree.forEachOverlapping(start, end) { e in
            if e.fileBlock > position {
                try body(ExtentSegment(fileBlock: position, length: e.fileBlock - position, deviceBlock: nil, unwritten: false))
                position = e.fileBlock
            }
            let segEnd = min(e.end, end)
            // Only extents that overlap (damage) can end where the last one did.
            guard segEnd > position else { throw PoolError.corrupt("extents overlap at file block \(e.fileBlock)") }
            let device = e.deviceBlock + (position - e.fileBlock)
            guard space.allUsed(device, segEnd - position) else {
                throw PoolError.corrupt("extent at file block \(e.fileBlock) maps device blocks \(e.deviceBlock)+\(e.length) that the space map has free")
            }
            try body(ExtentSegment(fileBlock: position, length: segEnd - position, deviceBlock: device,
                                   unwritten: e.flags & PMFS_EXTENT_UNWRITTEN != 0))
            position = segEnd
        }
        if position < end { try body(ExtentSegment(fileBlock: position, length: end - position, deviceBlock: nil, unwritten: false)) }
    }

    /// Allocates device blocks for every hole in [start, start+count) in one
    /// transaction and returns the mapping of the whole range. New extents are
    /// marked unwritten when `unwritten` (fallocate). Space comes from where the
    /// file's previous extent ends when possible, so sequential writers get
    /// contiguous blocks. ENOSPC leaves everything as it was.
    @discardableResult
    public func allocateBlocks(_ ino: UInt64, start: UInt64, count: UInt64, unwritten: Bool = false) throws -> [ExtentSegment] {
        guard count > 0 else { return [] }
        guard start <= Self.maxFileSize / UInt64(blockSize), count <= Self.maxFileSize / UInt64(blockSize) - start else { throw Errno.fileTooLarge }
        return try locks.withExclusive(ino) {
            let p = try regularFile(ino)
            let tree = extentTree(p)
            return try pool.transaction { tx in
                for hole in try segments(tree, start, start + count) where hole.deviceBlock == nil {
                    var fileBlock = hole.fileBlock
                    let goal = Self.allocationGoal(after: try tree.floor(fileBlock), for: fileBlock)
                    for run in try space.allocate(hole.length, goal: goal, in: tx) {
                        try insertMerging(tree, ExtentTree.Entry(fileBlock: fileBlock, deviceBlock: run.start, length: run.length,
                                                                 flags: unwritten ? PMFS_EXTENT_UNWRITTEN : 0), tx)
                        fileBlock += run.length
                    }
                    try tx.snapshot(field(p, \.blocks))
                    p.pointee.blocks.addSaturating(hole.length * UInt64(blockSize / 512))
                }
                return try segments(tree, start, start + count)
            }
        }
    }

    /// Inserts `e`, extending the previous extent instead when it continues it.
    func insertMerging(_ tree: ExtentTree, _ e: ExtentTree.Entry, _ tx: Transaction) throws {
        if let prev = try tree.floor(e.fileBlock), prev.end == e.fileBlock, prev.deviceBlock + prev.length == e.deviceBlock,
           prev.flags == e.flags, prev.length + e.length <= UInt64(UInt32.max) {
            var grown = prev
            grown.length += e.length
            try tree.update(grown, in: tx)
        } else {
            try tree.insert(e, in: tx)
        }
    }

    /// Frees the blocks of [start, start+count), leaving a hole.
    public func punchBlocks(_ ino: UInt64, start: UInt64, count: UInt64) throws {
        guard count > 0 else { return }
        try locks.withExclusive(ino) {
            let p = try regularFile(ino)
            try pool.transaction { tx in
                try punchBlocksLocked(ino, p, from: start, to: start.addingClamped(count), tx)
                try tx.snapshot(field(p, \.ctime))
                try tx.snapshot(field(p, \.mtime))
                let now = Timestamp.now().persistent
                p.pointee.ctime = now
                p.pointee.mtime = now
            }
        }
    }

    /// Marks [start, start+count) as written (after the data tier wrote it):
    /// unwritten extents in the range are split at the edges and cleared.
    public func markWritten(_ ino: UInt64, start: UInt64, count: UInt64) throws {
        guard count > 0 else { return }
        try locks.withExclusive(ino) {
            let p = try regularFile(ino)
            try pool.transaction { tx in
                try markWrittenLocked(p, start: start, count: count, tx)
            }
        }
    }

    func markWrittenLocked(_ p: UnsafeMutablePointer<pmfs_inode>, start: UInt64, count: UInt64, _ tx: Transaction) throws {
        let tree = extentTree(p)
        let end = start.addingClamped(count)
        for e in try tree.overlapping(start, end) where e.flags & PMFS_EXTENT_UNWRITTEN != 0 {
            let lo = max(e.fileBlock, start), hi = min(e.end, end)
            try tree.remove(e.fileBlock, in: tx)
            if e.fileBlock < lo {
                try tree.insert(ExtentTree.Entry(fileBlock: e.fileBlock, deviceBlock: e.deviceBlock, length: lo - e.fileBlock, flags: e.flags), in: tx)
            }
            try tree.insert(ExtentTree.Entry(fileBlock: lo, deviceBlock: e.deviceBlock + (lo - e.fileBlock), length: hi - lo,
                                             flags: e.flags & ~PMFS_EXTENT_UNWRITTEN), in: tx)
            if hi < e.end {
                try tree.insert(ExtentTree.Entry(fileBlock: hi, deviceBlock: e.deviceBlock + (hi - e.fileBlock), length: e.end - hi, flags: e.flags), in: tx)
            }
        }
    }

    /// Removes the mapping of file blocks [from, to) inside `tx`, freeing the device blocks.
    func punchBlocksLocked(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>, from: UInt64, to: UInt64, _ tx: Transaction) throws {
        guard from < to else { return }
        let tree = extentTree(p)
        var freed: UInt64 = 0
        for e in try tree.overlapping(from, to) {
            let lo = max(e.fileBlock, from), hi = min(e.end, to)
            try tree.remove(e.fileBlock, in: tx)
            if e.fileBlock < lo {
                try tree.insert(ExtentTree.Entry(fileBlock: e.fileBlock, deviceBlock: e.deviceBlock, length: lo - e.fileBlock, flags: e.flags), in: tx)
            }
            if hi < e.end {
                try tree.insert(ExtentTree.Entry(fileBlock: hi, deviceBlock: e.deviceBlock + (hi - e.fileBlock), length: e.end - hi, flags: e.flags), in: tx)
            }
            try dropOwner(e.deviceBlock + (lo - e.fileBlock), hi - lo, tx)
            freed += hi - lo
        }
        if freed > 0 {
            try tx.snapshot(field(p, \.blocks))
            p.pointee.blocks.subtractSaturating(freed * UInt64(blockSize / 512))
        }
    }
}
