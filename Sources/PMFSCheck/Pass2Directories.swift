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

    /// What the check of one directory has found so far, and what its repair
    /// will write: the header values, the chunks to keep, cut or replace, the
    /// entries kept and the slots dropped.
    private struct DirectoryScan {
        let ino: UInt64
        let d: UnsafeMutablePointer<pmfs_directory>
        let header: pmfs_directory
        var pending: [Int] = []
        /// The hash chains and free list cannot be walked: rebuilt without a look.
        var structural = false
        var slotCount: UInt64
        var slotChunks = [UnsafeMutablePointer<pmfs_dirent>?](repeating: nil, count: CheckRun.dirChunks)
        var badSlotChunks: [Int] = []
        var staleSlotChunks: [Int] = []
        var replaceChunks: [Int] = []
        var level: UInt32
        var split: UInt64
        var bucketCount: UInt64
        var bucketChunks = [UnsafeMutablePointer<UInt64>?](repeating: nil, count: CheckRun.dirChunks)
        var staleBucketChunks: [Int] = []
        var kept: [Entry] = []
        var dropped: [UInt64] = []
        var keptLive: [Bool] = []
        var subdirs: UInt64 = 0

        init(ino: UInt64, d: UnsafeMutablePointer<pmfs_directory>) {
            self.ino = ino
            self.d = d
            header = d.pointee
            slotCount = min(header.slot_count, CheckRun.maxSlots)
            level = header.level
            split = header.split
            bucketCount = header.bucket_count
        }

        func slotPointer(_ s: UInt64) -> UnsafeMutablePointer<pmfs_dirent>? {
            guard s < slotCount else { return nil }
            let (k, o) = geometricChunk(s)
            return slotChunks[k].map { $0 + o }
        }

        func slotChunkOffset(_ k: Int) -> UnsafeMutablePointer<UInt64> { element(d, \.slot_chunk_off, k, as: UInt64.self) }
        func bucketChunkOffset(_ k: Int) -> UnsafeMutablePointer<UInt64> { element(d, \.bucket_chunk_off, k, as: UInt64.self) }
    }

    /// Checks one directory; returns the slots it scanned (for progress).
    private func checkDirectory(_ ino: UInt64) -> Int {
        let off = inodes[Int(ino)].directoryOffset
        entryCounts[ino] = 0
        guard off != 0, let d: UnsafeMutablePointer<pmfs_directory> = try? pool.pointer(off) else { return 0 }
        var scan = DirectoryScan(ino: ino, d: d)
        checkSlotChunks(&scan)
        checkHashingState(&scan)
        checkBucketChunks(&scan)
        checkSlots(&scan)
        entryCounts[ino] = UInt64(scan.kept.count)
        checkListsAndCounts(&scan)
        guard !scan.pending.isEmpty else {
            indexUsable.insert(ino)
            return Int(scan.slotCount)
        }
        let repaired = fix(scan.pending) { try transaction { tx in try rewriteDirectory(&scan, tx) } }
        if repaired { indexUsable.insert(ino) }
        return Int(scan.slotCount)
    }

    /// Slot chunks: those below slot_count must be valid; bad chunks past the
    /// last good one are cut off, a bad chunk before it is replaced by an empty one.
    private func checkSlotChunks(_ scan: inout DirectoryScan) {
        let ino = scan.ino
        for k in 0..<Self.dirChunks {
            let coff = scan.slotChunkOffset(k).pointee
            if Self.chunkStart(k) < scan.slotCount {
                if let why = claim(coff, PMFS_T_DIRENT_CHUNK, minSize: geometricChunkSize(k) * 64, owner: ino) {
                    scan.badSlotChunks.append(k)
                    scan.pending.append(found(.directoryChunk, "directory \(ino): slot chunk \(k) \(why)"))
                } else {
                    scan.slotChunks[k] = try? pool.pointer(coff)
                }
            } else if coff != 0 {
                scan.staleSlotChunks.append(k)
            }
        }
        if scan.header.slot_count > Self.maxSlots {
            scan.pending.append(found(.directoryHeader, "directory \(ino): slot_count \(scan.header.slot_count) exceeds \(Self.maxSlots)"))
        }
        if !scan.badSlotChunks.isEmpty {
            scan.structural = true
            // No entry lies past the last usable chunk: the count is cut there, so
            // the work (and the slot arrays) is bounded by the chunks that exist,
            // not by slot_count. Bad chunks below it are replaced.
            let lastGood = (0..<Self.dirChunks).last { Self.chunkStart($0) < scan.slotCount && scan.slotChunks[$0] != nil }
            scan.slotCount = min(scan.slotCount, lastGood.map { Self.chunkStart($0 + 1) } ?? 0)
            scan.replaceChunks = scan.badSlotChunks.filter { Self.chunkStart($0) < scan.slotCount }
        }
        if scan.slotCount != scan.header.slot_count { scan.structural = true }
    }

    /// Linear hashing state: bucket_count = (16 << level) + split, and no more
    /// buckets than the slots could ever have split to.
    private func checkHashingState(_ scan: inout DirectoryScan) {
        let level = scan.level, split = scan.split, bucketCount = scan.bucketCount
        let stateOK = level < PMFS_DIR_MAX_CHUNKS && split < (UInt64(PMFS_DIR_CHUNK0) << UInt64(level))
            && bucketCount == (UInt64(PMFS_DIR_CHUNK0) << UInt64(level)) + split
            // A split needs entry_count > 2 * bucket_count, and slot_count bounds entry_count.
            && bucketCount <= max(UInt64(PMFS_DIR_CHUNK0), scan.slotCount / 2 + 1)
        guard !stateOK else { return }
        scan.pending.append(found(.directoryHeader, "directory \(scan.ino): level \(level), split \(split), bucket_count \(bucketCount) disagree"))
        scan.level = 0; scan.split = 0; scan.bucketCount = UInt64(PMFS_DIR_CHUNK0)
        scan.structural = true
    }

    /// Bucket chunks below bucket_count may be absent (no chain ever there);
    /// chunks past slot_count or bucket_count are stale.
    private func checkBucketChunks(_ scan: inout DirectoryScan) {
        let ino = scan.ino
        for k in 0..<Self.dirChunks {
            let coff = scan.bucketChunkOffset(k).pointee
            guard coff != 0 else { continue }
            if Self.chunkStart(k) < scan.bucketCount {
                if let why = claim(coff, PMFS_T_BUCKET_CHUNK, minSize: geometricChunkSize(k) * 8, owner: ino) {
                    scan.pending.append(found(.directoryChunk, "directory \(ino): bucket chunk \(k) \(why)"))
                    scan.structural = true
                } else {
                    scan.bucketChunks[k] = try? pool.pointer(coff)
                }
            } else {
                scan.staleBucketChunks.append(k)
            }
        }
        for k in scan.staleSlotChunks {
            scan.pending.append(found(.directoryStaleChunk, "directory \(ino): slot chunk \(k) at \(scan.slotChunkOffset(k).pointee) lies beyond slot_count \(scan.slotCount)"))
        }
        for k in scan.staleBucketChunks {
            scan.pending.append(found(.directoryStaleChunk, "directory \(ino): bucket chunk \(k) at \(scan.bucketChunkOffset(k).pointee) lies beyond bucket_count \(scan.bucketCount)"))
        }
    }

    /// The name a live slot holds (inline or in its long-name blob), or why it has none.
    private func slotName(_ e: UnsafeMutablePointer<pmfs_dirent>) -> (name: [UInt8]?, reason: String?, nameOff: UInt64) {
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
        return (name, reason, nameOff)
    }

    /// Why the entry in slot `s` must go, if it must.
    private func dropReason(_ scan: DirectoryScan, _ s: UInt64, _ e: UnsafeMutablePointer<pmfs_dirent>,
                            _ read: (name: [UInt8]?, reason: String?, nameOff: UInt64), _ names: Set<[UInt8]>) -> (ProblemCode, String)? {
        let ino = scan.ino
        let shown = read.name.map { "'\(String(decoding: $0, as: UTF8.self))'" } ?? "in slot \(s)"
        let target = e.pointee.ino
        if let reason = read.reason {
            return (.entryBadName, "directory \(ino): slot \(s): \(reason)")
        } else if !isLive(target) {
            return (.entryFreeInode, "directory \(ino): entry \(shown) points at \(target < capacity ? "free inode" : "inode beyond the table:") \(target)")
        } else if target == PMFS_ROOT_INO || target == ino {
            return (.entryDirectoryLink, "directory \(ino): entry \(shown) links to \(target == ino ? "the directory itself" : "the root")")
        } else if names.contains(read.name!) {
            return (.entryDuplicate, "directory \(ino): second entry named \(shown) (slot \(s))")
        } else if read.nameOff != 0, let why = claim(read.nameOff, PMFS_T_NAME, minSize: 8 + Int(e.pointee.name_length), owner: ino) {
            return (.entryBadName, "directory \(ino): entry \(shown): long name \(why)")
        }
        return nil
    }

    /// Every live slot below the (possibly cut) slot count: dropped, or kept
    /// with its hash and type as they must be; the model learns its links.
    private func checkSlots(_ scan: inout DirectoryScan) {
        let ino = scan.ino
        var names = Set<[UInt8]>()
        scan.keptLive = [Bool](repeating: false, count: Int(scan.slotCount))
        for s in 0..<scan.slotCount {
            guard let e = scan.slotPointer(s), e.pointee.ino != 0 else { continue }
            let read = slotName(e)
            if let (code, message) = dropReason(scan, s, e, read, names) {
                scan.pending.append(found(code, message))
                scan.dropped.append(s)
                continue
            }
            let name = read.name!
            names.insert(name)
            scan.kept.append(keptEntry(&scan, s, e, name))
        }
    }

    /// A slot that stays: problems with its hash or type noted, links recorded.
    private func keptEntry(_ scan: inout DirectoryScan, _ s: UInt64, _ e: UnsafeMutablePointer<pmfs_dirent>, _ name: [UInt8]) -> Entry {
        let ino = scan.ino, target = e.pointee.ino
        let shown = "'\(String(decoding: name, as: UTF8.self))'"
        let hash = name.withUnsafeBytes { nameHash($0, seed: seed) }
        let targetType = inodes[Int(target)].type!
        let entry = Entry(slot: s, target: target, name: name, hash: hash, type: targetType.rawValue,
                          hashWrong: e.pointee.hash != hash, typeWrong: e.pointee.type != targetType.rawValue)
        if entry.hashWrong {
            scan.pending.append(found(.entryBadHash, "directory \(ino): entry \(shown) has hash 0x\(String(e.pointee.hash, radix: 16)), its name hashes to 0x\(String(hash, radix: 16))"))
        }
        if entry.typeWrong {
            scan.pending.append(found(.entryBadType, "directory \(ino): entry \(shown) has type \(e.pointee.type), \(describe(target)) is type \(targetType.rawValue)"))
        }
        scan.keptLive[Int(s)] = true
        inodes[Int(target)].references += 1
        if targetType == .directory {
            scan.subdirs += 1
            childDirectories[ino, default: []].append(target)
            parentEntries[target, default: []].append(EntryLocation(directory: ino, slot: s))
            if ino == PMFS_ROOT_INO && name == Array("lost+found".utf8) { lostFound = target }
        }
        return entry
    }

    /// Chains and the free list, when the structure is sound enough to walk;
    /// then the header's counts against the kept entries.
    private func checkListsAndCounts(_ scan: inout DirectoryScan) {
        let ino = scan.ino, header = scan.header
        if !scan.structural {
            let slotPointer = { [scan] (s: UInt64) in scan.slotPointer(s) }
            if let why = checkChains(scan.d, scan.bucketChunks, scan.slotCount, scan.level, scan.split, scan.bucketCount, slotPointer, scan.kept) {
                scan.pending.append(found(.hashChain, "directory \(ino): \(why)"))
            }
            if let why = checkFreeList(scan.d, scan.slotCount, slotPointer) {
                scan.pending.append(found(.freeSlotList, "directory \(ino): \(why)"))
            }
        }
        if header.entry_count != UInt64(scan.kept.count) {
            scan.pending.append(found(.directoryEntryCount, "directory \(ino): entry_count is \(header.entry_count), \(scan.kept.count) entries found"))
        }
        if header.subdir_count != scan.subdirs {
            scan.pending.append(found(.directorySubdirCount, "directory \(ino): subdir_count is \(header.subdir_count), \(scan.subdirs) subdirectories found"))
        }
    }

    // MARK: the repair: one rewrite of the directory in one transaction

    private func rewriteDirectory(_ scan: inout DirectoryScan, _ tx: Transaction) throws {
        try rewriteHeaderAndChunks(&scan, tx)
        try snapshotUsedSlots(scan, tx)
        try emptyBuckets(&scan, tx)
        for s in scan.dropped { scan.slotPointer(s)?.pointee = pmfs_dirent() }
        relinkChains(scan)
        let freeHead = relinkFreeSlots(scan)
        scan.d.pointee.free_slot = freeHead
        scan.d.pointee.entry_count = UInt64(scan.kept.count)
        scan.d.pointee.subdir_count = scan.subdirs
    }

    /// The hashing state and slot count; stale and bad chunks cut, middle ones replaced.
    private func rewriteHeaderAndChunks(_ scan: inout DirectoryScan, _ tx: Transaction) throws {
        let d = scan.d
        try tx.snapshot(d)
        d.pointee.level = scan.level
        d.pointee.split = scan.split
        d.pointee.bucket_count = scan.bucketCount
        d.pointee.slot_count = scan.slotCount
        for k in scan.staleSlotChunks { scan.slotChunkOffset(k).pointee = 0 }
        for k in scan.staleBucketChunks { scan.bucketChunkOffset(k).pointee = 0 }
        for k in scan.badSlotChunks where !scan.replaceChunks.contains(k) { scan.slotChunkOffset(k).pointee = 0 }
        for k in scan.replaceChunks {
            let new = try tx.allocate(size: geometricChunkSize(k) * 64, type: PMFS_T_DIRENT_CHUNK)
            scan.slotChunkOffset(k).pointee = new
            scan.slotChunks[k] = try pool.pointer(new)
        }
    }

    /// Snapshots the used part of every slot chunk once, so the rest rewrites freely.
    private func snapshotUsedSlots(_ scan: DirectoryScan, _ tx: Transaction) throws {
        for k in 0..<Self.dirChunks where Self.chunkStart(k) < scan.slotCount {
            guard let c = scan.slotChunks[k] else { continue }
            let used = min(UInt64(geometricChunkSize(k)), scan.slotCount - Self.chunkStart(k))
            try tx.snapshotRaw(UnsafeMutableRawPointer(c), Int(used) * 64)
        }
    }

    /// Every bucket chunk that bucket_count needs exists and starts empty.
    private func emptyBuckets(_ scan: inout DirectoryScan, _ tx: Transaction) throws {
        for k in 0..<Self.dirChunks where Self.chunkStart(k) < scan.bucketCount {
            let size = geometricChunkSize(k) * 8
            if let c = scan.bucketChunks[k] {
                try tx.snapshotRaw(UnsafeMutableRawPointer(c), size)
                UnsafeMutableRawPointer(c).initializeMemory(as: UInt8.self, repeating: 0, count: size)
            } else {
                let new = try tx.allocate(size: size, type: PMFS_T_BUCKET_CHUNK)
                scan.bucketChunkOffset(k).pointee = new
                scan.bucketChunks[k] = try pool.pointer(new)
            }
        }
    }

    /// Each kept entry, with its hash and type set, pushed on its bucket's chain
    /// (in reverse, so every chain runs in slot order).
    private func relinkChains(_ scan: DirectoryScan) {
        for e in scan.kept.reversed() {
            guard let p = scan.slotPointer(e.slot) else { continue }
            p.pointee.hash = e.hash
            p.pointee.type = e.type
            let b = Self.bucketIndex(e.hash, level: scan.level, split: scan.split)
            let (k, o) = geometricChunk(b)
            p.pointee.next = scan.bucketChunks[k]![o]
            scan.bucketChunks[k]![o] = e.slot + 1
        }
    }

    /// Every slot not kept, cleared and on the free list (lowest first); returns its head.
    private func relinkFreeSlots(_ scan: DirectoryScan) -> UInt64 {
        var freeHead: UInt64 = 0
        for s in stride(from: Int(scan.slotCount) - 1, through: 0, by: -1) where !scan.keptLive[s] {
            guard let p = scan.slotPointer(UInt64(s)) else { continue }
            p.pointee = pmfs_dirent()
            p.pointee.next = freeHead
            freeHead = UInt64(s) + 1
        }
        return freeHead
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
