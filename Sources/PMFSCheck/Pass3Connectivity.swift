import CPMDK
import PMFSMetadata

/// Pass 3b: the directory tree. Every directory but the root is named by
/// exactly one entry (extra entries are removed, keeping the one its `parent`
/// field agrees with); every directory is reachable from the root; a group of
/// directories that only reach each other (a cycle) is broken at one entry and
/// reconnected under /lost+found, as is every other unreachable directory and
/// every inode no entry names that is not an orphan. Finally each directory's
/// `parent` must be the directory that names it (the root's is itself).
extension CheckRun {
    /// Stands for a /lost+found that -n would create.
    static let plannedLostFound = UInt64.max

    func pass3Connectivity() {
        keepOneEntryPerDirectory()
        reconnectUnreachableDirectories()
        checkParentFields()
        reconnectUnattachedInodes()
    }

    /// A directory named by several entries keeps the one its `parent` agrees with.
    private func keepOneEntryPerDirectory() {
        for dir in parentEntries.keys.sorted() {
            guard let locations = parentEntries[dir], locations.count > 1 else { continue }
            let parentField = inode(dir)?.pointee.parent
            let keep = locations.first { $0.directory == parentField } ?? locations[0]
            let extra = locations.filter { $0 != keep }
            let list = locations.map { String($0.directory) }.joined(separator: ", ")
            found(.directoryMultiplyLinked, "directory \(dir) is named by \(locations.count) entries (in directories \(list)); keeping the one in \(keep.directory)") {
                for loc in extra { try removeEntry(loc) }
            }
            for loc in extra { forgetEntry(loc, naming: dir) }
        }
    }

    /// Every directory reachable from the root: an unreachable one is walked up
    /// to the top of its chain (or the entry closing a loop, which goes) and
    /// that top is linked into /lost+found.
    private func reconnectUnreachableDirectories() {
        var reachable = [Bool](repeating: false, count: Int(capacity))
        func mark(_ start: UInt64) {
            var stack = [start]
            while let d = stack.popLast() {
                guard d < UInt64(reachable.count), !reachable[Int(d)] else { continue }
                reachable[Int(d)] = true
                stack.append(contentsOf: childDirectories[d] ?? [])
            }
        }
        mark(PMFS_ROOT_INO)
        for ino in 2..<max(capacity, 2) where inodes[Int(ino)].type == .directory && !reachable[Int(ino)] && !inodes[Int(ino)].orphan {
            switch chainTop(of: ino, reachable: reachable) {
            case .attached(let top):
                mark(top)
            case .loop(let top, let cut, let path):
                let start = path.firstIndex(of: cut.directory) ?? 0
                let cycle = path[start...].map(String.init).joined(separator: " -> ")
                found(.directoryLoop, "directories \(cycle) -> \(cut.directory) name each other in a loop unreachable from the root; the entry for \(top) in \(cut.directory) goes") {
                    try removeEntry(cut)
                    try reconnect(top)
                }
                forgetEntry(cut, naming: top)
                noteReconnected(top)
                mark(top)
            case .unnamed(let top):
                found(.directoryUnreachable, "directory \(top) is not reachable from the root (no entry names it)") {
                    try reconnect(top)
                }
                noteReconnected(top)
                mark(top)
            }
        }
    }

    /// Where the entries naming an unreachable directory lead, walked upwards.
    private enum ChainTop {
        /// Below a directory already reachable (reconnected, or /lost+found itself).
        case attached(UInt64)
        /// The walk came back to `path`: the entry `cut` for `top` closes the loop.
        case loop(top: UInt64, cut: EntryLocation, path: [UInt64])
        /// `top` is named by no entry.
        case unnamed(UInt64)
    }

    /// Walks up the entries that name `ino` until one is named by nobody, one is
    /// reachable, or the walk loops.
    private func chainTop(of ino: UInt64, reachable: [Bool]) -> ChainTop {
        var path = [ino]
        var onPath: Set<UInt64> = [ino]
        var top = ino
        while let loc = parentEntries[top]?.first {
            if onPath.contains(loc.directory) { return .loop(top: top, cut: loc, path: path) }
            if loc.directory >= UInt64(reachable.count) || reachable[Int(loc.directory)] { return .attached(top) }
            top = loc.directory
            path.append(top)
            onPath.insert(top)
        }
        return .unnamed(top)
    }

    /// Each directory's `parent` is the directory that names it (the root's is itself).
    private func checkParentFields() {
        for ino in 1..<max(capacity, 1) where inodes[Int(ino)].type == .directory && !inodes[Int(ino)].orphan {
            let expected = ino == PMFS_ROOT_INO ? PMFS_ROOT_INO : parentEntries[ino]?.first?.directory
            guard let expected, expected != Self.plannedLostFound, let p = inode(ino) else { continue }
            if p.pointee.parent != expected {
                found(.directoryParent, "directory \(ino): its parent ('..') is \(p.pointee.parent), the entry naming it is in \(expected)") {
                    try update(field(p, \.parent)) { $0 = expected }
                }
            }
        }
    }

    /// Inodes no entry names, other than orphans, go into /lost+found.
    private func reconnectUnattachedInodes() {
        for ino in 2..<max(capacity, 2) {
            let info = inodes[Int(ino)]
            guard let type = info.type, type != .directory, info.references == 0, !info.orphan else { continue }
            let size = inode(ino)?.pointee.size ?? 0
            found(.inodeUnattached, "\(describe(ino)) (size \(size)) is in no directory and not an orphan") {
                try reconnect(ino)
            }
            noteReconnected(ino)
        }
    }

    // MARK: model updates (both modes)

    /// The model after an entry for `ino` in `loc.directory` is removed.
    func forgetEntry(_ loc: EntryLocation, naming ino: UInt64) {
        if var children = childDirectories[loc.directory], let i = children.firstIndex(of: ino) {
            children.remove(at: i)
            childDirectories[loc.directory] = children
        }
        parentEntries[ino]?.removeAll { $0 == loc }
        entryCounts[loc.directory, default: 1] -= 1
        inodes[Int(ino)].references -= 1
    }

    /// The model after `ino` is linked into /lost+found (or would be, with -n).
    func noteReconnected(_ ino: UInt64) {
        let lf = reconnectedTo[ino] ?? lostFound ?? Self.plannedLostFound
        inodes[Int(ino)].references += 1
        entryCounts[lf, default: 0] += 1
        if inodes[Int(ino)].type == .directory {
            childDirectories[lf, default: []].append(ino)
            parentEntries[ino] = [EntryLocation(directory: lf, slot: reconnectedSlot[ino] ?? 0)]
        }
    }
}
