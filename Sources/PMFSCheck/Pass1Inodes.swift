import CPMDK
import Glibc
import PMFSMetadata

/// Pass 1: the inode table, then every inode: its mode, flags, and the objects
/// only it references (directory index header, extent tree, symlink target,
/// xattr blob), each checked for type and size and claimed for this inode.
/// Extent trees are walked here (Pass1ExtentTrees.swift); blocks two files
/// share are found in pass 1b.
extension CheckRun {
    static let chunkBytes = Int(PMFS_INODES_PER_CHUNK) * MemoryLayout<pmfs_inode>.stride

    func pass1Inodes() -> Bool {
        guard let table else { fatal = "inode table unreadable"; return false }
        let offsets = cpmdk_inode_table_chunks(table)!
        let count = checkChunkCount(table, offsets)
        claimChunks(offsets, count: count)
        clearSlotsPastCount(offsets, count: count)
        checkInodeSlots(chunkCount: count)
        checkRoot()
        return true
    }

    /// The table's chunk count, repaired when it is out of range or counts
    /// slots past the last usable chunk.
    private func checkChunkCount(_ table: UnsafeMutablePointer<pmfs_inode_table>, _ offsets: UnsafeMutablePointer<UInt64>) -> Int {
        let maxChunks = Int(PMFS_MAX_INODE_CHUNKS)
        var count = Int(clamping: table.pointee.chunk_count)
        if count == 0 || count > maxChunks {
            // Keep the valid chunks at the front; at least chunk 0 (the root's).
            var n = 0
            while n < maxChunks && validate(offsets[n], PMFS_T_INODE_CHUNK, minSize: Self.chunkBytes) == nil { n += 1 }
            let keep = max(n, 1)
            found(.tableChunkCount, "inode table claims \(table.pointee.chunk_count) chunks (1 to \(maxChunks)); \(n) valid chunks lead it") {
                try update(field(table, \.chunk_count)) { $0 = UInt64(keep) }
            }
            count = keep
        } else {
            // A count past chunks that were never made (none usable to the end,
            // whether zero or scribbled): lower the count rather than make
            // thousands of empty chunks. The slots past it are cleared below.
            let keep = usableChunkPrefix(offsets, count)
            if keep < count {
                found(.tableChunkCount, "inode table claims \(count) chunks; chunks \(keep) to \(count - 1) hold no usable chunk") {
                    try update(field(table, \.chunk_count)) { $0 = UInt64(keep) }
                }
                count = keep
            }
        }
        return count
    }

    /// Claims the chunk each slot below `count` names; a bad slot gets back the
    /// stray chunk that surely was its own, or else a new, empty chunk.
    private func claimChunks(_ offsets: UnsafeMutablePointer<UInt64>, count: Int) {
        chunks = Array(repeating: nil, count: count)
        var bad: [(chunk: Int, why: ReferenceProblem)] = []
        for c in 0..<count {
            if let why = claim(offsets[c], PMFS_T_INODE_CHUNK, minSize: Self.chunkBytes, owner: 0) {
                bad.append((c, why))
            } else {
                chunks[c] = try? pool.pointer(offsets[c])
            }
        }
        var strays = strayInodeChunks()
        for (c, why) in bad {
            let first = UInt64(c) * UInt64(PMFS_INODES_PER_CHUNK)
            let what = "inode chunk \(c) (inodes \(first)-\(first + UInt64(PMFS_INODES_PER_CHUNK) - 1)): \(why)"
            if let stray = strayChunk(for: c, among: strays, badCount: bad.count) {
                // The slot lost its pointer, not the chunk: put the chunk back.
                strays.removeAll { $0 == stray }
                _ = claim(stray, PMFS_T_INODE_CHUNK, minSize: Self.chunkBytes, owner: 0)
                chunks[c] = try? pool.pointer(stray)
                found(.tableChunkFound, "\(what); object at \(stray) is an inode chunk nothing references") {
                    try update(offsets + c) { $0 = stray }
                }
                continue
            }
            found(.tableChunkBad, what) {
                try transaction { tx in
                    let new = try tx.allocate(size: Self.chunkBytes, type: PMFS_T_INODE_CHUNK)
                    try tx.snapshot(offsets + c)
                    offsets[c] = new
                    chunks[c] = try pool.pointer(new)
                }
            }
        }
    }

