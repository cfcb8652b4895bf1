import CPMDK
import PMFSConcurrency
import SystemPackage

/// The inode table: O(1) lookup of an inode by number (chunk, then slot), and
/// allocation of free numbers from a DRAM list rebuilt by a scan at open.
final class InodeTable: @unchecked Sendable {
    private let pool: PersistentPool
    private let table: UnsafeMutablePointer<pmfs_inode_table>
    /// Free inode numbers, popped by allocation; pushed only after a free commits.
    private var freeNumbers: [UInt64] = []
    private let freeListLock = Lock()
    /// Held by a transaction that grows the table, until it ends.
    let growthLock = Lock()
    private var live: UInt64 = 0
    /// Called when a freed inode's transaction commits, before its number is
    /// reusable. It runs with engine locks held: it must not block on them.
    var releaseObserver: (@Sendable (UInt64) -> Void)?
    /// Inodes in use (committed or being created).
    var liveCount: UInt64 { freeListLock.withLock { live } }

    static let perChunk = UInt64(PMFS_INODES_PER_CHUNK)

    init(pool: PersistentPool, tableOffset: UInt64) throws {
        self.pool = pool
        table = try pool.pointer(tableOffset)
        guard table.pointee.chunk_count <= UInt64(PMFS_MAX_INODE_CHUNKS) else {
            throw PoolError.corrupt("inode table claims \(table.pointee.chunk_count) chunks")
        }
    }

    var chunkCount: UInt64 { table.pointee.chunk_count }
    var capacity: UInt64 { chunkCount * Self.perChunk }

    func chunkOffset(_ chunk: UInt64) -> UInt64 {
        cpmdk_inode_table_chunks(table)[Int(chunk)]
    }

    /// The inode slot for `ino`, whether in use or free; nil if beyond the table.
    @inline(__always)
    func slot(_ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_inode>? {
        let chunk = ino / Self.perChunk
        guard ino != 0, chunk < chunkCount else { return nil }
        return try self.chunk(at: chunkOffset(chunk)) + Int(ino % Self.perChunk)
    }

    /// A chunk of inodes, checked whole: every slot in it lies inside the pool.
    @inline(__always)
    private func chunk(at offset: UInt64) throws -> UnsafeMutablePointer<pmfs_inode> {
        try pool.pointer(offset, count: Int(Self.perChunk))
    }

    /// The in-use inode `ino`, or ENOENT / ESTALE.
    @inline(__always)
    func inode(_ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_inode> {
        guard let p = try slot(ino), p.pointee.mode != 0 else { throw Errno.noSuchFileOrDirectory }
        return p
    }

    /// Scans every chunk to rebuild the free list. Returns the live inodes seen.
    func rebuildFreeList() throws {
        var free: [UInt64] = []
        var live: UInt64 = 0
        for chunk in 0..<chunkCount {
            let base = try self.chunk(at: chunkOffset(chunk))
            for i in 0..<Self.perChunk {
                let ino = chunk * Self.perChunk + i
                if ino == 0 { continue }
                if base[Int(i)].mode == 0 { free.append(ino) } else { live += 1 }
            }
        }
        // Pop from the end: lowest numbers first keeps the table dense.
        freeNumbers = free.reversed()
        self.live = live
    }

    var freeCount: UInt64 { freeListLock.withLock { UInt64(freeNumbers.count) } }

    /// Takes a free inode number for a new inode in `tx`, growing the table if
    /// needed. The slot is written by the caller; the number returns to the free
    /// list if the transaction aborts.
    func allocate(in tx: Transaction) throws -> UInt64 {
        try allocate(count: 1, in: tx)[0]
    }

    /// Takes `count` free numbers in `tx` (a snapshot's inodes). A chunk the
    /// table grows by serves the rest of the request at once: its numbers
    /// reach the free list only when `tx` commits, so taking one number per
    /// new chunk would grow the table by a chunk per inode.
    func allocate(count: Int, in tx: Transaction) throws -> [UInt64] {
        var numbers: [UInt64] = []
        numbers.reserveCapacity(count)
        while numbers.count < count {
            if let ino = popFree(tx) { numbers.append(ino); continue }
            tx.hold(.inodeAllocation, growthLock)
            // Another transaction may have grown the table while we waited.
            if let ino = popFree(tx) { numbers.append(ino); continue }
            let fresh = try growChunk(tx)
            let taken = fresh.prefix(count - numbers.count)
            numbers.append(contentsOf: taken)
            let rest = fresh.dropFirst(taken.count)
            let used = UInt64(taken.count)
            tx.onCommit { [self] in
                freeListLock.withLock {
                    freeNumbers.append(contentsOf: rest.reversed())
                    live += used
                }
            }
        }
        return numbers
    }

    /// Adds a chunk to the table in `tx` and returns its inode numbers.
    private func growChunk(_ tx: Transaction) throws -> Range<UInt64> {
        let chunk = table.pointee.chunk_count
        guard chunk < UInt64(PMFS_MAX_INODE_CHUNKS) else { throw Errno.noSpace }
        let off = try tx.allocate(size: MemoryLayout<pmfs_inode>.stride * Int(Self.perChunk), type: PMFS_T_INODE_CHUNK)
        let slot = cpmdk_inode_table_chunks(table) + Int(chunk)
        try tx.snapshot(slot)
        slot.pointee = off
        try tx.snapshot(field(table, \.chunk_count))
        table.pointee.chunk_count = chunk + 1
        let first = chunk == 0 ? 1 : chunk * Self.perChunk
        return first..<((chunk + 1) * Self.perChunk)
    }

    private func popFree(_ tx: Transaction) -> UInt64? {
        let ino: UInt64? = freeListLock.withLock {
            guard let n = freeNumbers.popLast() else { return nil }
            live += 1
            return n
        }
        if let ino {
            tx.onAbort { [self] in freeListLock.withLock { freeNumbers.append(ino); live -= 1 } }
        }
        return ino
    }

    /// Marks `ino` free in `tx` (mode 0); the number is reusable once `tx` commits.
    func release(_ ino: UInt64, in tx: Transaction) throws {
        let p = try inode(ino)
        try tx.snapshot(p)
        let generation = p.pointee.generation
        p.pointee = pmfs_inode()
        p.pointee.generation = generation
        tx.onCommit { [self] in
            // Upper layers forget the inode before its number can be reused.
            releaseObserver?(ino)
            freeListLock.withLock { freeNumbers.append(ino); live -= 1 }
        }
    }
}
