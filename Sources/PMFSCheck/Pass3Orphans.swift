import CPMDK
import PMFSMetadata

/// Pass 3a: the orphan list. From superblock.orphan_head, doubly linked through
/// orphan_next/orphan_prev: every member live, flagged PMFS_INODE_ORPHAN, named
/// by no directory entry (a directory also empty), reached once (no loops),
/// never the root.
/// Inodes flagged but not on the list, and stale links on inodes off it, are
/// damage too. The fix rewrites the list from the inodes that qualify, in list
/// order; pass 4 then sets their link counts to 0. Needs pass 2's entry counts.
extension CheckRun {
    func pass3Orphans() {
        var pending: [Int] = []
        let listed = walkOrphanList(&pending)
        var orphans = listedOrphans(listed, &pending)
        var touched = Set(listed)
        findUnlistedOrphans(listed: Set(listed), into: &orphans, touched: &touched, &pending)
        for ino in orphans { inodes[Int(ino)].orphan = true }
        fix(pending) { try rewriteOrphanList(orphans, clearing: touched) }
    }

    /// The inodes on the list from orphan_head, in order, up to the first link
    /// to a free inode or back into the list.
    private func walkOrphanList(_ pending: inout [Int]) -> [UInt64] {
        var listed: [UInt64] = []
        var seen = Set<UInt64>()
        var previous: UInt64 = 0
        var current = sb.pointee.orphan_head
        while current != 0 {
            let from = previous == 0 ? "the list head" : "inode \(previous)"
            guard isLive(current), let p = inode(current) else {
                pending.append(found(.orphanList, "orphan list: \(from) links to \(current < capacity ? "free inode" : "inode beyond the table:") \(current)"))
                break
            }
            guard seen.insert(current).inserted else {
                pending.append(found(.orphanList, "orphan list: \(from) links back to inode \(current) (a loop)"))
                break
            }
            if p.pointee.orphan_prev != previous {
                pending.append(found(.orphanList, "orphan list: inode \(current) has orphan_prev \(p.pointee.orphan_prev), should be \(previous)"))
            }
            listed.append(current)
            previous = current
            current = p.pointee.orphan_next
        }
        return listed
    }

    /// The listed inodes that qualify as orphans (unnamed, empty, not the root).
    private func listedOrphans(_ listed: [UInt64], _ pending: inout [Int]) -> [UInt64] {
        var orphans: [UInt64] = []
        for ino in listed {
            let info = inodes[Int(ino)]
            if ino == PMFS_ROOT_INO {
                // Never reclaimed, however empty (a recreated root is unnamed and empty).
                pending.append(found(.orphanLinked, "the root directory is on the orphan list"))
            } else if info.references > 0 {
                pending.append(found(.orphanLinked, "\(describe(ino)) is on the orphan list but has \(info.references) directory entries"))
            } else if info.type == .directory && (entryCounts[ino] ?? 0) > 0 {
                pending.append(found(.orphanLinked, "directory \(ino) is on the orphan list but holds \(entryCounts[ino]!) entries"))
            } else {
                if info.flags & PMFS_INODE_ORPHAN == 0 {
                    pending.append(found(.orphanFlag, "\(describe(ino)) is on the orphan list without the orphan flag"))
                }
                orphans.append(ino)
            }
        }
        return orphans
    }

    /// Inodes off the list with the orphan flag (an orphan whose list links
    /// were lost goes back on it) or with stale list links.
    private func findUnlistedOrphans(listed: Set<UInt64>, into orphans: inout [UInt64], touched: inout Set<UInt64>, _ pending: inout [Int]) {
        for ino in 1..<max(capacity, 1) where inodes[Int(ino)].type != nil && !listed.contains(ino) {
            let info = inodes[Int(ino)]
            guard let p = inode(ino) else { continue }
            if info.flags & PMFS_INODE_ORPHAN != 0 {
                let empty = info.type != .directory || (entryCounts[ino] ?? 0) == 0
                if ino != PMFS_ROOT_INO && info.references == 0 && p.pointee.nlink == 0 && empty {
                    pending.append(found(.orphanFlag, "\(describe(ino)) is flagged as an orphan but is not on the orphan list"))
                    orphans.append(ino)
                } else {
                    pending.append(found(.orphanFlag, "\(describe(ino)) is flagged as an orphan but has links"))
                }
                touched.insert(ino)
            } else if p.pointee.orphan_next != 0 || p.pointee.orphan_prev != 0 {
                pending.append(found(.orphanList, "\(describe(ino)) is not an orphan but has orphan links \(p.pointee.orphan_prev)/\(p.pointee.orphan_next)"))
                touched.insert(ino)
            }
        }
    }

    /// Links `orphans` into a list in that order and clears the flag and links
    /// of the other `touched` inodes; in the pool, then in the model.
    private func rewriteOrphanList(_ orphans: [UInt64], clearing touched: Set<UInt64>) throws {
        let keep = Set(orphans)
        try transaction { tx in
            for ino in touched.sorted() where !keep.contains(ino) {
                guard let p = inode(ino) else { continue }
                try tx.snapshot(p)
                p.pointee.flags &= ~PMFS_INODE_ORPHAN
                p.pointee.orphan_next = 0
                p.pointee.orphan_prev = 0
            }
            for (i, ino) in orphans.enumerated() {
                guard let p = inode(ino) else { continue }
                try tx.snapshot(p)
                p.pointee.flags |= PMFS_INODE_ORPHAN
                p.pointee.orphan_prev = i == 0 ? 0 : orphans[i - 1]
                p.pointee.orphan_next = i + 1 < orphans.count ? orphans[i + 1] : 0
            }
            try tx.snapshot(field(sb, \.orphan_head))
            sb.pointee.orphan_head = orphans.first ?? 0
        }
        for ino in touched where !keep.contains(ino) { inodes[Int(ino)].flags &= ~PMFS_INODE_ORPHAN }
        for ino in orphans { inodes[Int(ino)].flags |= PMFS_INODE_ORPHAN }
    }
}
