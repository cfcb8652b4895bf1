import CPMDK
import Glibc
import PMFSMetadata

/// Repairs that change directories through the engine's own DirectoryIndex
/// (so the result is exactly what the engine would have written): removing an
/// entry, creating /lost+found, and linking an inode into it as "#ino".
/// Only called from fixes, so only with `repair`, after pass 2 made the
/// directories involved consistent.
extension CheckRun {
    func directoryIndex(_ ino: UInt64) throws -> (UnsafeMutablePointer<pmfs_inode>, DirectoryIndex) {
        guard indexUsable.contains(ino), let p = inode(ino) else {
            throw PoolError.corrupt("directory \(ino) could not be repaired, so it cannot be changed")
        }
        return (p, try DirectoryIndex(pool: pool, offset: p.pointee.content_off, seed: seed))
    }

    func removeEntry(_ loc: EntryLocation) throws {
        let (_, dir) = try directoryIndex(loc.directory)
        try transaction { tx in try dir.remove(slot: loc.slot, in: tx) }
    }

    /// Links `ino` into /lost+found (creating it first if needed) as "#ino".
    func reconnect(_ ino: UInt64) throws {
        guard let type = inodes[Int(ino)].type, let child = inode(ino) else { throw PoolError.corrupt("inode \(ino) unreadable") }
        let lf = try ensureLostFound()
        let (lfInode, dir) = try directoryIndex(lf)
        var name = try FileName("#\(ino)")
        var n = 0
        while try dir.find(name) != nil {
            n += 1
            name = try FileName("#\(ino).\(n)")
        }
        try transaction { tx in
            try dir.insert(name, ino: ino, type: type, in: tx)
            if type == .directory {
                try tx.snapshot(field(child, \.parent))
                child.pointee.parent = lf
                try tx.snapshot(field(lfInode, \.nlink))
                lfInode.pointee.nlink += 1
            }
        }
        reconnectedTo[ino] = lf
        reconnectedSlot[ino] = try dir.find(name)
    }

    /// The directory named "lost+found" in the root, created if missing.
    func ensureLostFound() throws -> UInt64 {
        if let lf = lostFound, isLive(lf), inodes[Int(lf)].type == .directory { return lf }
        let index = found(.lostAndFound, "/lost+found is missing")
        var created: (ino: UInt64, name: FileName, offset: UInt64)?
        fix([index]) {
            let (rootInode, rootDir) = try directoryIndex(PMFS_ROOT_INO)
            var name = try FileName("lost+found")
            var n = 0
            while try rootDir.find(name) != nil {
                n += 1
                name = try FileName("lost+found.\(n)")
            }
            try transaction { tx in
                let (ino, p) = try allocateInode(tx)
                let now = Timestamp.now()
                let t = pmfs_timespec(sec: now.seconds, nsec: now.nanoseconds, reserved: 0)
                p.pointee.mode = UInt32(S_IFDIR) | 0o700
                p.pointee.nlink = 2
                p.pointee.parent = PMFS_ROOT_INO
                p.pointee.atime = t; p.pointee.mtime = t; p.pointee.ctime = t; p.pointee.btime = t
                p.pointee.content_off = try DirectoryIndex.create(in: tx)
                try rootDir.insert(name, ino: ino, type: .directory, in: tx)
                try tx.snapshot(field(rootInode, \.nlink))
                rootInode.pointee.nlink += 1
                created = (ino, name, p.pointee.content_off)
            }
        }
        guard let created else { throw PoolError.corrupt("cannot create /lost+found") }
        let (_, rootDir) = try directoryIndex(PMFS_ROOT_INO)
        let slot = try rootDir.find(created.name) ?? 0
        inodes[Int(created.ino)] = InodeInfo(type: .directory, nlink: 2, directoryOffset: created.offset, references: 1)
        childDirectories[PMFS_ROOT_INO, default: []].append(created.ino)
        parentEntries[created.ino] = [EntryLocation(directory: PMFS_ROOT_INO, slot: slot)]
        entryCounts[PMFS_ROOT_INO, default: 0] += 1
        entryCounts[created.ino] = 0
        indexUsable.insert(created.ino)
        lostFound = created.ino
        return created.ino
    }

    /// A free inode slot, initialized in `tx` (generation bumped); grows the
    /// table by a chunk if every slot is taken.
    func allocateInode(_ tx: Transaction) throws -> (UInt64, UnsafeMutablePointer<pmfs_inode>) {
        var choice: (UInt64, UnsafeMutablePointer<pmfs_inode>)?
        for ino in 2..<max(capacity, 2) where inodes[Int(ino)].type == nil {
            if let p = inode(ino), p.pointee.mode == 0 { choice = (ino, p); break }
        }
        if choice == nil {
            let c = chunks.count
            guard c < Int(PMFS_MAX_INODE_CHUNKS), let table else { throw PoolError.corrupt("inode table full") }
            let off = try tx.allocate(size: Self.chunkBytes, type: PMFS_T_INODE_CHUNK)
            let offsets = cpmdk_inode_table_chunks(table)!
            try tx.snapshot(offsets + c)
            offsets[c] = off
            try tx.snapshot(field(table, \.chunk_count))
            table.pointee.chunk_count = UInt64(c + 1)
            let base: UnsafeMutablePointer<pmfs_inode> = try pool.pointer(off)
            chunks.append(base)
            inodes.append(contentsOf: repeatElement(InodeInfo(), count: Int(PMFS_INODES_PER_CHUNK)))
            let ino = UInt64(c) * UInt64(PMFS_INODES_PER_CHUNK)
            choice = (ino, base)
        }
        let (ino, p) = choice!
        try tx.snapshot(p)
        let generation = p.pointee.generation + 1
        p.pointee = pmfs_inode()
        p.pointee.generation = generation
        return (ino, p)
    }
}
