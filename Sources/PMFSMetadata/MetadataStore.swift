import CPMDK
import Glibc
import Logging
import PMFSConcurrency
import SystemPackage

/// The persistent-memory metadata engine: every inode, directory, extent map,
/// xattr and the free-space map of the data device, in one libpmemobj pool.
///
/// Every namespace operation is one pmemobj transaction: atomic, and durable
/// when the call returns. Operations lock the inodes they change (striped
/// reader-writer locks, taken in a fixed order), so operations on unrelated
/// files run in parallel; pool-wide structures (orphan list, inode table
/// growth, space bitmap) have their own locks, held until commit.
public final class MetadataStore: @unchecked Sendable {
    public struct FormatOptions: Sendable {
        public var poolSize: UInt64
        public var dataBlocks: UInt64
        public var blockSize: UInt32 = 4096
        public var label: String = ""
        public var uuid: [UInt8] = randomUUID()
        public var dataUUID: [UInt8] = randomUUID()

        public init(poolSize: UInt64, dataBlocks: UInt64) {
            self.poolSize = poolSize
            self.dataBlocks = dataBlocks
        }
    }

    public enum OpenMode: Sendable {
        /// Serve the pool: mark it in use, recover after an unclean stop.
        case readWrite
        /// Inspect only: nothing in the pool is changed.
        case inspect
    }

    let pool: PersistentPool
    let inodes: InodeTable
    let space: SpaceMap
    /// Reference counts of shared data blocks (part of the space map, under its lock).
    let shared: SharedBlocks
    let locks = InodeLockTable()
    /// Serializes renames between directories, so the check that a directory
    /// is not moved into its own subtree cannot race another such rename.
    let renameLock = Lock()
    let orphanLock = Lock()
    /// Guards the pool reserve (superblock.reserve_off).
    let reserveLock = Lock()
    let seed: UInt64
    let mode: OpenMode
    private var pins: [UInt64: Int] = [:]
    private let pinLock = Lock()
    let logger: Logger

    /// The pool was not marked clean when opened (the last user crashed).
    public private(set) var recoveredFromUncleanShutdown = false
    /// Orphans (unlinked while open) reclaimed at open.
    public private(set) var reclaimedOrphans = 0

    public let blockSize: UInt32
    public let uuid: [UInt8]
    public let dataUUID: [UInt8]
    public var label: String {
        withUnsafeBytes(of: pool.superblock.pointee.label) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
    }
    public var poolPath: String { pool.path }

    /// Files with more links than this get EMLINK (as ext4).
    public static let maxLinks: UInt32 = 65000
    /// The longest symlink target (PATH_MAX less the NUL).
    public static let maxSymlinkLength = 4095

    private init(pool: PersistentPool, mode: OpenMode, logger: Logger) throws {
        self.pool = pool
        self.mode = mode
        self.logger = logger
        let sb = pool.superblock
        guard sb.pointee.magic == PMFS_MAGIC else { throw PoolError.notPMFS(path: pool.path) }
        guard sb.pointee.format_version <= PMFS_FORMAT_VERSION else {
            throw PoolError.unsupportedVersion(found: sb.pointee.format_version, supported: PMFS_FORMAT_VERSION)
        }
        guard sb.pointee.incompat_features & ~PMFS_INCOMPAT_KNOWN == 0 else {
            throw PoolError.unknownFeatures(sb.pointee.incompat_features)
        }
        // A writer that does not know a rocompat feature would break it; inspecting is safe.
        guard mode != .readWrite || sb.pointee.rocompat_features & ~UInt64(PMFS_ROCOMPAT_KNOWN) == 0 else {
            throw PoolError.unknownWriteFeatures(sb.pointee.rocompat_features & ~UInt64(PMFS_ROCOMPAT_KNOWN))
        }
        guard sb.pointee.block_size == 4096, sb.pointee.inodes_per_chunk == PMFS_INODES_PER_CHUNK else {
            throw PoolError.corrupt("superblock block size \(sb.pointee.block_size) / inodes per chunk \(sb.pointee.inodes_per_chunk)")
        }
        seed = sb.pointee.hash_seed
        blockSize = sb.pointee.block_size
        uuid = withUnsafeBytes(of: sb.pointee.uuid) { Array($0) }
        dataUUID = withUnsafeBytes(of: sb.pointee.data_uuid) { Array($0) }
        inodes = try InodeTable(pool: pool, tableOffset: sb.pointee.inode_table_off)
        space = try SpaceMap(pool: pool, bitmapOffset: sb.pointee.space_bitmap_off)
        shared = SharedBlocks(pool: pool, superblock: sb, dataArea: space.reservedBlocks..<space.blockCount, lock: space.lock)
        guard space.blockCount == sb.pointee.data_blocks else {
            throw PoolError.corrupt("space bitmap covers \(space.blockCount) blocks, superblock says \(sb.pointee.data_blocks)")
        }
        try inodes.rebuildFreeList()
        guard let root = try inodes.slot(PMFS_ROOT_INO), FileType(mode: root.pointee.mode) == .directory else {
            throw PoolError.corrupt("root directory missing")
        }
    }

