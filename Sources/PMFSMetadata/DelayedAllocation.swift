import CPMDK
import Glibc
import SystemPackage

/// A run of device blocks.
public struct BlockRun: Hashable, Sendable {
    public var start: UInt64
    public var length: UInt64
    public init(start: UInt64, length: UInt64) { self.start = start; self.length = length }
}

/// Newly written file blocks [fileBlock, fileBlock+length) now held by device
/// blocks starting at `deviceBlock` (claimed with `claimBlocks`).
public struct NewMapping: Hashable, Sendable {
    public var fileBlock: UInt64
    public var deviceBlock: UInt64
    public var length: UInt64
    /// The file blocks are mapped to shared blocks now: the new blocks replace
    /// them (copy-on-write) and the old ones lose this file as an owner.
    public var replacesShared: Bool
    public init(fileBlock: UInt64, deviceBlock: UInt64, length: UInt64, replacesShared: Bool = false) {
        self.fileBlock = fileBlock; self.deviceBlock = deviceBlock; self.length = length; self.replacesShared = replacesShared
    }
}

/// Delayed allocation for the data tier: a write into a hole reserves space at
/// once (so the cache never acknowledges data it cannot place), write-back
/// claims concrete blocks, writes and flushes the data, then one transaction
/// (`commitWrites`) points the extent map at them. A crash before that commit
/// leaves the blocks free and the file as it was: never stale or foreign data.
extension MetadataStore {
    public func reserveBlocks(_ count: UInt64) throws {
        guard count > 0 else { return }
        // Data the cache accepts must be committable: no pool reserve, no write.
        guard poolHasReserve() else { throw Errno.noSpace }
        try space.reserve(count)
    }

    public func unreserveBlocks(_ count: UInt64) {
        guard count > 0 else { return }
        space.unreserve(count)
    }

    /// Chooses device blocks for file blocks [fileBlock, fileBlock+count) of `ino`,
    /// next to the extent before them when possible, consuming `fromReservation`
    /// reserved blocks.
    public func claimBlocks(_ ino: UInt64, fileBlock: UInt64, count: UInt64, fromReservation: UInt64) throws -> [BlockRun] {
        let goal: UInt64? = try locks.withShared(ino) {
            let p = try regularFile(ino)
            return Self.allocationGoal(after: try extentTree(p).floor(fileBlock), for: fileBlock)
        }
        return try space.claim(count, goal: goal, fromReservation: fromReservation).map { BlockRun(start: $0.start, length: $0.length) }
    }

    public func releaseClaimedBlocks(_ runs: [BlockRun]) {
        for r in runs { space.releaseClaim(r.start, r.length) }
    }

    /// One transaction after the data is on the device: maps the new blocks,
    /// clears the unwritten flag of `written` ranges, and sets size and times.
    public func commitWrites(_ ino: UInt64, mappings: [NewMapping], written: [(start: UInt64, count: UInt64)] = [],
                             size: UInt64? = nil, mtime: Timestamp? = nil) throws {
        do {
            try commitWritesOnce(ino, mappings: mappings, written: written, size: size, mtime: mtime)
        } catch Errno.noSpace where releaseReserve() {
            // The pool filled up since these writes were accepted: the reserve is for this.
            try commitWritesOnce(ino, mappings: mappings, written: written, size: size, mtime: mtime)
        }
    }

    /// size, blocks, rdev, atime, mtime and ctime lie together in the inode:
    /// one undo-log range for the four a commit changes (PMDK keeps a node
    /// per range, so this costs less than four snapshots). The others are
    /// only written under the inode's exclusive lock, which the commit holds.
    private func snapshotSizeThroughCtime(_ p: UnsafeMutablePointer<pmfs_inode>, _ tx: Transaction) throws {
        let start = MemoryLayout<pmfs_inode>.offset(of: \.size)!
        let end = MemoryLayout<pmfs_inode>.offset(of: \.ctime)! + MemoryLayout<pmfs_timespec>.size
        try tx.snapshotRaw(UnsafeMutableRawPointer(p) + start, end - start)
    }

    private func commitWritesOnce(_ ino: UInt64, mappings: [NewMapping], written: [(start: UInt64, count: UInt64)],
                                  size: UInt64?, mtime: Timestamp?) throws {
        try locks.withExclusive(ino) {
            let p = try regularFile(ino)
            let tree = extentTree(p)
            try pool.transaction { tx in
                // Copy-on-write: unmap (and drop this owner of) the shared blocks first;
                // `blocks` loses them here and gains the new ones below.
                for m in mappings where m.replacesShared {
                    try punchBlocksLocked(ino, p, from: m.fileBlock, to: m.fileBlock + m.length, tx)
                }
                for m in mappings {
                    if try tree.overlapping(m.fileBlock, m.fileBlock + m.length).isEmpty == false {
                        throw PoolError.corrupt("write-back maps file blocks \(m.fileBlock)+\(m.length) of inode \(ino) twice")
                    }
                    try space.commitClaimed(m.deviceBlock, m.length, in: tx)
                    try insertMerging(tree, ExtentTree.Entry(fileBlock: m.fileBlock, deviceBlock: m.deviceBlock, length: m.length, flags: 0), tx)
                }
                let added = mappings.reduce(0) { $0 + $1.length }
                for w in written { try markWrittenLocked(p, start: w.start, count: w.count, tx) }
                if added > 0 || size != nil || mtime != nil {
                    try snapshotSizeThroughCtime(p, tx)
                    p.pointee.blocks.addSaturating(added * UInt64(blockSize / 512))
                    if let size { p.pointee.size = size }
                    if let mtime { p.pointee.mtime = mtime.persistent; p.pointee.ctime = mtime.persistent }
                }
            }
        }
    }
}
