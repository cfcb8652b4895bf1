import Glibc
import PMFSConcurrency
import PMFSData

/// The DRAM write-back cache: a fixed arena of 4 KiB frames (the hard memory
/// limit), each caching one block of one file. Dirty frames stay until written
/// back; clean frames not in use sit on an LRU list and are reused oldest first.
///
/// The cache lock guards the frame tables, the LRU list and every file's page
/// map; the data in a frame belongs to whoever holds that file's lock (and a pin
/// on the frame, which keeps eviction away).
final class PageCache: @unchecked Sendable {
    static let pageSize = 4096
    let frameCount: Int
    private let arena: AlignedBuffer
    let lock = ConditionLock()

    private var freeFrames: [Int32]
    private var owner: [FileData?]
    private var block: [UInt64]
    private var dirty: [Bool]
    private var pins: [Int32]
    private var lruPrev: [Int32]
    private var lruNext: [Int32]
    private var lruHead: Int32 = -1
    private var lruTail: Int32 = -1
    private(set) var dirtyCount = 0

    init(bytes: Int) {
        frameCount = max(16, bytes / Self.pageSize)
        arena = AlignedBuffer(count: frameCount * Self.pageSize)
        freeFrames = (0..<Int32(frameCount)).reversed()
        owner = Array(repeating: nil, count: frameCount)
        block = Array(repeating: 0, count: frameCount)
        dirty = Array(repeating: false, count: frameCount)
        pins = Array(repeating: 0, count: frameCount)
        lruPrev = Array(repeating: -1, count: frameCount)
        lruNext = Array(repeating: -1, count: frameCount)
    }

    @inline(__always)
    func memory(_ frame: Int32) -> UnsafeMutableRawPointer {
        arena.pointer + Int(frame) * Self.pageSize
    }

    var usage: (frames: Int, used: Int, dirty: Int) {
        lock.withLock { (frameCount, frameCount - freeFrames.count, dirtyCount) }
    }

    var dirtyRatio: Double { lock.withLock { Double(dirtyCount) / Double(frameCount) } }

    // MARK: LRU (cache lock held)

    private func lruRemove(_ f: Int32) {
        let p = lruPrev[Int(f)], n = lruNext[Int(f)]
        guard p != -1 || n != -1 || lruHead == f else { return }
        if p != -1 { lruNext[Int(p)] = n } else { lruHead = n }
        if n != -1 { lruPrev[Int(n)] = p } else { lruTail = p }
        lruPrev[Int(f)] = -1; lruNext[Int(f)] = -1
    }

    private func lruAppend(_ f: Int32) {
        lruPrev[Int(f)] = lruTail
        lruNext[Int(f)] = -1
        if lruTail != -1 { lruNext[Int(lruTail)] = f } else { lruHead = f }
        lruTail = f
    }

    // MARK: pages

    /// The frame caching `blockNumber` of `file`, pinned, or nil.
    func lookup(_ file: FileData, _ blockNumber: UInt64) -> Int32? {
        lock.withLock {
            guard let f = file.pages[blockNumber] else { return nil }
            pinLocked(f)
            return f
        }
    }

    private func pinLocked(_ f: Int32) {
        if pins[Int(f)] == 0 && !dirty[Int(f)] { lruRemove(f) }
        pins[Int(f)] += 1
    }

    /// A new pinned frame for `blockNumber` of `file` (contents undefined): a free
    /// frame, else the least recently used clean one. nil when every frame is
    /// dirty or pinned: the caller must write back and retry.
    func insert(_ file: FileData, _ blockNumber: UInt64, onlyIfAbsent: Bool = false) -> Int32? {
        lock.withLock {
            if let existing = file.pages[blockNumber] {
                if onlyIfAbsent { return nil }
                pinLocked(existing)
                return existing
            }
            var f: Int32
            if let free = freeFrames.popLast() {
                f = free
            } else if lruHead != -1 {
                f = lruHead
                lruRemove(f)
                if let old = owner[Int(f)] { old.pages[block[Int(f)]] = nil }
            } else {
                return nil
            }
            owner[Int(f)] = file
            block[Int(f)] = blockNumber
            dirty[Int(f)] = false
            pins[Int(f)] = 1
            file.pages[blockNumber] = f
            return f
        }
    }