    // MARK: format and open

    /// Creates a pool at `poolPath` and formats an empty file system in it.
    /// The caller writes the matching header to the data device.
    public static func format(poolPath: String, options: FormatOptions, logger: Logger = Logger(label: "pmfs.metadata")) throws -> MetadataStore {
        guard options.blockSize == 4096 else { throw PoolError.invalidArgument("block size must be 4096") }
        guard options.dataBlocks >= 16 else { throw PoolError.invalidArgument("data device too small: \(options.dataBlocks) blocks of \(options.blockSize) bytes (need at least 16)") }
        guard options.label.utf8.count < 64 else { throw PoolError.invalidArgument("label longer than 63 bytes") }
        let minimum = UInt64(cpmdk_min_pool_size())
        let needed = minimum + UInt64(SpaceMap.objectSize(blocks: options.dataBlocks)) * 2 + 4 << 20
        guard options.poolSize >= needed else {
            throw PoolError.invalidArgument("pool size \(options.poolSize) bytes is too small for \(options.dataBlocks) data blocks (need at least \(needed))")
        }
        let pool = try PersistentPool.create(path: poolPath, size: options.poolSize)
        do {
            try pool.transaction { tx in
                let sb = pool.superblock
                try tx.snapshot(sb)
                let tableOff = try tx.allocate(size: MemoryLayout<pmfs_inode_table>.size, type: PMFS_T_INODE_TABLE)
                let bitmapOff = try tx.allocate(size: SpaceMap.objectSize(blocks: options.dataBlocks), type: PMFS_T_SPACE_BITMAP)
                SpaceMap.format(try pool.pointer(bitmapOff), blocks: options.dataBlocks, reserved: 1)
                sb.pointee.format_version = PMFS_FORMAT_VERSION
                sb.pointee.state = PMFS_STATE_CLEAN
                withUnsafeMutableBytes(of: &sb.pointee.uuid) { $0.copyBytes(from: options.uuid.prefix(16)) }
                withUnsafeMutableBytes(of: &sb.pointee.data_uuid) { $0.copyBytes(from: options.dataUUID.prefix(16)) }
                withUnsafeMutableBytes(of: &sb.pointee.label) { $0.copyBytes(from: Array(options.label.utf8)) }
                sb.pointee.block_size = options.blockSize
                sb.pointee.inodes_per_chunk = PMFS_INODES_PER_CHUNK
                sb.pointee.data_blocks = options.dataBlocks
                sb.pointee.hash_seed = UInt64.random(in: 0...UInt64.max)
                sb.pointee.inode_table_off = tableOff
                sb.pointee.space_bitmap_off = bitmapOff
                sb.pointee.created = Timestamp.now().persistent
                // The root directory is inode 1, in the table's first chunk.
                let table = InodeTable(uncheckedPool: pool, tableOffset: tableOff)
                let ino = try table.allocate(in: tx)
                precondition(ino == PMFS_ROOT_INO)
                let root = try table.slot(ino)!
                let now = Timestamp.now().persistent
                root.pointee.mode = UInt32(S_IFDIR) | 0o755
                root.pointee.nlink = 2
                root.pointee.generation = 1
                root.pointee.parent = PMFS_ROOT_INO
                root.pointee.atime = now; root.pointee.mtime = now; root.pointee.ctime = now; root.pointee.btime = now
                root.pointee.content_off = try DirectoryIndex.create(in: tx)
                // The magic goes in last: a pool cut short by a crash is not a pmfs pool.
                sb.pointee.magic = PMFS_MAGIC
            }
        } catch {
            pool.close()
            _ = Glibc.unlink(poolPath)
            throw error
        }
        return try MetadataStore(pool: pool, mode: .readWrite, logger: logger).started()
    }

