import CPMDK
import PMFSMetadata

/// Pass 6: pool objects. Every allocated object (listed in pass 0) must have
/// been claimed by exactly the reference that owns it; passes 0 to 2 rejected
/// references to objects of the wrong type or size or already owned. What no
/// reference claims is a leak (an object of an unknown type always is): it is
/// freed, a bounded number per transaction.
extension CheckRun {
    func pass6Objects() {
        let leaked = objects.filter { $0.value.owner == nil }.keys.sorted()
        guard !leaked.isEmpty else { return }
        var pending: [Int] = []
        let shown = 50
        for off in leaked.prefix(shown) {
            let o = objects[off]!
            pending.append(found(.objectLeaked, "object at \(off) (\(typeName(o.type)), \(o.size) bytes) is allocated but nothing references it"))
        }
        if leaked.count > shown {
            pending.append(found(.objectLeaked, "and \(leaked.count - shown) more leaked objects"))
        }
        fix(pending) {
            var i = 0
            while i < leaked.count {
                let batch = leaked[i..<min(i + 256, leaked.count)]
                try transaction { tx in
                    for off in batch { try tx.free(off) }
                }
                for off in batch { objects[off] = nil }
                i += batch.count
            }
        }
    }

    /// Live inodes and directories, for the report.
    func tally() {
        liveInodes = 0
        directoryCount = 0
        for ino in 1..<max(capacity, 1) {
            guard let t = inodes[Int(ino)].type else { continue }
            liveInodes += 1
            if t == .directory { directoryCount += 1 }
        }
    }
}
