import CPMDK
import PMFSConcurrency
import SystemPackage

/// The bitmap words a run of blocks [start, start + length) covers, in order:
/// each word's index, the mask of the run's bits in it (block b is bit b % 64
/// of word b / 64), and the first block of the run in it. The caller has
/// checked that the run lies on the device.
package struct BitmapRun: Sequence, IteratorProtocol {
    private var block: UInt64
    private let end: UInt64

    package init(start: UInt64, length: UInt64) {
        block = start
        end = start + length
    }

    package mutating func next() -> (word: Int, mask: UInt64, block: UInt64)? {
        guard block < end else { return nil }
        let first = block, bit = block % 64
        let n = Swift.min(64 - bit, end - block)
        block += n
        return (Int(first / 64), n == 64 ? ~0 : ((1 << n) - 1) << bit, first)
    }
}

/// The free-space map of the data device: a persistent bitmap (1 = in use),
/// changed only inside transactions, with a DRAM summary of free blocks per
/// group so allocation skips full regions. A transaction that touches the map
/// holds `lock` until it ends, so no two transactions snapshot the same word.
final class SpaceMap: @unchecked Sendable {
    private let pool: PersistentPool
    private let bitmap: UnsafeMutablePointer<pmfs_space_bitmap>
    private let words: UnsafeMutablePointer<UInt64>
    let blockCount: UInt64
    let reservedBlocks: UInt64
    let lock = Lock()

    /// Blocks per summary group (a 4 KiB stretch of bitmap).
    static let groupBlocks: UInt64 = 32768
    private var groupFree: [UInt32]
    private(set) var freeBlocks: UInt64 = 0
    /// Where the last allocation ended: the next search starts there.
    private var cursor: UInt64 = 0
    /// Delayed allocation, in DRAM only. `claimed` marks blocks chosen for data
    /// being written but not yet committed to the bitmap (nobody else may take
    /// them); `reserved` counts blocks promised to cached writes that have no
    /// blocks chosen yet. Both are lost on a crash, which is right: nothing in
    /// the pool refers to them.
    private var claimed: [UInt64]
    private(set) var claimedBlocks: UInt64 = 0
    private(set) var reservedCount: UInt64 = 0

    init(pool: PersistentPool, bitmapOffset: UInt64) throws {
        self.pool = pool
        bitmap = try pool.pointer(bitmapOffset)
        blockCount = bitmap.pointee.block_count
        reservedBlocks = bitmap.pointee.reserved_blocks
        let wordCount = bitmap.pointee.word_count
        // The header is input: the block count is bounded (the bitmap must fit
        // in the pool) before anything is computed from it.
        guard blockCount <= pool.size * 8, wordCount == (blockCount + 63) / 64, reservedBlocks <= blockCount else {
            throw PoolError.corrupt("space bitmap header (\(blockCount) blocks, \(wordCount) words)")
        }
        _ = try pool.raw(bitmapOffset, length: MemoryLayout<pmfs_space_bitmap>.size + Int(wordCount) * 8)
        words = (UnsafeMutableRawPointer(bitmap) + MemoryLayout<pmfs_space_bitmap>.size).assumingMemoryBound(to: UInt64.self)
        groupFree = Array(repeating: 0, count: Int((blockCount + Self.groupBlocks - 1) / Self.groupBlocks))
        claimed = Array(repeating: 0, count: Int(wordCount))
        rebuildSummary()
    }

    var wordCount: Int { Int(bitmap.pointee.word_count) }

    /// Size in bytes of the bitmap object for a device of `blocks` blocks.
    static func objectSize(blocks: UInt64) -> Int {
        MemoryLayout<pmfs_space_bitmap>.size + Int((blocks + 63) / 64) * 8
    }

    /// Initializes a freshly allocated (zeroed) bitmap object: reserved blocks in use.
    static func format(_ p: UnsafeMutablePointer<pmfs_space_bitmap>, blocks: UInt64, reserved: UInt64) {
        p.pointee.block_count = blocks
        p.pointee.reserved_blocks = reserved
        p.pointee.word_count = (blocks + 63) / 64
        let w = (UnsafeMutableRawPointer(p) + MemoryLayout<pmfs_space_bitmap>.size).assumingMemoryBound(to: UInt64.self)
        for b in 0..<reserved { w[Int(b / 64)] |= 1 << (b % 64) }
        // Bits past the end of the device read as in use, so no search runs off it.
        if blocks % 64 != 0 { w[Int(blocks / 64)] |= ~((1 << (blocks % 64)) - 1) }
    }