    /// Slots past the count must be empty.
    private func clearSlotsPastCount(_ offsets: UnsafeMutablePointer<UInt64>, count: Int) {
        for c in count..<Int(PMFS_MAX_INODE_CHUNKS) where offsets[c] != 0 {
            found(.tableStaleChunk, "inode table slot \(c) beyond chunk_count \(count) holds offset \(offsets[c])") {
                try update(offsets + c) { $0 = 0 }
            }
        }
    }

    /// Every inode slot: free ones must be clear, live ones are checked.
    private func checkInodeSlots(chunkCount count: Int) {
        inodes = Array(repeating: InodeInfo(), count: count * Int(PMFS_INODES_PER_CHUNK))
        for ino in 0..<capacity {
            if ino % 100_000 == 0 && ino > 0 { progress("Pass 1: \(ino) of \(capacity) inode slots") }
            guard let p = inode(ino) else { continue }
            if ino == 0 || p.pointee.mode == 0 {
                guard !isClear(p) else { continue }
                if ino == 0 {
                    found(.inodeZeroUsed, "inode 0 (never used) is not clear (mode 0o\(String(p.pointee.mode, radix: 8)))") {
                        try transaction { try clearInode(p, $0) }
                    }
                } else {
                    found(.freeInodeDirty, "free inode \(ino) (mode 0) has stale fields") {
                        try transaction { try clearInode(p, $0) }
                    }
                }
                continue
            }
            checkInode(ino, p)
        }
    }

    /// Inode-chunk objects no table slot names (after the slots claimed theirs).
    private func strayInodeChunks() -> [UInt64] {
        objects.filter { $0.value.type == UInt64(PMFS_T_INODE_CHUNK.rawValue) && $0.value.size >= Self.chunkBytes && $0.value.owner == nil }
            .keys.sorted()
    }

    /// The stray chunk that surely belongs in bad slot `c`: the only stray for
    /// the only bad slot, or for chunk 0 the only stray whose inode 1 is a
    /// directory that is its own parent (the root). Otherwise none.
    private func strayChunk(for c: Int, among strays: [UInt64], badCount: Int) -> UInt64? {
        if badCount == 1 && strays.count == 1 { return strays[0] }
        guard c == 0 else { return nil }
        let roots = strays.filter { off in
            guard let base: UnsafeMutablePointer<pmfs_inode> = try? pool.pointer(off, count: Int(PMFS_INODES_PER_CHUNK)) else { return false }
            let root = base[Int(PMFS_ROOT_INO)]
            return FileType(mode: root.mode) == .directory && root.parent == PMFS_ROOT_INO
        }
        return roots.count == 1 ? roots[0] : nil
    }

    /// One past the last slot below `count` holding an inode chunk that no
    /// earlier slot names (at least 1: chunk 0 holds the root).
    private func usableChunkPrefix(_ offsets: UnsafeMutablePointer<UInt64>, _ count: Int) -> Int {
        var seen = Set<UInt64>()
        var end = 1
        for c in 0..<count {
            let off = offsets[c]
            guard validate(off, PMFS_T_INODE_CHUNK, minSize: Self.chunkBytes) == nil, seen.insert(off).inserted else { continue }
            end = c + 1
        }
        return end
    }

    /// A free slot: everything zero but the generation.
    private func isClear(_ p: UnsafeMutablePointer<pmfs_inode>) -> Bool {
        let raw = UnsafeRawBufferPointer(start: p, count: MemoryLayout<pmfs_inode>.size)
        let generation = MemoryLayout<pmfs_inode>.offset(of: \.generation)!
        for (i, b) in raw.enumerated() where b != 0 && !(generation..<generation + 8).contains(i) { return false }
        return true
    }

