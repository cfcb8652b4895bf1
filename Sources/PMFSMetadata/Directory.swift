import CPMDK
import SystemPackage

/// Geometric chunk addressing shared by directory slots and buckets: chunk k
/// holds CHUNK0 << k items, so a directory of n entries wastes at most half
/// its last chunk and needs no copying to grow.
@inline(__always)
package func geometricChunk(_ index: UInt64) -> (chunk: Int, offset: Int) {
    let q = index / UInt64(PMFS_DIR_CHUNK0) + 1
    let k = 63 - q.leadingZeroBitCount
    let start = UInt64(PMFS_DIR_CHUNK0) * ((1 << UInt64(k)) - 1)
    return (k, Int(index - start))
}

@inline(__always)
package func geometricChunkSize(_ chunk: Int) -> Int { Int(PMFS_DIR_CHUNK0) << chunk }

/// One directory's index: linear hashing over chained 64-byte entries.
///
/// Invariants: every live slot (ino != 0) is on exactly one bucket chain, the
/// one its hash addresses; every free slot below slot_count is on the free
/// list; entry_count is the number of live slots; a slot never moves while its
/// entry lives (readdir cookies are slot positions).
package struct DirectoryIndex {
    let pool: PersistentPool
    let dir: UnsafeMutablePointer<pmfs_directory>
    let seed: UInt64

    package init(pool: PersistentPool, offset: UInt64, seed: UInt64) throws {
        self.pool = pool
        dir = try pool.pointer(offset)
        self.seed = seed
        let d = dir.pointee
        // Checked in this order so no sum below can overflow; the buckets in use
        // must all lie in the chunks the header has room for.
        guard d.slot_count <= Self.maxItems,
              d.entry_count <= d.slot_count, d.level < PMFS_DIR_MAX_CHUNKS,
              d.split < UInt64(PMFS_DIR_CHUNK0) << UInt64(d.level),
              d.bucket_count == (UInt64(PMFS_DIR_CHUNK0) << UInt64(d.level)) + d.split,
              d.bucket_count <= Self.maxItems else {
            throw PoolError.corrupt("directory header at offset \(offset)")
        }
    }

    /// Slots (or buckets) that PMFS_DIR_MAX_CHUNKS chunks hold.
    static let maxItems = UInt64(PMFS_DIR_CHUNK0) * ((1 << UInt64(PMFS_DIR_MAX_CHUNKS)) - 1)

    /// Allocates an empty directory in `tx` and returns its offset.
    package static func create(in tx: Transaction) throws -> UInt64 {
        let off = try tx.allocate(size: MemoryLayout<pmfs_directory>.size, type: PMFS_T_DIRECTORY)
        let d: UnsafeMutablePointer<pmfs_directory> = try tx.pool.pointer(off)
        d.pointee.bucket_count = UInt64(PMFS_DIR_CHUNK0)
        return off
    }

    var entryCount: UInt64 { dir.pointee.entry_count }
    var slotCount: UInt64 { dir.pointee.slot_count }
    var subdirectoryCount: UInt64 { dir.pointee.subdir_count }

    // MARK: slots and buckets

    @inline(__always)
    func slot(_ index: UInt64) throws -> UnsafeMutablePointer<pmfs_dirent> {
        let (k, o) = geometricChunk(index)
        guard index < dir.pointee.slot_count, k < Int(PMFS_DIR_MAX_CHUNKS) else {
            throw PoolError.corrupt("directory slot \(index) beyond \(dir.pointee.slot_count)")
        }
        return try slotChunk(k) + o
    }

    /// Slot chunk `k`, checked whole (an index inside it stays inside the pool).
    @inline(__always)
    private func slotChunk(_ k: Int) throws -> UnsafeMutablePointer<pmfs_dirent> {
        try pool.pointer(element(dir, \.slot_chunk_off, k, as: UInt64.self).pointee, count: geometricChunkSize(k))
    }

    @inline(__always)
    func bucket(_ index: UInt64) throws -> UnsafeMutablePointer<UInt64> {
        let (k, o) = geometricChunk(index)
        guard index < dir.pointee.bucket_count, k < Int(PMFS_DIR_MAX_CHUNKS) else { throw PoolError.corrupt("directory bucket \(index)") }
        let chunkOff = element(dir, \.bucket_chunk_off, k, as: UInt64.self).pointee
        guard chunkOff != 0 else { throw PoolError.corrupt("directory bucket chunk \(k) missing") }
        let chunk: UnsafeMutablePointer<UInt64> = try pool.pointer(chunkOff, count: geometricChunkSize(k))
        return chunk + o
    }

    /// The bucket chain head for `hash`, or nil if no chunk holds it yet (empty).
    @inline(__always)
    func bucketIndex(_ hash: UInt32) -> UInt64 {
        let n0 = UInt64(PMFS_DIR_CHUNK0) << UInt64(dir.pointee.level)
        var b = UInt64(hash) % n0
        if b < dir.pointee.split { b = UInt64(hash) % (n0 * 2) }
        return b
    }

    private func bucketHead(_ index: UInt64) throws -> UInt64 {
        let (k, _) = geometricChunk(index)
        guard k < Int(PMFS_DIR_MAX_CHUNKS) else { throw PoolError.corrupt("directory bucket \(index)") }
        if element(dir, \.bucket_chunk_off, k, as: UInt64.self).pointee == 0 { return 0 }
        return try bucket(index).pointee
    }

    func name(of entry: UnsafeMutablePointer<pmfs_dirent>) throws -> UnsafeRawBufferPointer {
        let length = Int(entry.pointee.name_length)
        if length <= Int(PMFS_DIR_INLINE_NAME) {
            return UnsafeRawBufferPointer(start: UnsafeRawPointer(field(entry, \.name)), count: length)
        }
        let blob: UnsafeMutablePointer<pmfs_blob> = try pool.pointer(entry.pointee.name.name_off)
        guard blob.pointee.length == UInt64(length) else { throw PoolError.corrupt("directory entry name length") }
        _ = try pool.raw(entry.pointee.name.name_off, length: 8 + length)
        return UnsafeRawBufferPointer(start: UnsafeRawPointer(blob) + 8, count: length)
    }

    // MARK: lookup

    /// The slot holding `name`, or nil.
    package func find(_ name: FileName) throws -> UInt64? {
        try name.bytes.withUnsafeBytes { try find(bytes: $0) }
    }

    /// The slot holding the name `nb` (a valid name's bytes), or nil.
    package func find(bytes nb: UnsafeRawBufferPointer) throws -> UInt64? {
        let h = nameHash(nb, seed: seed)
        var link = try bucketHead(bucketIndex(h))
        var steps: UInt64 = 0
        while link != 0 {
            let entry = try slot(link - 1)
            if entry.pointee.hash == h, Int(entry.pointee.name_length) == nb.count,
               try self.name(of: entry).elementsEqual(nb) {
                return link - 1
            }
            link = entry.pointee.next
            try countStep(&steps)
        }
        return nil
    }

    /// A hash chain (or the free list) visits each slot at most once: one
    /// longer than the slots there are loops (damage), and the walk stops.
    @inline(__always)
    private func countStep(_ steps: inout UInt64) throws {
        steps += 1
        if steps > dir.pointee.slot_count { throw PoolError.corrupt("directory hash chain loops") }
    }

    // MARK: changes (inside a transaction, directory locked exclusively)

    package func insert(_ name: FileName, ino: UInt64, type: FileType, in tx: Transaction) throws {
        let h = name.bytes.withUnsafeBytes { nameHash($0, seed: seed) }
        try tx.snapshot(dir)
        let index = try takeSlot(tx)
        let entry = try slot(index)
        try tx.snapshot(entry)
        entry.pointee = pmfs_dirent()
        entry.pointee.ino = ino
        entry.pointee.hash = h
        entry.pointee.type = type.rawValue
        entry.pointee.name_length = UInt8(name.bytes.count)
        if name.bytes.count <= Int(PMFS_DIR_INLINE_NAME) {
            name.bytes.withUnsafeBytes {
                UnsafeMutableRawPointer(field(entry, \.name)).copyMemory(from: $0.baseAddress!, byteCount: $0.count)
            }
        } else {
            entry.pointee.name.name_off = try Self.storeBlob(name.bytes, type: PMFS_T_NAME, in: tx)
        }
        let b = try ensureBucket(bucketIndex(h), tx)
        try tx.snapshot(b)
        entry.pointee.next = b.pointee
        b.pointee = index + 1
        dir.pointee.entry_count.incrementSaturating()
        if type == .directory { dir.pointee.subdir_count.incrementSaturating() }
        if dir.pointee.entry_count > dir.pointee.bucket_count * 2 {
            try split(tx)
        }
    }

    /// Removes the entry in `index` (found by `find`).
    package func remove(slot index: UInt64, in tx: Transaction) throws {
        let entry = try slot(index)
        let h = entry.pointee.hash
        let b = try bucket(bucketIndex(h))
        try tx.snapshot(dir)
        // Unlink from the chain.
        if b.pointee == index + 1 {
            try tx.snapshot(b)
            b.pointee = entry.pointee.next
        } else {
            var link = b.pointee
            var found = false
            var steps: UInt64 = 0
            while link != 0 {
                let e = try slot(link - 1)
                if e.pointee.next == index + 1 {
                    try tx.snapshot(field(e, \.next))
                    e.pointee.next = entry.pointee.next
                    found = true
                    break
                }
                link = e.pointee.next
                try countStep(&steps)
            }
            guard found else { throw PoolError.corrupt("directory entry not on its hash chain") }
        }
        if entry.pointee.name_length > UInt8(PMFS_DIR_INLINE_NAME) {
            try tx.free(entry.pointee.name.name_off)
        }
        if entry.pointee.type == FileType.directory.rawValue { dir.pointee.subdir_count.decrementSaturating() }
        try tx.snapshot(entry)
        entry.pointee = pmfs_dirent()
        entry.pointee.next = dir.pointee.free_slot
        dir.pointee.free_slot = index + 1
        dir.pointee.entry_count.decrementSaturating()
    }

    /// Points the entry in `index` at another inode (rename over an existing name).
    func retarget(slot index: UInt64, ino: UInt64, type: FileType, in tx: Transaction) throws {
        let entry = try slot(index)
        let oldType = entry.pointee.type
        if oldType != type.rawValue {
            try tx.snapshot(field(dir, \.subdir_count))
            if oldType == FileType.directory.rawValue { dir.pointee.subdir_count.decrementSaturating() }
            if type == .directory { dir.pointee.subdir_count.incrementSaturating() }
        }
        try tx.snapshot(entry, count: 1)
        entry.pointee.ino = ino
        entry.pointee.type = type.rawValue
    }

    private func takeSlot(_ tx: Transaction) throws -> UInt64 {
        if dir.pointee.free_slot != 0 {
            let index = dir.pointee.free_slot - 1
            let entry = try slot(index)
            guard entry.pointee.ino == 0 else { throw PoolError.corrupt("directory free list holds a live entry") }
            dir.pointee.free_slot = entry.pointee.next
            return index
        }
        let index = dir.pointee.slot_count
        let (k, _) = geometricChunk(index)
        guard k < Int(PMFS_DIR_MAX_CHUNKS) else { throw Errno.noSpace }
        let chunkField = element(dir, \.slot_chunk_off, k, as: UInt64.self)
        if chunkField.pointee == 0 {
            chunkField.pointee = try tx.allocate(size: geometricChunkSize(k) * MemoryLayout<pmfs_dirent>.stride, type: PMFS_T_DIRENT_CHUNK)
        }
        dir.pointee.slot_count = index + 1
        return index
    }

    private func ensureBucket(_ index: UInt64, _ tx: Transaction) throws -> UnsafeMutablePointer<UInt64> {
        let (k, _) = geometricChunk(index)
        let chunkField = element(dir, \.bucket_chunk_off, k, as: UInt64.self)
        if chunkField.pointee == 0 {
            try tx.snapshot(chunkField)
            chunkField.pointee = try tx.allocate(size: geometricChunkSize(k) * 8, type: PMFS_T_BUCKET_CHUNK)
        }
        return try bucket(index)
    }

    /// Splits bucket `split` into itself and bucket `bucket_count` (linear hashing):
    /// constant work per insertion, so a million-entry directory never rehashes at once.
    private func split(_ tx: Transaction) throws {
        let n0 = UInt64(PMFS_DIR_CHUNK0) << UInt64(dir.pointee.level)
        let old = dir.pointee.split
        let new = old + n0
        guard geometricChunk(new).chunk < Int(PMFS_DIR_MAX_CHUNKS) else { return }
        dir.pointee.bucket_count += 1
        let newBucket = try ensureBucket(new, tx)
        let oldBucket = try bucket(old)
        try tx.snapshot(oldBucket)
        try tx.snapshot(newBucket)
        var link = oldBucket.pointee
        var keepHead: UInt64 = 0, moveHead: UInt64 = 0
        var steps: UInt64 = 0
        while link != 0 {
            try countStep(&steps)
            let e = try slot(link - 1)
            let next = e.pointee.next
            try tx.snapshot(field(e, \.next))
            if UInt64(e.pointee.hash) % (n0 * 2) == old {
                e.pointee.next = keepHead; keepHead = link
            } else {
                e.pointee.next = moveHead; moveHead = link
            }
            link = next
        }
        oldBucket.pointee = keepHead
        newBucket.pointee = moveHead
        dir.pointee.split = old + 1
        if dir.pointee.split == n0 {
            dir.pointee.level += 1
            dir.pointee.split = 0
        }
    }

    /// Frees the index's storage; the directory must be empty.
    func destroy(offset: UInt64, in tx: Transaction) throws {
        for k in 0..<Int(PMFS_DIR_MAX_CHUNKS) {
            try tx.free(element(dir, \.slot_chunk_off, k, as: UInt64.self).pointee)
            try tx.free(element(dir, \.bucket_chunk_off, k, as: UInt64.self).pointee)
        }
        try tx.free(offset)
    }

    // MARK: listing

    /// Live entries from slot `start` on, at most `limit`, as (slot, entry).
    func forEach(fromSlot start: UInt64, _ body: (UInt64, UnsafeMutablePointer<pmfs_dirent>) throws -> Bool) throws {
        var i = start
        let end = dir.pointee.slot_count
        while i < end {
            let (k, o) = geometricChunk(i)
            let chunk = try slotChunk(k)
            let chunkEnd = min(end, i + UInt64(geometricChunkSize(k) - o))
            var j = o
            while i < chunkEnd {
                if chunk[j].ino != 0 {
                    if try !body(i, chunk + j) { return }
                }
                i += 1; j += 1
            }
        }
    }

    package static func storeBlob(_ bytes: [UInt8], type: pmfs_type_num, in tx: Transaction) throws -> UInt64 {
        let off = try tx.allocate(size: 8 + bytes.count, type: type)
        let blob: UnsafeMutablePointer<pmfs_blob> = try tx.pool.pointer(off)
        blob.pointee.length = UInt64(bytes.count)
        bytes.withUnsafeBytes { (UnsafeMutableRawPointer(blob) + 8).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return off
    }

    static func loadBlob(_ pool: PersistentPool, _ off: UInt64, maxLength: Int) throws -> [UInt8] {
        let blob: UnsafeMutablePointer<pmfs_blob> = try pool.pointer(off)
        let length = Int(clamping: blob.pointee.length)
        guard length <= maxLength else { throw PoolError.corrupt("blob at \(off) claims \(length) bytes") }
        let raw = try pool.raw(off, length: 8 + length)
        return Array(UnsafeRawBufferPointer(start: raw + 8, count: length))
    }
}