    func unpin(_ f: Int32) {
        lock.withLock {
            pins[Int(f)] -= 1
            if pins[Int(f)] == 0 && !dirty[Int(f)] { lruAppend(f) }
        }
    }

    /// True if the frame's file had no dirty page before.
    @discardableResult
    func markDirty(_ f: Int32) -> Bool {
        lock.withLock {
            guard !dirty[Int(f)] else { return false }
            dirty[Int(f)] = true
            dirtyCount += 1
            guard let file = owner[Int(f)] else { return false }
            defer { file.dirtyBlocks.insert(block[Int(f)]) }
            return file.dirtyBlocks.isEmpty
        }
    }

    /// Whether `blockNumber` of `file` is cached dirty.
    func isDirty(_ file: FileData, _ blockNumber: UInt64) -> Bool {
        lock.withLock { file.dirtyBlocks.contains(blockNumber) }
    }

    func markClean(_ f: Int32) {
        lock.withLock {
            guard dirty[Int(f)] else { return }
            dirty[Int(f)] = false
            dirtyCount -= 1
            if let file = owner[Int(f)] { file.dirtyBlocks.remove(block[Int(f)]) }
            if pins[Int(f)] == 0 { lruAppend(f) }
            lock.broadcast()
        }
    }

    /// Forgets the page of `blockNumber`, dirty or not (truncate, punch, delete).
    /// Returns whether it was dirty.
    @discardableResult
    func drop(_ file: FileData, _ blockNumber: UInt64) -> Bool {
        lock.withLock {
            guard let f = file.pages[blockNumber] else { return false }
            precondition(pins[Int(f)] == 0, "dropping a page in use")
            let wasDirty = dirty[Int(f)]
            if wasDirty { dirtyCount -= 1; file.dirtyBlocks.remove(blockNumber) } else { lruRemove(f) }
            dirty[Int(f)] = false
            owner[Int(f)] = nil
            file.pages[blockNumber] = nil
            freeFrames.append(f)
            lock.broadcast()
            return wasDirty
        }
    }

    /// Whether `file` has any page cached (O(1): the idle-file scan asks it of every file).
    func holdsPages(_ file: FileData) -> Bool {
        lock.withLock { !file.pages.isEmpty }
    }

    /// Whether more than `ratio` of the frames are dirty and `file` has at least `pages` of them.
    func dirtyBeyond(_ ratio: Double, andAtLeast pages: Int, of file: FileData) -> Bool {
        lock.withLock { Double(dirtyCount) > ratio * Double(frameCount) && file.dirtyBlocks.count >= pages }
    }

    func holdsDirtyPages(_ file: FileData) -> Bool {
        lock.withLock { !file.dirtyBlocks.isEmpty }
    }

    /// Cached block numbers of `file` in [from, to).
    func cachedBlocks(_ file: FileData, from: UInt64, to: UInt64) -> [UInt64] {
        lock.withLock { file.pages.keys.filter { $0 >= from && $0 < to }.sorted() }
    }

    /// Dirty block numbers of `file`, ascending, each with its frame pinned,
    /// into `result` (emptied first, its storage kept: write-back reuses one per file).
    func pinDirty(_ file: FileData, into result: inout [(block: UInt64, frame: Int32)]) {
        result.removeAll(keepingCapacity: true)
        lock.withLock {
            for b in file.dirtyBlocks {
                let f = file.pages[b]!
                pinLocked(f)
                result.append((b, f))
            }
        }
        result.sort { $0.block < $1.block }
    }

    /// Waits a little for frames to come free (another thread writing back).
    func waitForFrames() {
        lock.withLock { _ = lock.wait(milliseconds: 10) }
    }
}