    private func checkInode(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>) {
        let mode = p.pointee.mode
        let type = FileType(mode: mode)
        if type == .unknown || mode & ~UInt32(S_IFMT | 0o7777) != 0 {
            found(.inodeBadMode, "inode \(ino) has invalid mode 0o\(String(mode, radix: 8))") {
                try transaction { try clearInode(p, $0) }
            }
            return
        }
        var info = InodeInfo(type: type, nlink: p.pointee.nlink, flags: p.pointee.flags)
        let unknownFlags = p.pointee.flags & ~PMFS_INODE_FLAGS_KNOWN
        if unknownFlags != 0 {
            found(.inodeFlags, "inode \(ino) has unknown flags 0x\(String(unknownFlags, radix: 16))") {
                try update(field(p, \.flags)) { $0 &= PMFS_INODE_FLAGS_KNOWN }
            }
            info.flags &= PMFS_INODE_FLAGS_KNOWN
        }

        switch type {
        case .directory:
            let off = p.pointee.content_off
            if let why = claim(off, PMFS_T_DIRECTORY, minSize: MemoryLayout<pmfs_directory>.size, owner: ino) {
                var replacement: UInt64 = 0
                found(.directoryObject, "directory \(ino): index \(why)") {
                    try transaction { tx in
                        replacement = try DirectoryIndex.create(in: tx)
                        try tx.snapshot(field(p, \.content_off))
                        p.pointee.content_off = replacement
                    }
                }
                info.directoryOffset = replacement
            } else {
                info.directoryOffset = off
            }
        case .regular:
            checkExtentTree(ino, p)
            if p.pointee.size > MetadataStore.maxFileSize {
                // The engine refuses such a file (EIO); the extents say how far it reaches.
                let end = (extents[ino]?.last).map { ($0.fileBlock + $0.length) * 4096 } ?? 0
                found(.inodeFields, "regular file \(ino) has size \(p.pointee.size), past the largest file (\(MetadataStore.maxFileSize))") {
                    try update(field(p, \.size)) { $0 = end }
                }
            }
        case .symbolicLink:
            guard checkSymlink(ino, p) else { return }
        default:
            if p.pointee.content_off != 0 {
                found(.specialContent, "\(type) inode \(ino) references content at offset \(p.pointee.content_off)") {
                    try update(field(p, \.content_off)) { $0 = 0 }
                }
            }
        }
        if type != .regular {
            let sizeWrong = p.pointee.size != 0 && type != .symbolicLink
            if sizeWrong || p.pointee.blocks != 0 || p.pointee.extent_count != 0 {
                found(.inodeFields, "\(type) inode \(ino) has size \(p.pointee.size), blocks \(p.pointee.blocks), extent_count \(p.pointee.extent_count)") {
                    try transaction { tx in
                        try tx.snapshot(p)
                        if sizeWrong { p.pointee.size = 0 }
                        p.pointee.blocks = 0
                        p.pointee.extent_count = 0
                    }
                }
            }
        }
        checkXattrs(ino, p)
        inodes[Int(ino)] = info
    }

    /// A symlink's target: a blob of 1...4095 bytes without NUL, its length the
    /// inode's size. A target that cannot be read clears the inode (as e2fsck).
    private func checkSymlink(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>) -> Bool {
        let off = p.pointee.content_off
        var reason: String?
        var length: UInt64 = 0
        if let why = validate(off, PMFS_T_SYMLINK, minSize: 8) {
            reason = "target \(why)"
        } else if let blob: UnsafeMutablePointer<pmfs_blob> = try? pool.pointer(off) {
            length = blob.pointee.length
            let room = UInt64(objects[off]!.size - 8)
            if length == 0 || length > UInt64(MetadataStore.maxSymlinkLength) || length > room {
                reason = "target blob at \(off) claims \(length) bytes (1 to \(MetadataStore.maxSymlinkLength), \(room) stored)"
            } else if UnsafeRawBufferPointer(start: UnsafeRawPointer(blob) + 8, count: Int(length)).contains(0) {
                reason = "target contains a NUL byte"
            } else if let why = claim(off, PMFS_T_SYMLINK, minSize: 8, owner: ino) {
                reason = "target \(why)"
            }
        } else {
            reason = "target at \(off) unreadable"
        }
        if let reason {
            found(.symlinkBad, "symlink \(ino): \(reason)") {
                try transaction { try clearInode(p, $0) }
            }
            return false
        }
        if p.pointee.size != length {
            found(.symlinkSize, "symlink \(ino): size \(p.pointee.size), target length \(length)") {
                try update(field(p, \.size)) { $0 = length }
            }
        }
        return true
    }

