import CPMDK
import PMFSMetadata

/// Pass 4: link counts against the (repaired) namespace. A directory has
/// 2 + its subdirectories (the root included: its ".." is itself); any other
/// inode one link per entry naming it; an orphan none.
extension CheckRun {
    func pass4LinkCounts() {
        for ino in 1..<max(capacity, 1) {
            let info = inodes[Int(ino)]
            guard let type = info.type else { continue }
            let expected: UInt64
            if info.orphan {
                expected = 0
            } else if type == .directory {
                expected = 2 + UInt64(childDirectories[ino]?.count ?? 0)
            } else {
                expected = UInt64(info.references)
            }
            let p = inode(ino)
            let actual = UInt64(p?.pointee.nlink ?? info.nlink)
            guard actual != expected else { continue }
            found(.linkCount, "\(describe(ino)) has link count \(actual), should be \(expected)") {
                guard let p else { throw PoolError.corrupt("inode \(ino) unreadable") }
                try update(field(p, \.nlink)) { $0 = UInt32(clamping: expected) }
            }
        }
    }
}
