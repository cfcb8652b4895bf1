import CPMDK
import Glibc
import PMFSConcurrency
import SystemPackage
import Synchronization

/// An open libpmemobj pool: the mapping, bounds-checked access to objects by
/// offset, and transactions.
package final class PersistentPool: @unchecked Sendable {
    package let handle: OpaquePointer
    package let base: UnsafeMutableRawPointer
    package let size: UInt64
    package let path: String
    package let uuidLo: UInt64
    private var closed = false
    /// Transactions ended so far, for the metrics (read when scraped).
    private let committedCount = Atomic<UInt64>(0), abortedCount = Atomic<UInt64>(0)
    package var transactionCounts: (committed: UInt64, aborted: UInt64) {
        (committedCount.load(ordering: .relaxed), abortedCount.load(ordering: .relaxed))
    }
    /// Offsets of the live objects: the heap's own list, read at open, then
    /// kept as transactions commit. libpmemobj frees whatever offset it is
    /// given and crashes (SIGSEGV, SIGFPE) on one that starts no object, so a
    /// reference read from the pool is checked here before it is freed.
    private var liveObjects = Set<UInt64>()
    private let liveObjectsLock = Lock()
    /// Usable bytes of the live objects: summed at open, then moved by each
    /// committed transaction (for the metrics and `pmfsctl df`).
    private let liveObjectBytes = Atomic<Int64>(0)
    package var objectBytes: UInt64 { UInt64(clamping: liveObjectBytes.load(ordering: .relaxed)) }

    private init(handle: OpaquePointer, path: String) throws {
        self.handle = handle
        self.path = path
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw PoolError.cannotOpen(path: path, reason: String(cString: strerror(errno)))
        }
        size = UInt64(st.st_size)
        Self.closeOnExec(poolDevice: st.st_dev, inode: st.st_ino)
        let rootOff = cpmdk_root(handle, MemoryLayout<pmfs_superblock>.size)
        guard rootOff != 0, let rootPtr = pmemobj_direct(PMEMoid(pool_uuid_lo: cpmdk_pool_uuid_lo(handle), off: rootOff)) else {
            throw PoolError.cannotOpen(path: path, reason: "no root object: \(String(cString: cpmdk_errormsg()))")
        }
        base = rootPtr - Int(rootOff)
        uuidLo = cpmdk_pool_uuid_lo(handle)
        rootOffset = rootOff
        var off = cpmdk_first(handle)
        var bytes: Int64 = 0
        while off != 0 {
            liveObjects.insert(off)
            bytes &+= usableBytes(off)
            off = cpmdk_next(handle, off)
        }
        liveObjectBytes.store(bytes, ordering: .relaxed)
    }

    /// What libpmemobj says the object at `offset` holds (its allocation header).
    fileprivate func usableBytes(_ offset: UInt64) -> Int64 {
        Int64(clamping: pmemobj_alloc_usable_size(PMEMoid(pool_uuid_lo: uuidLo, off: offset)))
    }

    fileprivate func objectBytesChanged(by delta: Int64) {
        if delta != 0 { liveObjectBytes.add(delta, ordering: .relaxed) }
    }

    /// Takes `offset` out of the live set for a free; false if no object starts there.
    fileprivate func takeForFree(_ offset: UInt64) -> Bool {
        liveObjectsLock.withLock { liveObjects.remove(offset) != nil }
    }

    fileprivate func noteLive<S: Sequence<UInt64>>(_ offsets: S) {
        liveObjectsLock.withLock { liveObjects.formUnion(offsets) }
    }

    /// Whether an object starts at `offset` (for tests).
    package func isLiveObject(_ offset: UInt64) -> Bool { liveObjectsLock.withLock { liveObjects.contains(offset) } }

    package let rootOffset: UInt64

    /// PMDK keeps the pool file open (holding its lock) without FD_CLOEXEC; a
    /// child started meanwhile would inherit the lock and keep the pool "in use"
    /// after we close it. Mark every descriptor of the pool file close-on-exec.
    private static func closeOnExec(poolDevice: dev_t, inode: ino_t) {
        guard let dir = opendir("/proc/self/fd") else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
            guard let fd = Int32(name) else { continue }
            var st = stat()
            if fstat(fd, &st) == 0, st.st_dev == poolDevice, st.st_ino == inode {
                _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC)
            }
        }
    }

    static func create(path: String, size: UInt64) throws -> PersistentPool {
        try PoolDescriptors.withSpawnLock { try createLocked(path: path, size: size) }
    }

    private static func createLocked(path: String, size: UInt64) throws -> PersistentPool {
        guard let h = pmemobj_create(path, PMFS_LAYOUT_NAME, Int(size), 0o600) else {
            let e = errno
            let msg = String(cString: cpmdk_errormsg())
            if e == EEXIST { throw PoolError.alreadyFormatted(path: path) }
            throw PoolError.cannotCreate(path: path, reason: msg.isEmpty ? String(cString: strerror(e)) : msg)
        }
        do { return try PersistentPool(handle: h, path: path) } catch { pmemobj_close(h); throw error }
    }

    package static func open(path: String) throws -> PersistentPool {
        try PoolDescriptors.withSpawnLock { try openLocked(path: path) }
    }

    private static func openLocked(path: String) throws -> PersistentPool {
        guard let h = pmemobj_open(path, PMFS_LAYOUT_NAME) else {
            let e = errno
            let msg = String(cString: cpmdk_errormsg())
            if e == EINVAL, access(path, R_OK) == 0 { throw PoolError.notPMFS(path: path) }
            throw PoolError.cannotOpen(path: path, reason: msg.isEmpty ? String(cString: strerror(e)) : msg)
        }
        do { return try PersistentPool(handle: h, path: path) } catch { pmemobj_close(h); throw error }
    }

    package func close() {
        guard !closed else { return }
        closed = true
        pmemobj_close(handle)
    }

    deinit { close() }

    /// A typed pointer to the object at `offset`, refusing offsets outside the pool.
    @inline(__always)
    package func pointer<T>(_ offset: UInt64, as type: T.Type = T.self) throws -> UnsafeMutablePointer<T> {
        try pointer(offset, count: 1, as: T.self)
    }

    /// A pointer to `count` consecutive `T`s at `offset` (a chunk of inodes or
    /// directory slots): every one of them must lie inside the pool, so an index
    /// below `count` never reaches memory past it. Offsets come from the pool
    /// and may be anything: the check cannot wrap.
    @inline(__always)
    package func pointer<T>(_ offset: UInt64, count: Int, as type: T.Type = T.self) throws -> UnsafeMutablePointer<T> {
        let (bytes, overflow) = count <= 1 ? (UInt64(MemoryLayout<T>.size), false)
            : UInt64(MemoryLayout<T>.stride).multipliedReportingOverflow(by: UInt64(count))
        guard !overflow, offset >= 4096, offset <= size, bytes <= size - offset, offset % 8 == 0 else {
            throw PoolError.corrupt("reference to offset \(offset) outside the pool (\(count) × \(T.self))")
        }
        return (base + Int(offset)).assumingMemoryBound(to: T.self)
    }

    @inline(__always)
    package func raw(_ offset: UInt64, length: Int) throws -> UnsafeMutableRawPointer {
        guard length >= 0, offset >= 4096, offset <= size, UInt64(length) <= size - offset else {
            throw PoolError.corrupt("reference to offset \(offset)+\(length) outside the pool")
        }
        return base + Int(offset)
    }

    package func offset(of pointer: UnsafeRawPointer) -> UInt64 {
        UInt64(pointer - UnsafeRawPointer(base))
    }

    package var superblock: UnsafeMutablePointer<pmfs_superblock> {
        (base + Int(rootOffset)).assumingMemoryBound(to: pmfs_superblock.self)
    }

    package func persist(_ pointer: UnsafeRawPointer, _ length: Int) {
        cpmdk_persist(handle, pointer, length)
    }

    /// Runs `body` as one pmemobj transaction: every snapshot and allocation in it
    /// commits together or not at all. Errors thrown by `body` abort it.
    package func transaction<T>(_ body: (Transaction) throws -> T) throws -> T {
        let rc = cpmdk_tx_begin(handle)
        guard rc == 0 else { throw Errno.fromPMDK(rc) }
        let tx = Transaction(pool: self)
        let result: T
        do {
            result = try body(tx)
        } catch {
            let code: Int32 = (error as? Errno)?.rawValue ?? ECANCELED
            _ = cpmdk_tx_finish(code == 0 ? ECANCELED : code)
            tx.finish(committed: false)
            abortedCount.add(1, ordering: .relaxed)
            throw error
        }
        let err = cpmdk_tx_finish(0)
        if err != 0 {
            tx.finish(committed: false)
            abortedCount.add(1, ordering: .relaxed)
            throw Errno.fromPMDK(err)
        }
        tx.finish(committed: true)
        committedCount.add(1, ordering: .relaxed)
        return result
    }
}

