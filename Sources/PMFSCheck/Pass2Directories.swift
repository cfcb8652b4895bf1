import CPMDK
import PMFSMetadata

/// Pass 2: every directory's index and entries.
///
/// The index: hashing state consistent (bucket_count = (16 << level) + split),
/// the slot and bucket chunks that slot_count and bucket_count need are objects
/// of the right type and size owned by this directory, no chunk beyond them.
/// Each live slot: a name of 1...255 bytes without '/' or NUL (a long name in
/// its own blob), its stored hash the seeded hash of the name, a live target
/// that is neither the root nor the directory itself, the type of the target,
/// no other entry of the same name. Every kept slot lies on exactly the chain
/// its hash addresses (no loops, no strays); every free slot on the free list;
/// entry_count and subdir_count count the kept entries.
///
/// Any problem is fixed by one rewrite of the directory in one transaction:
/// dropped slots cleared, hashes and types set, chains and free list rebuilt
/// from the slots, counts set. Slots never move, so readdir cookies survive.
extension CheckRun {
    static let dirChunks = Int(PMFS_DIR_MAX_CHUNKS)
    static let maxSlots = UInt64(PMFS_DIR_CHUNK0) * ((1 << UInt64(PMFS_DIR_MAX_CHUNKS)) - 1)

    static func chunkStart(_ k: Int) -> UInt64 { UInt64(PMFS_DIR_CHUNK0) * ((1 << UInt64(k)) - 1) }

    static func bucketIndex(_ hash: UInt32, level: UInt32, split: UInt64) -> UInt64 {
        let n0 = UInt64(PMFS_DIR_CHUNK0) << UInt64(level)
        var b = UInt64(hash) % n0
        if b < split { b = UInt64(hash) % (n0 * 2) }
        return b
    }

    func pass2Directories() {
        var scanned = 0
        for ino in 0..<capacity where inodes[Int(ino)].type == .directory {
            scanned += checkDirectory(ino)
            if scanned >= 100_000 {
                progress("Pass 2: directory \(ino) of \(capacity) inode slots")
                scanned = 0
            }
        }
    }

    private struct Entry {
        var slot: UInt64
        var target: UInt64
        var name: [UInt8]
        var hash: UInt32
        var type: UInt8
        var hashWrong: Bool
        var typeWrong: Bool
    }

