import CPMDK
import Glibc
import PMFSMetadata

/// Pass 0: the superblock (the pool's root object) and the two pool-wide
/// objects it names, the inode table and the space bitmap. Also lists every
/// allocated object, so later passes can check each reference's type and size
/// and pass 6 can find leaks. Returns false when the check cannot go on.
extension CheckRun {
    func pass0Superblock() -> Bool {
        collectObjects()
        guard fatal == nil, checkFormat() else { return false }
        checkState()
        checkGeometry()
        seed = sb.pointee.hash_seed

        let tableSize = MemoryLayout<pmfs_inode_table>.size
        guard let tableOff = superblockReference(\.inode_table_off, PMFS_T_INODE_TABLE, minSize: tableSize,
                                                 code: .superblockInodeTable, named: "inode table", object: "inode table") else { return false }
        table = try? pool.pointer(tableOff)

        let headerSize = MemoryLayout<pmfs_space_bitmap>.size
        guard let bitmapOff = superblockReference(\.space_bitmap_off, PMFS_T_SPACE_BITMAP, minSize: headerSize,
                                                  code: .superblockBitmap, named: "space bitmap", object: "bitmap") else { return false }
        checkReserve()
        guard let bm: UnsafeMutablePointer<pmfs_space_bitmap> = try? pool.pointer(bitmapOff) else { fatal = "space bitmap unreadable"; return false }
        bitmap = bm
        guard checkDeviceSize(bm, objectSize: objects[bitmapOff]?.size ?? 0) else { return false }
        bitmapWords = (UnsafeMutableRawPointer(bm) + headerSize).assumingMemoryBound(to: UInt64.self)
        checkReservedBlocks(bm)
        return true
    }

    /// Magic, format version and feature flags: what says this fsck.pmfs can
    /// read the pool at all. A version of 0 is damage, repaired to the current one.
    private func checkFormat() -> Bool {
        let magic = sb.pointee.magic
        guard magic == PMFS_MAGIC else {
            fatal = "bad superblock magic 0x\(String(magic, radix: 16)) (expected 0x\(String(PMFS_MAGIC, radix: 16))): not a pmfs pool, or its superblock is destroyed"
            return false
        }
        let version = sb.pointee.format_version
        if version > PMFS_FORMAT_VERSION {
            fatal = "pool format version \(version) is newer than this fsck.pmfs understands (\(PMFS_FORMAT_VERSION))"
            return false
        }
        if version == 0 {
            found(.superblockVersion, "superblock format version is 0") {
                try update(field(sb, \.format_version)) { $0 = PMFS_FORMAT_VERSION }
            }
        }
        if sb.pointee.incompat_features & ~PMFS_INCOMPAT_KNOWN != 0 || sb.pointee.rocompat_features & ~PMFS_ROCOMPAT_KNOWN != 0 {
            fatal = "pool uses features this fsck.pmfs does not know (incompat 0x\(String(sb.pointee.incompat_features, radix: 16)), rocompat 0x\(String(sb.pointee.rocompat_features, radix: 16)))"
            return false
        }
        return true
    }

    /// The clean/in-use state: anything else is repaired to clean.
    private func checkState() {
        let state = sb.pointee.state
        if state != PMFS_STATE_CLEAN && state != PMFS_STATE_IN_USE {
            found(.superblockState, "superblock state is \(state), neither clean (1) nor in use (2)") {
                try update(field(sb, \.state)) { $0 = PMFS_STATE_CLEAN }
            }
        } else if state == PMFS_STATE_IN_USE {
            progress("pool was not closed cleanly")
        }
    }

    /// Block size and inodes per chunk are fixed in v1.
    private func checkGeometry() {
        guard sb.pointee.block_size != 4096 || sb.pointee.inodes_per_chunk != PMFS_INODES_PER_CHUNK else { return }
        found(.superblockGeometry, "superblock block size \(sb.pointee.block_size), inodes per chunk \(sb.pointee.inodes_per_chunk)") {
            try transaction { tx in
                try tx.snapshot(field(sb, \.block_size))
                try tx.snapshot(field(sb, \.inodes_per_chunk))
                sb.pointee.block_size = 4096
                sb.pointee.inodes_per_chunk = PMFS_INODES_PER_CHUNK
            }
        }
    }