    func rebuildSummary() {
        var total: UInt64 = 0
        for g in 0..<groupFree.count {
            let start = UInt64(g) * Self.groupBlocks
            let end = min(start + Self.groupBlocks, blockCount)
            var free: UInt64 = 0
            var w = Int(start / 64)
            while UInt64(w) * 64 < end {
                free += UInt64(64 - words[w].nonzeroBitCount)
                w += 1
            }
            groupFree[g] = UInt32(free)
            total += free
        }
        freeBlocks = total
    }

    /// Whether every block of [start, start+length) is marked in use: blocks a
    /// file maps must be, or a later allocation would hand them out again (an
    /// extent map pointing into free space is damage). Bounds checked by the caller.
    func allUsed(_ start: UInt64, _ length: UInt64) -> Bool {
        for (w, mask, _) in BitmapRun(start: start, length: length) where words[w] & mask != mask { return false }
        return true
    }

    @inline(__always)
    func isUsed(_ block: UInt64) -> Bool {
        words[Int(block / 64)] & (1 << (block % 64)) != 0
    }

    /// Allocates up to `count` blocks in `tx`, preferring to start at `goal`
    /// (where the file's last extent ends), as few runs as possible. Returns the
    /// runs; throws ENOSPC without changing anything if the device lacks space.
    func allocate(_ count: UInt64, goal: UInt64?, in tx: Transaction) throws -> [(start: UInt64, length: UInt64)] {
        tx.hold(.spaceMap, lock)
        guard count <= freeBlocks - claimedBlocks - reservedCount else { throw Errno.noSpace }
        let runs = try chooseRuns(count, goal: goal)
        for run in runs { try mark(run.start, run.length, used: true, tx) }
        return runs
    }

    /// Picks free, unclaimed runs totalling `count` blocks (caller holds `lock`).
    private func chooseRuns(_ count: UInt64, goal: UInt64?) throws -> [(start: UInt64, length: UInt64)] {
        var runs: [(start: UInt64, length: UInt64)] = []
        var remaining = count
        var position = goal.map { $0 < blockCount ? $0 : cursor } ?? cursor
        var wrapped = false
        while remaining > 0 {
            guard let start = findFree(from: position) else {
                if wrapped { throw Errno.noSpace }
                wrapped = true
                position = reservedBlocks
                continue
            }
            var end = start
            let limit = min(start + remaining, blockCount, start + UInt64(UInt32.max))
            while end < limit && !isUsed(end) && !isClaimed(end) { end += 1 }
            runs.append((start, end - start))
            // Runs chosen here must not be chosen again by this same search.
            setClaimed(start, end - start, true)
            remaining -= end - start
            position = end
        }
        cursor = position
        for run in runs { setClaimed(run.start, run.length, false) }
        return runs
    }

    @inline(__always)
    func isClaimed(_ block: UInt64) -> Bool {
        claimed[Int(block / 64)] & (1 << (block % 64)) != 0
    }

    private func setClaimed(_ start: UInt64, _ length: UInt64, _ on: Bool) {
        for (w, mask, _) in BitmapRun(start: start, length: length) {
            if on { claimed[w] |= mask } else { claimed[w] &= ~mask }
        }
    }

    // MARK: delayed allocation

    /// Promises `count` blocks to cached writes; ENOSPC if the device cannot hold them.
    func reserve(_ count: UInt64) throws {
        try lock.withLock {
            guard count <= freeBlocks - claimedBlocks - reservedCount else { throw Errno.noSpace }
            reservedCount += count
        }
    }

    func unreserve(_ count: UInt64) {
        lock.withLock { reservedCount -= min(count, reservedCount) }
    }

    /// Chooses device blocks for `count` reserved blocks of data about to be
    /// written, near `goal`; they stay free in the pool until `commitClaimed`.
    func claim(_ count: UInt64, goal: UInt64?, fromReservation: UInt64) throws -> [(start: UInt64, length: UInt64)] {
        try lock.withLock {
            let taken = min(fromReservation, reservedCount)
            guard count <= freeBlocks - claimedBlocks - (reservedCount - taken) else { throw Errno.noSpace }
            let runs = try chooseRuns(count, goal: goal)
            for run in runs { setClaimed(run.start, run.length, true) }
            reservedCount -= taken
            claimedBlocks += count
            return runs
        }
    }