    /// Opens an existing pool. With `dataDevice`, its header must match the pool.
    public static func open(poolPath: String, dataDevice: DataDeviceHeader? = nil, mode: OpenMode = .readWrite,
                            logger: Logger = Logger(label: "pmfs.metadata")) throws -> MetadataStore {
        let pool = try PersistentPool.open(path: poolPath)
        do {
            let store = try MetadataStore(pool: pool, mode: mode, logger: logger)
            if let header = dataDevice { try store.checkDataDevice(header) }
            return mode == .readWrite ? try store.started() : store
        } catch {
            pool.close()
            throw error
        }
    }

    public func checkDataDevice(_ header: DataDeviceHeader) throws {
        guard header.fsUUID == uuid else {
            throw PoolError.dataDeviceMismatch("it belongs to file system \(formatUUID(header.fsUUID)), the pool is \(formatUUID(uuid))")
        }
        guard header.dataUUID == dataUUID else {
            throw PoolError.dataDeviceMismatch("device UUID \(formatUUID(header.dataUUID)), the pool expects \(formatUUID(dataUUID))")
        }
        guard header.blockCount == space.blockCount, header.blockSize == blockSize else {
            throw PoolError.dataDeviceMismatch("device has \(header.blockCount) blocks of \(header.blockSize), the pool expects \(space.blockCount) of \(blockSize)")
        }
    }

    /// Marks the pool in use; after an unclean stop, reclaims orphans first.
    private func started() throws -> MetadataStore {
        let sb = pool.superblock
        recoveredFromUncleanShutdown = sb.pointee.state != PMFS_STATE_CLEAN
        if recoveredFromUncleanShutdown || sb.pointee.orphan_head != 0 {
            reclaimedOrphans = try reclaimAllOrphans()
        }
        try pool.transaction { tx in
            try tx.snapshot(sb)
            if recoveredFromUncleanShutdown { sb.pointee.unclean_count += 1 }
            sb.pointee.state = PMFS_STATE_IN_USE
            // v1 -> v2: the refcount tree is absent (root 0 = nothing shared), so
            // the upgrade is the version number; older pmfs then refuses the pool.
            if sb.pointee.format_version < PMFS_FORMAT_VERSION_REFCOUNT {
                logger.notice("upgrading pool \(pool.path) from format version \(sb.pointee.format_version) to \(PMFS_FORMAT_VERSION)")
                sb.pointee.format_version = PMFS_FORMAT_VERSION
            }
            sb.pointee.mount_count += 1
            sb.pointee.last_open = Timestamp.now().persistent
        }
        if !ensureReserve() {
            logger.warning("metadata pool \(pool.path) has no room for its write-back reserve: writes into holes will get ENOSPC")
        }
        if recoveredFromUncleanShutdown {
            logger.warning("pool \(pool.path) was not closed cleanly; recovered, \(reclaimedOrphans) orphan inode(s) reclaimed")
        }
        return self
    }

    /// Closes the pool without marking it clean (something failed on the way
    /// down): the next open recovers, as after a crash.
    public func closeUnclean() {
        pool.close()
    }

    /// Marks the pool clean and closes it. Inodes still pinned stay on the orphan
    /// list and are reclaimed at the next open.
    public func close() throws {
        if mode == .readWrite {
            try pool.transaction { tx in
                let sb = pool.superblock
                try tx.snapshot(field(sb, \.state))
                sb.pointee.state = PMFS_STATE_CLEAN
            }
        }
        pool.close()
    }

    // MARK: pins (references held by open files and the kernel's lookup counts)