    /// A pool-wide object the superblock names at `reference`, claimed for the
    /// file system. A bad reference is repaired to the only object of the type,
    /// if there is exactly one; otherwise the object is lost and the check stops (nil).
    private func superblockReference(_ reference: WritableKeyPath<pmfs_superblock, UInt64>, _ type: pmfs_type_num, minSize: Int,
                                     code: ProblemCode, named name: String, object: String) -> UInt64? {
        var off = sb.pointee[keyPath: reference]
        if let why = validate(off, type, minSize: minSize) {
            guard let only = onlyObject(type, minSize: minSize) else {
                found(code, "superblock \(name) reference: \(why), and no single \(object) object to use instead")
                fatal = "the \(name) is lost"
                return nil
            }
            found(code, "superblock \(name) reference: \(why); object at \(only) is the only \(name)") {
                try update(field(sb, reference)) { $0 = only }
            }
            off = only
        }
        _ = claim(off, type, minSize: minSize, owner: 0)
        return off
    }

    /// The pool reserve: optional, any size; a bad reference is dropped.
    private func checkReserve() {
        let reserveOff = sb.pointee.reserve_off
        guard reserveOff != 0, let why = claim(reserveOff, PMFS_T_RESERVE, minSize: 1, owner: 0) else { return }
        found(.superblockReserve, "superblock pool reserve reference: \(why)") {
            try update(field(sb, \.reserve_off)) { $0 = 0 }
        }
    }

    /// The data device's size in blocks, from the space bitmap's header and the
    /// superblock: where they disagree, the one the bitmap's object and bits
    /// bear out is kept and the other repaired. Sets dataBlocks and wordCount;
    /// false when neither count fits the bitmap object.
    private func checkDeviceSize(_ bm: UnsafeMutablePointer<pmfs_space_bitmap>, objectSize: Int) -> Bool {
        let headerSize = MemoryLayout<pmfs_space_bitmap>.size
        func fits(_ blocks: UInt64) -> Bool {
            blocks >= 16 && blocks < 1 << 40 && UInt64(headerSize) + (blocks + 63) / 64 * 8 <= UInt64(objectSize)
        }
        let bc = bm.pointee.block_count, wc = bm.pointee.word_count
        let headerConsistent = fits(bc) && wc == (bc + 63) / 64
        let superblockBlocks = sb.pointee.data_blocks
        var trustedBlocks = bc
        if headerConsistent && bc != superblockBlocks {
            trustedBlocks = deviceBlocks(bitmap: bm, blockCount: bc, superblock: superblockBlocks, fits: fits)
            if trustedBlocks == bc {
                found(.superblockDataBlocks, "superblock says the data device has \(superblockBlocks) blocks, the space bitmap covers \(bc)") {
                    try update(field(sb, \.data_blocks)) { $0 = bc }
                }
            } else {
                found(.bitmapBlockCount, "space bitmap covers \(bc) blocks; the superblock says \(superblockBlocks), and the bitmap's bits past the end agree with the superblock") {
                    try update(field(bm, \.block_count)) { $0 = superblockBlocks }
                }
            }
        } else if !headerConsistent {
            guard fits(superblockBlocks) else {
                found(.bitmapHeader, "space bitmap header (\(bc) blocks, \(wc) words) and superblock (\(superblockBlocks) blocks) both disagree with the bitmap object's \(objectSize) bytes")
                fatal = "the size of the data device is unknown"
                return false
            }
            found(.bitmapHeader, "space bitmap header says \(bc) blocks in \(wc) words; the superblock says \(superblockBlocks) blocks") {
                try transaction { tx in
                    try tx.snapshot(field(bm, \.block_count))
                    try tx.snapshot(field(bm, \.word_count))
                    bm.pointee.block_count = superblockBlocks
                    bm.pointee.word_count = (superblockBlocks + 63) / 64
                }
            }
        }
        dataBlocks = headerConsistent ? trustedBlocks : superblockBlocks
        wordCount = Int((dataBlocks + 63) / 64)
        return true
    }