    /// Gives claimed blocks back (the write failed or was abandoned).
    func releaseClaim(_ start: UInt64, _ length: UInt64) {
        lock.withLock {
            setClaimed(start, length, false)
            claimedBlocks -= length
        }
    }

    /// Marks claimed blocks in use in `tx`; the claim ends when `tx` commits.
    func commitClaimed(_ start: UInt64, _ length: UInt64, in tx: Transaction) throws {
        tx.hold(.spaceMap, lock)
        try mark(start, length, used: true, tx)
        // Counted as claimed until the outcome is known; then either used or claimed again.
        adjustClaimedForCommit(start, length, tx)
    }

    private func adjustClaimedForCommit(_ start: UInt64, _ length: UInt64, _ tx: Transaction) {
        setClaimed(start, length, false)
        claimedBlocks -= length
        tx.onAbort { [self] in setClaimed(start, length, true); claimedBlocks += length }
    }

    /// Returns blocks to the free map in `tx`.
    func free(_ start: UInt64, _ length: UInt64, in tx: Transaction) throws {
        guard length > 0 else { return }
        tx.hold(.spaceMap, lock)
        guard start >= reservedBlocks, start <= blockCount, length <= blockCount - start else {
            throw PoolError.corrupt("freeing blocks \(start)+\(length) outside the device")
        }
        try mark(start, length, used: false, tx)
    }

    /// Sets or clears the bits of [start, start+length), snapshotting their words.
    /// Every bit must currently be in the opposite state (a double allocation or
    /// double free is damage, not something to paper over).
    private func mark(_ start: UInt64, _ length: UInt64, used: Bool, _ tx: Transaction) throws {
        guard length > 0, start >= reservedBlocks, start <= blockCount, length <= blockCount - start else {
            throw PoolError.corrupt("blocks \(start)+\(length) outside the device")
        }
        let firstWord = Int(start / 64), lastWord = Int((start + length - 1) / 64)
        try tx.snapshot(words + firstWord, count: lastWord - firstWord + 1)
        for (w, mask, b) in BitmapRun(start: start, length: length) {
            if used {
                guard words[w] & mask == 0 else { throw PoolError.corrupt("block \(b) allocated twice") }
                words[w] |= mask
            } else {
                guard words[w] & mask == mask else { throw PoolError.corrupt("block \(b) freed twice") }
                words[w] &= ~mask
            }
        }
        adjust(start, length, delta: used ? -1 : 1)
        tx.onAbort { [self] in adjust(start, length, delta: used ? 1 : -1) }
    }

    private func adjust(_ start: UInt64, _ length: UInt64, delta: Int64) {
        var b = start
        let end = start + length
        while b < end {
            let g = Int(b / Self.groupBlocks)
            let n = min((UInt64(g) + 1) * Self.groupBlocks, end) - b
            groupFree[g] = UInt32(Int64(groupFree[g]) + delta * Int64(n))
            b += n
        }
        freeBlocks = UInt64(Int64(freeBlocks) + delta * Int64(length))
    }

    /// The first free block at or after `from`, skipping full groups.
    private func findFree(from: UInt64) -> UInt64? {
        var b = max(from, reservedBlocks)
        while b < blockCount {
            let g = Int(b / Self.groupBlocks)
            if groupFree[g] == 0 {
                b = (UInt64(g) + 1) * Self.groupBlocks
                continue
            }
            let groupEnd = min((UInt64(g) + 1) * Self.groupBlocks, blockCount)
            while b < groupEnd {
                let w = Int(b / 64)
                let freeBits = ~(words[w] | claimed[w]) & (~0 << (b % 64))
                if freeBits != 0 {
                    let found = UInt64(w) * 64 + UInt64(freeBits.trailingZeroBitCount)
                    return found < blockCount ? found : nil
                }
                b = UInt64(w + 1) * 64
            }
        }
        return nil
    }

    /// A copy of the bitmap words, for the checker.
    func wordsSnapshot() -> [UInt64] { Array(UnsafeBufferPointer(start: words, count: wordCount)) }
    var wordsPointer: UnsafeMutablePointer<UInt64> { words }
}