    /// Checks one directory; returns the slots it scanned (for progress).
    private func checkDirectory(_ ino: UInt64) -> Int {
        let off = inodes[Int(ino)].directoryOffset
        entryCounts[ino] = 0
        guard off != 0, let d: UnsafeMutablePointer<pmfs_directory> = try? pool.pointer(off) else { return 0 }
        let header = d.pointee
        var pending: [Int] = []
        var structural = false

        // Slot chunks: those below slot_count must be valid; a bad tail is cut off,
        // a bad chunk in the middle is replaced by an empty one.
        var slotCount = min(header.slot_count, Self.maxSlots)
        var slotChunks = [UnsafeMutablePointer<pmfs_dirent>?](repeating: nil, count: Self.dirChunks)
        var badSlotChunks: [Int] = []
        var staleSlotChunks: [Int] = []
        for k in 0..<Self.dirChunks {
            let coff = element(d, \.slot_chunk_off, k, as: UInt64.self).pointee
            if Self.chunkStart(k) < slotCount {
                if let why = claim(coff, PMFS_T_DIRENT_CHUNK, minSize: geometricChunkSize(k) * 64, owner: ino) {
                    badSlotChunks.append(k)
                    pending.append(found(.directoryChunk, "directory \(ino): slot chunk \(k) \(why)"))
                } else {
                    slotChunks[k] = try? pool.pointer(coff)
                }
            } else if coff != 0 {
                staleSlotChunks.append(k)
            }
        }
        if header.slot_count > Self.maxSlots {
            pending.append(found(.directoryHeader, "directory \(ino): slot_count \(header.slot_count) exceeds \(Self.maxSlots)"))
        }
        var replaceChunks: [Int] = []
        if let firstBad = badSlotChunks.first {
            structural = true
            let tailBad = (firstBad..<Self.dirChunks).allSatisfy { Self.chunkStart($0) >= slotCount || badSlotChunks.contains($0) }
            if tailBad {
                slotCount = Self.chunkStart(firstBad)
            } else {
                replaceChunks = badSlotChunks
            }
        }
        if slotCount != header.slot_count { structural = true }

        // Hashing state.
        var level = header.level, split = header.split, bucketCount = header.bucket_count
        let stateOK = level < PMFS_DIR_MAX_CHUNKS && split < (UInt64(PMFS_DIR_CHUNK0) << UInt64(level))
            && bucketCount == (UInt64(PMFS_DIR_CHUNK0) << UInt64(level)) + split
            // A split needs entry_count > 2 * bucket_count, and slot_count bounds entry_count.
            && bucketCount <= max(UInt64(PMFS_DIR_CHUNK0), slotCount / 2 + 1)
        if !stateOK {
            pending.append(found(.directoryHeader, "directory \(ino): level \(level), split \(split), bucket_count \(bucketCount) disagree"))
            level = 0; split = 0; bucketCount = UInt64(PMFS_DIR_CHUNK0)
            structural = true
        }

        // Bucket chunks below bucket_count may be absent (no chain ever there).
        var bucketChunks = [UnsafeMutablePointer<UInt64>?](repeating: nil, count: Self.dirChunks)
        var staleBucketChunks: [Int] = []
        for k in 0..<Self.dirChunks {
            let coff = element(d, \.bucket_chunk_off, k, as: UInt64.self).pointee
            guard coff != 0 else { continue }
            if Self.chunkStart(k) < bucketCount {
                if let why = claim(coff, PMFS_T_BUCKET_CHUNK, minSize: geometricChunkSize(k) * 8, owner: ino) {
                    pending.append(found(.directoryChunk, "directory \(ino): bucket chunk \(k) \(why)"))
                    structural = true
                } else {
                    bucketChunks[k] = try? pool.pointer(coff)
                }
            } else {
                staleBucketChunks.append(k)
            }
        }
        for k in staleSlotChunks {
            pending.append(found(.directoryStaleChunk, "directory \(ino): slot chunk \(k) at \(element(d, \.slot_chunk_off, k, as: UInt64.self).pointee) lies beyond slot_count \(slotCount)"))
        }
        for k in staleBucketChunks {
            pending.append(found(.directoryStaleChunk, "directory \(ino): bucket chunk \(k) at \(element(d, \.bucket_chunk_off, k, as: UInt64.self).pointee) lies beyond bucket_count \(bucketCount)"))
        }

        func slotPointer(_ s: UInt64) -> UnsafeMutablePointer<pmfs_dirent>? {
            guard s < slotCount else { return nil }
            let (k, o) = geometricChunk(s)
            return slotChunks[k].map { $0 + o }
        }

        // The slots.
        var kept: [Entry] = []
        var dropped: [UInt64] = []
        var names = Set<[UInt8]>()
        var keptLive = [Bool](repeating: false, count: Int(slotCount))
        var subdirs: UInt64 = 0
        for s in 0..<slotCount {
            guard let e = slotPointer(s), e.pointee.ino != 0 else { continue }
            let length = Int(e.pointee.name_length)
            var name: [UInt8]?
            var reason: String?
            var nameOff: UInt64 = 0
            if length == 0 {
                reason = "empty name"
            } else if length <= Int(PMFS_DIR_INLINE_NAME) {
                name = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(field(e, \.name)), count: length))
            } else {
                nameOff = e.pointee.name.name_off
                if let why = validate(nameOff, PMFS_T_NAME, minSize: 8 + length) {
                    reason = "long name \(why)"
                } else if let blob: UnsafeMutablePointer<pmfs_blob> = try? pool.pointer(nameOff), blob.pointee.length == UInt64(length) {
                    name = Array(UnsafeRawBufferPointer(start: UnsafeRawPointer(blob) + 8, count: length))
                } else {
                    reason = "long name blob at \(nameOff) does not hold \(length) bytes"
                }
            }
            if let n = name, n.contains(0x2F) || n.contains(0) { reason = "name contains '/' or NUL"; name = nil }
            if let n = name, n == [0x2E] || n == [0x2E, 0x2E] { reason = "an entry named '\(String(decoding: n, as: UTF8.self))'"; name = nil }
            let shown = name.map { "'\(String(decoding: $0, as: UTF8.self))'" } ?? "in slot \(s)"
            let target = e.pointee.ino
            var drop: (ProblemCode, String)?
            if let reason {
                drop = (.entryBadName, "directory \(ino): slot \(s): \(reason)")
            } else if !isLive(target) {
                drop = (.entryFreeInode, "directory \(ino): entry \(shown) points at \(target < capacity ? "free inode" : "inode beyond the table:") \(target)")
            } else if target == PMFS_ROOT_INO || target == ino {
                drop = (.entryDirectoryLink, "directory \(ino): entry \(shown) links to \(target == ino ? "the directory itself" : "the root")")
            } else if names.contains(name!) {
                drop = (.entryDuplicate, "directory \(ino): second entry named \(shown) (slot \(s))")
            } else if nameOff != 0, let why = claim(nameOff, PMFS_T_NAME, minSize: 8 + length, owner: ino) {
                drop = (.entryBadName, "directory \(ino): entry \(shown): long name \(why)")
            }
            if let (code, message) = drop {
                pending.append(found(code, message))
                dropped.append(s)
                continue
            }
            let name1 = name!
            names.insert(name1)
            let hash = name1.withUnsafeBytes { nameHash($0, seed: seed) }
            let targetType = inodes[Int(target)].type!
            var entry = Entry(slot: s, target: target, name: name1, hash: hash, type: targetType.rawValue,
                              hashWrong: e.pointee.hash != hash, typeWrong: e.pointee.type != targetType.rawValue)
            if entry.hashWrong {
                pending.append(found(.entryBadHash, "directory \(ino): entry \(shown) has hash 0x\(String(e.pointee.hash, radix: 16)), its name hashes to 0x\(String(hash, radix: 16))"))
            }
            if entry.typeWrong {
                pending.append(found(.entryBadType, "directory \(ino): entry \(shown) has type \(e.pointee.type), \(describe(target)) is type \(targetType.rawValue)"))
            }
            entry.type = targetType.rawValue
            kept.append(entry)
            keptLive[Int(s)] = true
            inodes[Int(target)].references += 1
            if targetType == .directory {
                subdirs += 1
                childDirectories[ino, default: []].append(target)
                parentEntries[target, default: []].append(EntryLocation(directory: ino, slot: s))
                if ino == PMFS_ROOT_INO && name1 == Array("lost+found".utf8) { lostFound = target }
            }
        }
        entryCounts[ino] = UInt64(kept.count)

        // Chains and the free list, when the structure is sound enough to walk.
        if !structural {
            if let why = checkChains(d, bucketChunks, slotCount, level, split, bucketCount, slotPointer, kept) {
                pending.append(found(.hashChain, "directory \(ino): \(why)"))
            }
            if let why = checkFreeList(d, slotCount, slotPointer) {
                pending.append(found(.freeSlotList, "directory \(ino): \(why)"))
            }
        }
        if header.entry_count != UInt64(kept.count) {
            pending.append(found(.directoryEntryCount, "directory \(ino): entry_count is \(header.entry_count), \(kept.count) entries found"))
        }
        if header.subdir_count != subdirs {
            pending.append(found(.directorySubdirCount, "directory \(ino): subdir_count is \(header.subdir_count), \(subdirs) subdirectories found"))
        }

        guard !pending.isEmpty else {
            indexUsable.insert(ino)
            return Int(slotCount)
        }
        let repaired = fix(pending) {
            try transaction { tx in
                try tx.snapshot(d)
                d.pointee.level = level
                d.pointee.split = split
                d.pointee.bucket_count = bucketCount
                d.pointee.slot_count = slotCount
                for k in staleSlotChunks { element(d, \.slot_chunk_off, k, as: UInt64.self).pointee = 0 }
                for k in staleBucketChunks { element(d, \.bucket_chunk_off, k, as: UInt64.self).pointee = 0 }
                for k in badSlotChunks where !replaceChunks.contains(k) { element(d, \.slot_chunk_off, k, as: UInt64.self).pointee = 0 }
                for k in replaceChunks {
                    let new = try tx.allocate(size: geometricChunkSize(k) * 64, type: PMFS_T_DIRENT_CHUNK)
                    element(d, \.slot_chunk_off, k, as: UInt64.self).pointee = new
                    slotChunks[k] = try pool.pointer(new)
                }
                // Snapshot the used part of every slot chunk once, then rewrite freely.
                for k in 0..<Self.dirChunks where Self.chunkStart(k) < slotCount {
                    guard let c = slotChunks[k] else { continue }
                    let used = min(UInt64(geometricChunkSize(k)), slotCount - Self.chunkStart(k))
                    try tx.snapshotRaw(UnsafeMutableRawPointer(c), Int(used) * 64)
                }
                // Every bucket chunk that bucket_count needs exists and starts empty.
                for k in 0..<Self.dirChunks where Self.chunkStart(k) < bucketCount {
                    let size = geometricChunkSize(k) * 8
                    if let c = bucketChunks[k] {
                        try tx.snapshotRaw(UnsafeMutableRawPointer(c), size)
                        UnsafeMutableRawPointer(c).initializeMemory(as: UInt8.self, repeating: 0, count: size)
                    } else {
                        let new = try tx.allocate(size: size, type: PMFS_T_BUCKET_CHUNK)
                        element(d, \.bucket_chunk_off, k, as: UInt64.self).pointee = new
                        bucketChunks[k] = try pool.pointer(new)
                    }
                }
                for s in dropped { slotPointer(s)?.pointee = pmfs_dirent() }
                for e in kept.reversed() {
                    guard let p = slotPointer(e.slot) else { continue }
                    p.pointee.hash = e.hash
                    p.pointee.type = e.type
                    let b = Self.bucketIndex(e.hash, level: level, split: split)
                    let (k, o) = geometricChunk(b)
                    p.pointee.next = bucketChunks[k]![o]
                    bucketChunks[k]![o] = e.slot + 1
                }
                var freeHead: UInt64 = 0
                for s in stride(from: Int(slotCount) - 1, through: 0, by: -1) where !keptLive[s] {
                    guard let p = slotPointer(UInt64(s)) else { continue }
                    p.pointee = pmfs_dirent()
                    p.pointee.next = freeHead
                    freeHead = UInt64(s) + 1
                }
                d.pointee.free_slot = freeHead
                d.pointee.entry_count = UInt64(kept.count)
                d.pointee.subdir_count = subdirs
            }
        }
        if repaired { indexUsable.insert(ino) }
        return Int(slotCount)
    }

    /// Walks every chain: links in range, to live slots, each slot once, each on
    /// the bucket its hash addresses; then every kept slot must have been reached.
    private func checkChains(_ d: UnsafeMutablePointer<pmfs_directory>, _ bucketChunks: [UnsafeMutablePointer<UInt64>?],
                             _ slotCount: UInt64, _ level: UInt32, _ split: UInt64, _ bucketCount: UInt64,
                             _ slotPointer: (UInt64) -> UnsafeMutablePointer<pmfs_dirent>?, _ kept: [Entry]) -> String? {
        var onChain = [Bool](repeating: false, count: Int(slotCount))
        // Bucket by bucket, a chunk at a time (a missing chunk holds only empty chains).
        for k in 0..<Self.dirChunks where Self.chunkStart(k) < bucketCount {
            guard let chunk = bucketChunks[k] else { continue }
            let first = Self.chunkStart(k)
            for b in first..<min(Self.chunkStart(k + 1), bucketCount) {
                var link = chunk[Int(b - first)]
                while link != 0 {
                    guard link <= slotCount, let e = slotPointer(link - 1) else {
                        return "the chain of bucket \(b) links to slot \(link &- 1), beyond slot_count \(slotCount)"
                    }
                    let s = link - 1
                    guard e.pointee.ino != 0 else { return "the chain of bucket \(b) reaches free slot \(s)" }
                    guard !onChain[Int(s)] else { return "slot \(s) is reached twice (the chain of bucket \(b) loops or joins another)" }
                    onChain[Int(s)] = true
                    let home = Self.bucketIndex(e.pointee.hash, level: level, split: split)
                    if home != b { return "slot \(s) is on the chain of bucket \(b), its hash addresses bucket \(home)" }
                    link = e.pointee.next
                }
            }
        }
        if let stray = kept.first(where: { !$0.hashWrong && !onChain[Int($0.slot)] }) {
            return "entry '\(String(decoding: stray.name, as: UTF8.self))' (slot \(stray.slot)) is on no hash chain"
        }
        return nil
    }

    /// The free list holds every free slot below slot_count, once.
    private func checkFreeList(_ d: UnsafeMutablePointer<pmfs_directory>, _ slotCount: UInt64,
                               _ slotPointer: (UInt64) -> UnsafeMutablePointer<pmfs_dirent>?) -> String? {
        var onList = [Bool](repeating: false, count: Int(slotCount))
        var link = d.pointee.free_slot
        while link != 0 {
            guard link <= slotCount, let e = slotPointer(link - 1) else {
                return "the free list links to slot \(link &- 1), beyond slot_count \(slotCount)"
            }
            let s = link - 1
            guard e.pointee.ino == 0 else { return "the free list reaches live slot \(s)" }
            guard !onList[Int(s)] else { return "the free list loops at slot \(s)" }
            onList[Int(s)] = true
            link = e.pointee.next
        }
        for s in 0..<slotCount where !onList[Int(s)] {
            if let e = slotPointer(s), e.pointee.ino == 0 { return "free slot \(s) is not on the free list" }
        }
        return nil
    }
}