    /// v1 reserves exactly the header block; anything else is damage.
    private func checkReservedBlocks(_ bm: UnsafeMutablePointer<pmfs_space_bitmap>) {
        let rb = bm.pointee.reserved_blocks
        if rb != 1 {
            found(.bitmapReserved, "space bitmap reserves \(rb) blocks, v1 reserves 1 (the data device header)") {
                try update(field(bm, \.reserved_blocks)) { $0 = 1 }
            }
        }
        reservedBlocks = 1
    }

    /// The superblock and a self-consistent bitmap header disagree on the device
    /// size: either may be the damaged one. The bits past the real end are set
    /// (format sets them, nothing clears them), so a count whose tail bits are
    /// not all set is wrong. If both counts pass, the larger one: no extent is
    /// then cut off, and the data device's header decides at the next open.
    private func deviceBlocks(bitmap bm: UnsafeMutablePointer<pmfs_space_bitmap>, blockCount bc: UInt64,
                              superblock sbBlocks: UInt64, fits: (UInt64) -> Bool) -> UInt64 {
        let wc = bm.pointee.word_count
        guard fits(sbBlocks), (sbBlocks + 63) / 64 == wc else { return bc }
        let words = (UnsafeMutableRawPointer(bm) + MemoryLayout<pmfs_space_bitmap>.size).assumingMemoryBound(to: UInt64.self)
        // Both counts lie in the last word (same word count), so only it is read.
        func tailSet(_ blocks: UInt64) -> Bool {
            let bit = blocks % 64
            guard bit != 0 else { return true }
            let mask: UInt64 = ~((1 << bit) - 1)
            return words[Int(wc) - 1] & mask == mask
        }
        switch (tailSet(bc), tailSet(sbBlocks)) {
        case (true, false): return bc
        case (false, true): return sbBlocks
        default: return max(bc, sbBlocks)
        }
    }

    /// Lists every allocated object by pmemobj iteration.
    private func collectObjects() {
        let limit = Int(pool.size / 64) + 1
        var off = cpmdk_first(pool.handle)
        while off != 0 {
            guard objects[off] == nil, objects.count < limit, off < pool.size else {
                fatal = "the pool's object heap cannot be walked (object list loops at offset \(off))"
                return
            }
            objects[off] = PoolObject(type: cpmdk_type_num(pool.handle, off), size: cpmdk_usable_size(pool.handle, off), owner: nil)
            off = cpmdk_next(pool.handle, off)
        }
    }

    private func onlyObject(_ type: pmfs_type_num, minSize: Int) -> UInt64? {
        let matches = objects.filter { $0.value.type == UInt64(type.rawValue) && $0.value.size >= minSize }
        return matches.count == 1 ? matches.first!.key : nil
    }

    /// Without -f on a clean pool: count, do not check (as e2fsck on a clean fs).
    func quickCount() {
        guard let table else { return }
        let count = min(table.pointee.chunk_count, UInt64(PMFS_MAX_INODE_CHUNKS))
        let chunkBytes = Int(PMFS_INODES_PER_CHUNK) * MemoryLayout<pmfs_inode>.stride
        for c in 0..<Int(count) {
            let off = cpmdk_inode_table_chunks(table)[c]
            guard validate(off, PMFS_T_INODE_CHUNK, minSize: chunkBytes) == nil,
                  let base: UnsafeMutablePointer<pmfs_inode> = try? pool.pointer(off) else { continue }
            for i in 0..<Int(PMFS_INODES_PER_CHUNK) where base[i].mode != 0 && (c > 0 || i > 0) {
                liveInodes += 1
                if FileType(mode: base[i].mode) == .directory { directoryCount += 1 }
            }
        }
        var used: UInt64 = 0
        for w in 0..<wordCount { used += UInt64(bitmapWords[w].nonzeroBitCount) }
        let tail = UInt64(wordCount) * 64 - dataBlocks
        usedBlocks = used - min(used, tail + reservedBlocks)
    }
}
