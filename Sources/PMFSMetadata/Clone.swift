import CPMDK
import SystemPackage

/// File clones: two files' extents pointing at the same device blocks, with
/// the blocks' owners counted in `SharedBlocks`.
extension MetadataStore {
    /// Makes file blocks [targetBlock, +count) of `target` share the device
    /// blocks of [sourceBlock, +count) of `source`, in one transaction: the
    /// target's old blocks there lose an owner, the source's gain one, holes
    /// stay holes and unwritten extents stay unwritten. The target's size
    /// becomes at least `targetSize`. The caller wrote back both files' dirty
    /// data for these ranges first. One file may be both, with disjoint ranges.
    public func cloneBlocks(from source: UInt64, block sourceBlock: UInt64, to target: UInt64, block targetBlock: UInt64,
                            count: UInt64, targetSize: UInt64) throws {
        let limit = Self.maxFileSize / UInt64(blockSize)
        guard sourceBlock <= limit, targetBlock <= limit, count <= limit - max(sourceBlock, targetBlock),
              targetSize <= Self.maxFileSize else { throw Errno.fileTooLarge }
        if source == target, sourceBlock < targetBlock + count, targetBlock < sourceBlock + count { throw Errno.invalidArgument }
        try locks.withExclusive(source, target) {
            let sp = try regularFile(source), tp = try regularFile(target)
            let sourceTree = extentTree(sp), targetTree = extentTree(tp)
            try pool.transaction { tx in
                try punchBlocksLocked(target, tp, from: targetBlock, to: targetBlock + count, tx)
                var added: UInt64 = 0
                for seg in try segments(sourceTree, sourceBlock, sourceBlock + count) {
                    guard let device = seg.deviceBlock else { continue }
                    try shared.addOwner(device, seg.length, in: tx)
                    var at = 0 as UInt64
                    while at < seg.length {
                        // Extents hold at most 2^32-1 blocks.
                        let n = min(seg.length - at, UInt64(UInt32.max))
                        try insertMerging(targetTree, ExtentTree.Entry(fileBlock: targetBlock + (seg.fileBlock - sourceBlock) + at,
                                                                     deviceBlock: device + at, length: n,
                                                                     flags: seg.unwritten ? PMFS_EXTENT_UNWRITTEN : 0), tx)
                        at += n
                    }
                    added += seg.length
                }
                let now = Timestamp.now().persistent
                try tx.snapshot(field(tp, \.blocks))
                try tx.snapshot(field(tp, \.size))
                try tx.snapshot(field(tp, \.mtime))
                try tx.snapshot(field(tp, \.ctime))
                tp.pointee.blocks.addSaturating(added * UInt64(blockSize / 512))
                tp.pointee.size = max(tp.pointee.size, targetSize)
                tp.pointee.mtime = now
                tp.pointee.ctime = now
            }
        }
    }

    /// Owners of device blocks [start, start+count), in runs (tests, inspection).
    public func blockOwners(_ start: UInt64, count: UInt64) throws -> [(start: UInt64, length: UInt64, owners: UInt64)] {
        try shared.pieces(start, count).map { ($0.start, $0.length, $0.owners) }
    }

    /// Records of the refcount table: shared device-block runs and their owners.
    public func sharedBlockRecords() throws -> [(start: UInt64, length: UInt64, owners: UInt64)] {
        try shared.allRecords().map { ($0.start, $0.length, $0.owners) }
    }
}