    /// Adds a reference that keeps an unlinked inode alive (until `unpin`).
    public func pin(_ ino: UInt64) throws {
        try locks.withShared(ino) {
            _ = try inodes.inode(ino)
            pinLock.withLock { pins[ino, default: 0] += 1 }
        }
    }

    /// Pins `ino` only if it is still the inode of `generation`: false once it
    /// was freed, or freed and its number given to a new file. Write-back holds
    /// such a pin, so the inode cannot be freed under it.
    public func pin(_ ino: UInt64, generation: UInt64) throws -> Bool {
        try locks.withShared(ino) {
            guard let p = try inodes.slot(ino), p.pointee.mode != 0, p.pointee.generation == generation else { return false }
            pinLock.withLock { pins[ino, default: 0] += 1 }
            return true
        }
    }

    /// Drops `count` references; an orphan whose last reference goes is reclaimed.
    public func unpin(_ ino: UInt64, count: Int = 1) throws {
        try locks.withExclusive(ino) {
            let remaining: Int = pinLock.withLock {
                let n = max(0, (pins[ino] ?? 0) - count)
                if n == 0 { pins[ino] = nil } else { pins[ino] = n }
                return n
            }
            guard remaining == 0, let p = try inodes.slot(ino), p.pointee.mode != 0,
                  p.pointee.flags & PMFS_INODE_ORPHAN != 0 else { return }
            try pool.transaction { tx in
                try removeOrphan(ino, tx)
                try destroyInode(ino, tx)
            }
        }
    }

    /// Registers the one observer told of every freed inode (the file-system core,
    /// which must drop cached state before the number is reused). It is called
    /// with engine locks held and must only take locks of its own.
    public func onInodeReleased(_ observer: @escaping @Sendable (UInt64) -> Void) {
        inodes.releaseObserver = observer
    }

    func pinLockedIncrement(_ ino: UInt64) { pinLock.withLock { pins[ino, default: 0] += 1 } }

    func pinLockedDecrement(_ ino: UInt64) {
        pinLock.withLock {
            let n = (pins[ino] ?? 0) - 1
            pins[ino] = n > 0 ? n : nil
        }
    }

    func isPinned(_ ino: UInt64) -> Bool { pinLock.withLock { pins[ino] != nil } }

    public func pinCount(_ ino: UInt64) -> Int { pinLock.withLock { pins[ino] ?? 0 } }

    // MARK: attributes

    func attributes(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>) -> InodeAttributes {
        let i = p.pointee
        var nlink = i.nlink
        // As ext4's dir_nlink: a directory past the link limit reports 1 ("unknown").
        if FileType(mode: i.mode) == .directory && nlink >= Self.maxLinks { nlink = 1 }
        var size = i.size, blocks = i.blocks
        if FileType(mode: i.mode) == .directory { (size, blocks) = directorySize(i) }
        return InodeAttributes(ino: ino, generation: i.generation, mode: i.mode, nlink: nlink, uid: i.uid, gid: i.gid,
                               size: size, blocks: blocks, rdev: i.rdev, atime: Timestamp(i.atime),
                               mtime: Timestamp(i.mtime), ctime: Timestamp(i.ctime), btime: Timestamp(i.btime),
                               flags: i.attr_flags, readOnly: i.flags & PMFS_INODE_READONLY != 0)
    }

    /// A directory's size as ext4 users expect it: the bytes its entry slots
    /// take, in whole 4 KiB blocks (one at least), and as many 512-byte blocks.
    /// A damaged header reports one block (the walk that reads it says EIO).
    private func directorySize(_ i: pmfs_inode) -> (size: UInt64, blocks: UInt64) {
        let slots = (try? DirectoryIndex(pool: pool, offset: i.content_off, seed: seed))?.slotCount ?? 0
        let (bytes, overflow) = slots.multipliedReportingOverflow(by: UInt64(MemoryLayout<pmfs_dirent>.stride))
        let blockBytes: UInt64 = 4096
        let count = overflow ? UInt64.max / blockBytes : max(1, bytes / blockBytes + (bytes % blockBytes == 0 ? 0 : 1))
        let size = count.multipliedReportingOverflow(by: blockBytes)
        return size.overflow ? (UInt64.max & ~(blockBytes - 1), UInt64.max / 512) : (size.partialValue, size.partialValue / 512)
    }