    /// The xattr blob: records of name length (1 byte), value length (4, LE),
    /// name, value; names valid for the engine, unique; at most 1 MiB in all.
    private func checkXattrs(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>) {
        let off = p.pointee.xattr_off
        guard off != 0 else { return }
        if let why = claim(off, PMFS_T_XATTRS, minSize: 8, owner: ino) {
            found(.xattrReference, "inode \(ino): xattr blob \(why)") {
                try update(field(p, \.xattr_off)) { $0 = 0 }
            }
            return
        }
        guard let raw = try? pool.raw(off, length: objects[off]!.size) else { return }
        let length = raw.load(as: UInt64.self)
        let room = objects[off]!.size - 8
        var damage: String?
        var usable = room
        if length > UInt64(room) || length > UInt64(MetadataStore.xattrTotalMax) {
            damage = "blob claims \(length) bytes, \(room) stored"
            usable = min(room, MetadataStore.xattrTotalMax)
        } else {
            usable = Int(length)
        }
        let bytes = UnsafeRawBufferPointer(start: raw + 8, count: usable)
        var records: [(name: [UInt8], value: [UInt8])] = []
        var names = Set<[UInt8]>()
        var i = 0
        while i < bytes.count {
            guard i + 5 <= bytes.count else { damage = damage ?? "record at byte \(i) truncated"; break }
            let nameLength = Int(bytes[i])
            let valueLength = Int(bytes[i + 1]) | Int(bytes[i + 2]) << 8 | Int(bytes[i + 3]) << 16 | Int(bytes[i + 4]) << 24
            guard nameLength > 0, valueLength <= MetadataStore.xattrValueMax, i + 5 + nameLength + valueLength <= bytes.count else {
                damage = damage ?? "record at byte \(i) has name length \(nameLength), value length \(valueLength)"
                break
            }
            let name = Array(bytes[(i + 5)..<(i + 5 + nameLength)])
            if (try? MetadataStore.validateXattrName(name)) == nil {
                damage = damage ?? "record at byte \(i) has an invalid name"
                break
            }
            guard names.insert(name).inserted else {
                damage = damage ?? "record at byte \(i) repeats the name \(String(decoding: name, as: UTF8.self))"
                break
            }
            records.append((name, Array(bytes[(i + 5 + nameLength)..<(i + 5 + nameLength + valueLength)])))
            i += 5 + nameLength + valueLength
        }
        guard let damage else { return }
        found(.xattrBlob, "inode \(ino): xattr blob at \(off): \(damage); \(records.count) record(s) before it") {
            try transaction { tx in
                let encoded = MetadataStore.encodeXattrs(records)
                try tx.snapshot(field(p, \.xattr_off))
                p.pointee.xattr_off = encoded.isEmpty ? 0 : try DirectoryIndex.storeBlob(encoded, type: PMFS_T_XATTRS, in: tx)
                try tx.free(off)
            }
            // Freed here, so pass 6 must not see it again.
            objects[off] = nil
        }
    }

    /// The root must be a live directory; if not, an empty one replaces it and
    /// pass 3 reconnects what hung below the old one.
    private func checkRoot() {
        let root = Int(PMFS_ROOT_INO)
        guard inodes.count > root, inodes[root].type != .directory else { return }
        let what = inodes.count > root && inodes[root].type != nil ? "inode 1 (the root) is not a directory" : "the root directory (inode 1) is missing"
        var offset: UInt64 = 0
        found(.rootMissing, what) {
            guard let p = inode(PMFS_ROOT_INO) else { throw PoolError.corrupt("inode chunk 0 unreadable") }
            releaseClaims(of: PMFS_ROOT_INO)
            try transaction { tx in
                try clearInode(p, tx)
                let now = Timestamp.now()
                let t = pmfs_timespec(sec: now.seconds, nsec: now.nanoseconds, reserved: 0)
                p.pointee.mode = UInt32(S_IFDIR) | 0o755
                p.pointee.nlink = 2
                p.pointee.generation += 1
                p.pointee.parent = PMFS_ROOT_INO
                p.pointee.atime = t; p.pointee.mtime = t; p.pointee.ctime = t; p.pointee.btime = t
                offset = try DirectoryIndex.create(in: tx)
                p.pointee.content_off = offset
            }
        }
        inodes[root] = InodeInfo(type: .directory, nlink: 2, directoryOffset: offset)
    }
}
