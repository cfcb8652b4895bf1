import CPMDK
import PMFSConcurrency
import SystemPackage

/// Reference counts of data blocks shared by more than one extent (clones).
///
/// Only shared blocks have a record, as in XFS's refcount btree: a block in
/// use with no record has one owner. The records live in a B+-tree of the
/// extent-tree node type keyed by device block, whose value is the "extent"
/// { device_block = key, length, flags = owners }; the superblock holds its
/// root. Every record is checked when read (inside the data area, owners
/// >= 2, key == device block): a damaged table is `PoolError.corrupt`, EIO.
///
/// The table is part of the space map and shares its lock: callers change
/// counts inside the transaction that changes the extent maps, which holds the
/// space-map lock until it ends; readers outside a transaction take it for the
/// lookup.
final class SharedBlocks: @unchecked Sendable {
    let tree: ExtentTree
    let lock: Lock
    /// A block may have at most this many owners (the record's 32-bit count).
    static let maxOwners = UInt64(UInt32.max)

    struct Piece: Equatable {
        var start: UInt64
        var length: UInt64
        var owners: UInt64
    }

    init(pool: PersistentPool, superblock sb: UnsafeMutablePointer<pmfs_superblock>, dataArea: Range<UInt64>, lock: Lock) {
        self.lock = lock
        tree = ExtentTree(pool: pool, root: field(sb, \.refcount_root), count: field(sb, \.refcount_records),
                          dataArea: dataArea, nodeType: PMFS_T_REFCOUNT_NODE)
    }

    /// No block is shared: the common case costs one load.
    var isEmpty: Bool { tree.rootSlot.pointee == 0 }

    private func record(_ e: ExtentTree.Entry) throws -> Piece {
        guard e.deviceBlock == e.fileBlock, e.flags >= 2 else {
            throw PoolError.corrupt("refcount record at device block \(e.fileBlock) (device \(e.deviceBlock), \(e.flags) owners) is damaged")
        }
        return Piece(start: e.fileBlock, length: e.length, owners: UInt64(e.flags))
    }

    /// Owners of every block of [start, start+length), as runs in order
    /// (runs without a record have one owner). `lock` held.
    func piecesLocked(_ start: UInt64, _ length: UInt64) throws -> [Piece] {
        let end = start.addingClamped(length)
        guard start < end else { return [] }
        var result: [Piece] = []
        var position = start
        for e in try tree.overlapping(start, end) {
            let r = try record(e)
            guard r.start + r.length > position else { throw PoolError.corrupt("refcount records overlap at device block \(r.start)") }
            if r.start > position { result.append(Piece(start: position, length: r.start - position, owners: 1)); position = r.start }
            let pieceEnd = min(r.start + r.length, end)
            result.append(Piece(start: position, length: pieceEnd - position, owners: r.owners))
            position = pieceEnd
        }
        if position < end { result.append(Piece(start: position, length: end - position, owners: 1)) }
        return result
    }

    func pieces(_ start: UInt64, _ length: UInt64) throws -> [Piece] {
        if isEmpty { return [Piece(start: start, length: length, owners: 1)] }
        return try lock.withLock { try piecesLocked(start, length) }
    }

    /// Adds one owner to every block of [start, start+length) in `tx`.
    func addOwner(_ start: UInt64, _ length: UInt64, in tx: Transaction) throws {
        _ = try change(start, length, by: 1, in: tx)
    }

    /// Removes one owner from every block of [start, start+length) in `tx` and
    /// returns the runs that lost their last owner (the caller frees them).
    func removeOwner(_ start: UInt64, _ length: UInt64, in tx: Transaction) throws -> [BlockRun] {
        tx.hold(.spaceMap, lock)
        if isEmpty { return [BlockRun(start: start, length: length)] }
        return try change(start, length, by: -1, in: tx)
    }

    /// Rewrites the records over [start, end): the parts of records outside it
    /// keep their count, each piece inside gets `delta` more owners; a count of
    /// 1 needs no record and 0 means free.
    private func change(_ start: UInt64, _ length: UInt64, by delta: Int, in tx: Transaction) throws -> [BlockRun] {
        tx.hold(.spaceMap, lock)
        guard length > 0 else { return [] }
        let end = start.addingClamped(length)
        var records: [Piece] = []
        for e in try tree.overlapping(start, end) { records.append(try record(e)) }
        let inside = try piecesLocked(start, length)
        for r in records { try tree.remove(r.start, in: tx) }
        for r in records {
            if r.start < start { try put(Piece(start: r.start, length: start - r.start, owners: r.owners), tx) }
            if r.start + r.length > end { try put(Piece(start: end, length: r.start + r.length - end, owners: r.owners), tx) }
        }
        var freed: [BlockRun] = []
        for p in inside {
            var owners = p.owners
            if delta > 0 {
                guard owners < Self.maxOwners else { throw Errno.tooManyLinks }
                owners += 1
            } else {
                owners -= 1
            }
            if owners == 0 { freed.append(BlockRun(start: p.start, length: p.length)) }
            try put(Piece(start: p.start, length: p.length, owners: owners), tx)
        }
        return freed
    }

    /// Records `p` if its blocks are shared (records are at most 2^32-1 blocks).
    private func put(_ p: Piece, _ tx: Transaction) throws {
        guard p.owners >= 2 else { return }
        var at = p.start
        let end = p.start + p.length
        while at < end {
            let n = min(end - at, UInt64(UInt32.max))
            try tree.insert(ExtentTree.Entry(fileBlock: at, deviceBlock: at, length: n, flags: UInt32(p.owners)), in: tx)
            at += n
        }
    }

    /// Every record in order (fsck, inspection).
    func allRecords() throws -> [Piece] {
        try lock.withLock {
            var result: [Piece] = []
            try tree.forEach { result.append(try record($0)) }
            return result
        }
    }
}