    public func getattr(_ ino: UInt64) throws -> InodeAttributes {
        try locks.withShared(ino) { attributes(ino, try inodes.inode(ino)) }
    }

    /// pmemobj transactions committed and aborted since the pool was opened.
    public var transactionCounts: (committed: UInt64, aborted: UInt64) { pool.transactionCounts }

    public func statistics() -> FileSystemStatistics {
        let live = inodes.liveCount
        // Inodes are limited by pool space; estimate 1 KiB of pool per inode.
        let total = max(live + inodes.freeCount, min(UInt64(PMFS_MAX_INODE_CHUNKS) * InodeTable.perChunk, pool.size / 1024))
        let freeBlocks = space.lock.withLock { space.freeBlocks }
        return FileSystemStatistics(blockSize: blockSize, totalBlocks: space.blockCount - space.reservedBlocks,
                                    freeBlocks: freeBlocks, totalInodes: total, freeInodes: total - live,
                                    nameMax: PMFS_NAME_MAX, poolBytes: pool.size, poolObjectBytes: pool.objectBytes)
    }

    // MARK: helpers for operations

    func directory(_ p: UnsafeMutablePointer<pmfs_inode>) throws -> DirectoryIndex {
        guard FileType(mode: p.pointee.mode) == .directory else { throw Errno.notDirectory }
        return try DirectoryIndex(pool: pool, offset: p.pointee.content_off, seed: seed)
    }

    /// A directory that can take new entries: a live directory.
    func liveDirectory(_ ino: UInt64) throws -> (UnsafeMutablePointer<pmfs_inode>, DirectoryIndex) {
        let p = try inodes.inode(ino)
        let d = try directory(p)
        guard p.pointee.nlink > 0 else { throw Errno.noSuchFileOrDirectory }
        return (p, d)
    }

    static func touch(_ p: UnsafeMutablePointer<pmfs_inode>, _ tx: Transaction, mtime: Bool = true, _ now: pmfs_timespec) throws {
        try tx.snapshot(field(p, \.mtime))
        try tx.snapshot(field(p, \.ctime))
        if mtime { p.pointee.mtime = now }
        p.pointee.ctime = now
    }

    /// Frees an inode with no links and no pins, and everything it owns.
    func destroyInode(_ ino: UInt64, _ tx: Transaction) throws {
        let p = try inodes.inode(ino)
        switch FileType(mode: p.pointee.mode) {
        case .directory:
            if p.pointee.content_off != 0 {
                let d = try directory(p)
                guard d.entryCount == 0 else { throw PoolError.corrupt("freeing non-empty directory \(ino)") }
                try d.destroy(offset: p.pointee.content_off, in: tx)
            }
        case .regular:
            let tree = extentTree(p)
            var extents: [ExtentTree.Entry] = []
            try tree.forEach { extents.append($0) }
            for e in extents { try dropOwner(e.deviceBlock, e.length, tx) }
            try tree.destroyNodes(in: tx)
        case .symbolicLink:
            try tx.free(p.pointee.content_off)
        default:
            break
        }
        try tx.free(p.pointee.xattr_off)
        try inodes.release(ino, in: tx)
    }

    /// Drops one link of `ino` (already removed from a directory). A file with
    /// no links left is freed, or put on the orphan list if something holds it.
    func dropLink(_ ino: UInt64, _ p: UnsafeMutablePointer<pmfs_inode>, isDirectory: Bool, _ tx: Transaction, _ now: pmfs_timespec) throws {
        try tx.snapshot(field(p, \.nlink))
        try tx.snapshot(field(p, \.ctime))
        p.pointee.ctime = now
        if isDirectory {
            p.pointee.nlink = 0
        } else {
            guard p.pointee.nlink > 0 else { throw PoolError.corrupt("inode \(ino) link count underflow") }
            p.pointee.nlink -= 1
        }
        guard p.pointee.nlink == 0 else { return }
        if isPinned(ino) {
            try addOrphan(ino, tx)
        } else {
            try destroyInode(ino, tx)
        }
    }