/// The Swift side of one pmemobj transaction: snapshots, allocations, frees, and
/// the DRAM work that must wait for the outcome (free lists, counters, locks).
package final class Transaction {
    package let pool: PersistentPool
    private var commitActions: [() -> Void] = []
    private var abortActions: [() -> Void] = []
    private var heldLocks: [(GlobalLockRank, Lock)] = []
    /// Objects this transaction allocated, and live ones it took to free.
    private var allocated = Set<UInt64>()
    private var freedLive: [UInt64] = []
    /// Usable bytes allocated less those freed, applied to the pool's count at commit.
    private var objectBytesDelta: Int64 = 0

    init(pool: PersistentPool) { self.pool = pool }

    /// Records the current contents of `count` values at `pointer` in the undo log.
    @inline(__always)
    package func snapshot<T>(_ pointer: UnsafeMutablePointer<T>, count: Int = 1) throws {
        let rc = cpmdk_tx_snapshot(pointer, MemoryLayout<T>.stride * count)
        if rc != 0 { throw Errno.fromPMDK(rc) }
    }

    package func snapshotRaw(_ pointer: UnsafeMutableRawPointer, _ length: Int) throws {
        let rc = cpmdk_tx_snapshot(pointer, length)
        if rc != 0 { throw Errno.fromPMDK(rc) }
    }

    /// Allocates a zeroed object of `size` bytes; new objects need no snapshot.
    package func allocate(size: Int, type: pmfs_type_num) throws -> UInt64 {
        let off = cpmdk_tx_zalloc(size, UInt64(type.rawValue))
        if off == 0 { throw Errno.noSpace }
        allocated.insert(off)
        objectBytesDelta &+= pool.usableBytes(off)
        return off
    }

    /// Frees the object at `offset` (0: nothing). An offset that starts no live
    /// object — damage, or a second free of one — is refused as damage.
    package func free(_ offset: UInt64) throws {
        guard offset != 0 else { return }
        if allocated.remove(offset) == nil {
            guard pool.takeForFree(offset) else {
                throw PoolError.corrupt("reference to offset \(offset), where no object starts (not freed)")
            }
            freedLive.append(offset)
        }
        objectBytesDelta &-= pool.usableBytes(offset)
        let rc = cpmdk_tx_free_off(pool.uuidLo, offset)
        if rc != 0 { throw Errno.fromPMDK(rc) }
    }

    func onCommit(_ action: @escaping () -> Void) { commitActions.append(action) }
    func onAbort(_ action: @escaping () -> Void) { abortActions.append(action) }

    /// Takes a pool-wide lock until the transaction ends. Ranks must ascend.
    func hold(_ rank: GlobalLockRank, _ lock: Lock) {
        if heldLocks.contains(where: { $0.0 == rank }) { return }
        precondition(heldLocks.last.map { $0.0 < rank } ?? true, "global locks taken out of rank order")
        lock.lock()
        heldLocks.append((rank, lock))
    }

    fileprivate func finish(committed: Bool) {
        // Most transactions allocate and free nothing: no lock taken for them.
        if committed ? !allocated.isEmpty : !freedLive.isEmpty { pool.noteLive(committed ? Array(allocated) : freedLive) }
        if committed {
            pool.objectBytesChanged(by: objectBytesDelta)
            for a in commitActions { a() }
        } else {
            for a in abortActions.reversed() { a() }
        }
        for (_, l) in heldLocks.reversed() { l.unlock() }
        heldLocks.removeAll()
    }
}

/// PMDK opens a pool file without O_CLOEXEC and holds a lock on it; we mark
/// the descriptor close-on-exec right after. A process that starts children
/// while other threads open pools (the test suites do) starts them inside
/// `withSpawnLock`, so no child can be made in that window and inherit the lock.
public enum PoolDescriptors {
    private static let lock = Lock()

    public static func withSpawnLock<T>(_ body: () throws -> T) rethrows -> T {
        try lock.withLock(body)
    }
}
