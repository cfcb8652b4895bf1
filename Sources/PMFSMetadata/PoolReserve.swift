import CPMDK
import Glibc
import SystemPackage

/// Pool space kept back for write-back. The write-back cache acknowledges a
/// write into a hole after reserving a data block, but committing it later also
/// needs pool space (extent-tree nodes, undo log). A reserve object set aside at
/// open is given up when a write-back commit finds the pool full, so that commit
/// succeeds; until a new reserve can be set aside, writes that would need pool
/// space fail with ENOSPC at write time instead of being lost later.
extension MetadataStore {
    /// The reserve's size: 1/8 of the pool, at most 4 MiB.
    var reserveBytes: Int { Int(min(UInt64(4 << 20), pool.size / 8)) }

    /// Sets a reserve aside if there is none; false if the pool has no room for it.
    @discardableResult
    func ensureReserve() -> Bool {
        reserveLock.withLock {
            let sb = pool.superblock
            if sb.pointee.reserve_off != 0 { return true }
            do {
                try pool.transaction { tx in
                    let off = try tx.allocate(size: reserveBytes, type: PMFS_T_RESERVE)
                    try tx.snapshot(field(sb, \.reserve_off))
                    sb.pointee.reserve_off = off
                }
                return true
            } catch {
                return false
            }
        }
    }

    /// Gives the reserve back to the pool; false if there was none.
    func releaseReserve() -> Bool {
        reserveLock.withLock {
            let sb = pool.superblock
            let off = sb.pointee.reserve_off
            guard off != 0 else { return false }
            do {
                try pool.transaction { tx in
                    try tx.snapshot(field(sb, \.reserve_off))
                    sb.pointee.reserve_off = 0
                    try tx.free(off)
                }
            } catch {
                return false
            }
            logger.warning("metadata pool \(pool.path) is full: its reserve was used to commit cached writes; new writes into holes get ENOSPC until space is freed")
            return true
        }
    }

    /// Whether writes that need pool space may be accepted now.
    func poolHasReserve() -> Bool {
        if reserveLock.withLock({ pool.superblock.pointee.reserve_off != 0 }) { return true }
        return ensureReserve()
    }
}