    // MARK: orphan list

    func addOrphan(_ ino: UInt64, _ tx: Transaction) throws {
        tx.hold(.orphanList, orphanLock)
        let sb = pool.superblock
        let p = try inodes.inode(ino)
        let head = sb.pointee.orphan_head
        try tx.snapshot(field(p, \.flags))
        try tx.snapshot(field(p, \.orphan_next))
        try tx.snapshot(field(p, \.orphan_prev))
        p.pointee.flags |= PMFS_INODE_ORPHAN
        p.pointee.orphan_next = head
        p.pointee.orphan_prev = 0
        if head != 0 {
            let h = try orphanNeighbour(head)
            try tx.snapshot(field(h, \.orphan_prev))
            h.pointee.orphan_prev = ino
        }
        try tx.snapshot(field(sb, \.orphan_head))
        sb.pointee.orphan_head = ino
    }

    /// An inode the orphan list links to: one that is not there is damage
    /// (EIO, fsck.pmfs rebuilds the list), not ENOENT for the caller's file.
    private func orphanNeighbour(_ ino: UInt64) throws -> UnsafeMutablePointer<pmfs_inode> {
        guard let p = try inodes.slot(ino), p.pointee.mode != 0 else { throw PoolError.corrupt("orphan list links to inode \(ino), which is free") }
        return p
    }

    func removeOrphan(_ ino: UInt64, _ tx: Transaction) throws {
        tx.hold(.orphanList, orphanLock)
        let sb = pool.superblock
        let p = try inodes.inode(ino)
        let next = p.pointee.orphan_next, prev = p.pointee.orphan_prev
        if prev != 0 {
            let q = try orphanNeighbour(prev)
            try tx.snapshot(field(q, \.orphan_next))
            q.pointee.orphan_next = next
        } else {
            guard sb.pointee.orphan_head == ino else { throw PoolError.corrupt("orphan list does not start at \(ino)") }
            try tx.snapshot(field(sb, \.orphan_head))
            sb.pointee.orphan_head = next
        }
        if next != 0 {
            let q = try orphanNeighbour(next)
            try tx.snapshot(field(q, \.orphan_prev))
            q.pointee.orphan_prev = prev
        }
        try tx.snapshot(field(p, \.flags))
        try tx.snapshot(field(p, \.orphan_next))
        try tx.snapshot(field(p, \.orphan_prev))
        p.pointee.flags &= ~PMFS_INODE_ORPHAN
        p.pointee.orphan_next = 0
        p.pointee.orphan_prev = 0
    }

    /// Frees every inode on the orphan list: nothing can hold them after a restart.
    private func reclaimAllOrphans() throws -> Int {
        var count = 0
        var seen = Set<UInt64>()
        while pool.superblock.pointee.orphan_head != 0 {
            let ino = pool.superblock.pointee.orphan_head
            do {
                guard seen.insert(ino).inserted else { throw PoolError.corrupt("orphan list loops at \(ino)") }
                try pool.transaction { tx in
                    try removeOrphan(ino, tx)
                    let p = try inodes.inode(ino)
                    if p.pointee.nlink == 0 { try destroyInode(ino, tx) }
                }
            } catch let e as PoolError {
                // A damaged orphan costs its space until fsck.pmfs, not the whole file system.
                logger.error("orphan inode \(ino) not reclaimed: \(e)")
                break
            }
            count += 1
        }
        return count
    }

    /// Inode numbers on the orphan list, in order.
    public func orphans() throws -> [UInt64] {
        var result: [UInt64] = []
        var ino = pool.superblock.pointee.orphan_head
        while ino != 0 && result.count <= Int(inodes.capacity) {
            result.append(ino)
            ino = try inodes.inode(ino).pointee.orphan_next
        }
        return result
    }
}

extension InodeTable {
    /// For format: a table whose header was just allocated in the same transaction.
    convenience init(uncheckedPool pool: PersistentPool, tableOffset: UInt64) {
        try! self.init(pool: pool, tableOffset: tableOffset)
    }
}
