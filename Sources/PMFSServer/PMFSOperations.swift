import CFUSE
import FUSEProtocol
import Glibc
import Logging
import PMFSCore
import PMFSMetadata
import Synchronization
import SystemPackage

/// The FUSE operations of pmfs: FUSE requests mapped onto the metadata engine
/// and the file-system core. Node IDs are inode numbers (1 is the root, as
/// FUSE_ROOT_ID); every entry handed to the kernel pins its inode until the
/// kernel forgets it, so files unlinked while in use live on as orphans.
///
/// Permissions: the mount uses default_permissions (the kernel checks mode
/// bits and ownership, as for a local file system); pmfs adds what a file
/// system must do itself: setgid directories, clearing set-user/group-ID on
/// write, truncate and chown (handle_killpriv_v2), and ACCESS for peers that ask.
public final class PMFSOperations: FUSEOperations, @unchecked Sendable {
    public let metadata: MetadataStore
    public let fs: FileDataTier
    let logger: Logger
    let locks: LockManager
    /// Cache lifetime of names and attributes in the kernel. Short, because
    /// another client (a guest) may change the same files.
    public var entryTimeout = 1.0
    public var attributeTimeout = 1.0
    /// FOPEN_* flags for every opened file (keep the page cache, direct I/O).
    public var openFlags: UInt32 = 0

    /// What one session (one guest) may hold, so no guest can exhaust the
    /// daemon's memory for the others. Set before the session serves.
    public struct Limits: Sendable {
        /// Open files and directories (EMFILE beyond).
        public var openHandles = 65_536
        /// POSIX and flock lock records in the shared table (ENOLCK beyond).
        public var lockRecords = 65_536
        /// SETLKW requests waiting at once (ENOLCK beyond).
        public var lockWaiters = 4_096
        public init() {}
    }
    public var limits = Limits()

    /// How much a session's kernel may cache, as virtiofsd's cache= option.
    public enum CachePolicy: String, CaseIterable, Sendable {
        /// Nothing: every access asks pmfs (direct I/O, no name or attribute cache).
        case none
        /// Names and attributes for a second; pages until the file is opened again.
        case auto
        /// Everything, for a day: for a guest that is the only writer of its files.
        case always
    }

    public func setCachePolicy(_ policy: CachePolicy) {
        switch policy {
        case .none: entryTimeout = 0; attributeTimeout = 0; openFlags = UInt32(FOPEN_DIRECT_IO)
        case .auto: entryTimeout = 1; attributeTimeout = 1; openFlags = 0
        case .always: entryTimeout = 86_400; attributeTimeout = 86_400; openFlags = UInt32(FOPEN_KEEP_CACHE)
        }
    }

    struct Handle {
        var ino: UInt64
        var flags: UInt32
        var directory: Bool
    }
    private let handles = Mutex<(next: UInt64, table: [UInt64: Handle])>((1, [:]))
    /// Whether the kernel was offered the writeback cache (INIT); it then
    /// reads through write-only handles.
    private let writebackCache = Atomic<Bool>(false)
    /// Whether POSIX locks live in pmfsd's table (INIT agreed FUSE_POSIX_LOCKS).
    /// FLUSH only drops them, so without it every open file is FOPEN_NOFLUSH:
    /// close(2) then costs no request (the kernel keeps the locks itself).
    private let remotePosixLocks = Atomic<Bool>(true)

    /// The FOPEN_* flags of a file opened now.
    private var fileOpenFlags: UInt32 {
        remotePosixLocks.load(ordering: .relaxed) ? openFlags : openFlags | UInt32(FOPEN_NOFLUSH)
    }
    /// The kernel's references (lookup counts) held by this session, per inode.
    private let lookups = Mutex<[UInt64: UInt64]>([:])
    /// This session's identity in the lock table shared by all sessions.
    public let session: UInt64
    /// When the peer's FUSE INIT came (wall clock), nil before it and after the session ended.
    private let initializedAt = Mutex<Double?>(nil)

    let group: SessionGroup
    /// What this session sees (nodeid 1 is the export's directory) and may do (Export.swift).
    public let export: Export

    /// `group` is shared by every session serving the same file system (the
    /// host mount and each guest): their locks conflict as they should and
    /// their kernels hear of each other's changes.
    public init(metadata: MetadataStore, fs: FileDataTier, group: SessionGroup = SessionGroup(), limits: Limits = Limits(),
                export: Export = .wholeTree, logger: Logger = Logger(label: "pmfs.fuse")) {
        self.limits = limits
        self.export = export
        self.metadata = metadata
        self.fs = fs
        self.logger = logger
        self.group = group
        self.locks = group.locks
        self.session = group.newSession()
    }

    /// Sends this session's kernel the invalidations other sessions' changes
    /// call for (the host mount; a guest's virtiofs cannot receive them).
    public func listen(_ sink: InvalidationSink) {
        group.coherence.add(InvalidationQueue(session: session, sink: sink, holds: { [weak self] ino in
            self?.lookups.withLock { ($0[ino] ?? 0) > 0 } ?? false
        }))
    }

    /// Stops sending invalidations (delivers what is queued first).
    public func stopListening() { group.coherence.remove(session: session) }

    /// Tells the other sessions what this one changed (cheap when none listens).
    @inline(__always)
    func changed(_ items: @autoclosure () -> [CacheInvalidation]) {
        if group.coherence.active { group.coherence.changed(by: session, items()) }
    }

    /// The inode a name refers to now, for invalidations (only when someone listens).
    func inodeNamed(_ parent: UInt64, _ name: [UInt8]) -> UInt64? {
        guard group.coherence.active, let n = try? FileName(bytes: name) else { return nil }
        return try? metadata.lookup(parent, n, pin: false).ino
    }

    /// The peer is gone (guest reboot, QEMU exit, unmount): drop its kernel
    /// references (orphans it alone held are freed), handles and locks.
    public func endSession() {
        let held = lookups.withLock { table in
            let all = table
            table.removeAll()
            return all
        }
        for (ino, count) in held where count > 0 {
            do { try metadata.unpin(ino, count: Int(clamping: count)) } catch { logger.debug("unpin \(ino): \(error)") }
        }
        handles.withLock { $0.table.removeAll() }
        initializedAt.withLock { $0 = nil }
        locks.releaseSession(session)
    }

    // MARK: helpers

    /// Runs an operation, turning engine errors into errno replies. One that
    /// `changes` the file system passes the writer gate (a snapshot closes it).
    @inline(__always)
    func run<T>(changes: Bool = false, _ body: () throws -> T) throws -> T {
        do { return try changes ? fs.writers.pass(body) : body() } catch let e as Errno {
            throw FUSEError(e.rawValue)
        } catch let e as FUSEError {
            throw e
        } catch let e as PoolError {
            logger.error("\(e)")
            throw FUSEError(EIO)
        } catch {
            logger.error("\(error)")
            throw FUSEError(EIO)
        }
    }

    /// EROFS on a read-only export, or when any of `inodes` is part of a
    /// read-only snapshot. Writes need a handle opened for writing, which
    /// OPEN refuses on such an inode, so WRITE itself is not checked.
    func requireWritable(_ inodes: UInt64?...) throws {
        try export.requireWritable()
        for case let ino? in inodes where try metadata.getattr(ino).readOnly { throw FUSEError(EROFS) }
    }

    func fileName(_ bytes: [UInt8]) throws -> FileName {
        do { return try FileName(bytes: bytes) } catch { throw FUSEError(error.rawValue) }
    }

    /// Attributes as this session's peer sees them (its node IDs and ids).
    func attributes(_ a: InodeAttributes) -> FUSEAttributes {
        export.guestView(FUSEAttributes(ino: a.ino, size: a.size, blocks: a.blocks, atime: (a.atime.seconds, a.atime.nanoseconds),
                       mtime: (a.mtime.seconds, a.mtime.nanoseconds), ctime: (a.ctime.seconds, a.ctime.nanoseconds),
                       mode: a.mode, nlink: a.nlink, uid: a.uid, gid: a.gid, rdev: UInt32(truncatingIfNeeded: a.rdev), blockSize: 4096))
    }

    /// An entry for a pinned inode, with the attributes readers should see.
    /// Every entry is one more kernel reference, counted for this session.
    func entry(_ a: InodeAttributes) throws -> FUSEEntry {
        lookups.withLock { $0[a.ino, default: 0] += 1 }
        return try countedEntry(a)
    }

    /// The entry for an inode whose kernel reference is already counted.
    func countedEntry(_ a: InodeAttributes) throws -> FUSEEntry {
        // Read again after counting the reference: a change by another session
        // either shows here or finds the count and sends an invalidation.
        return FUSEEntry(nodeid: export.nodeid(a.ino), generation: a.generation, attributes: attributes(try fs.getattr(a.ino)),
                         entryTimeout: entryTimeout, attributeTimeout: attributeTimeout)
    }

    /// Owner of a new inode: the caller (in host ids), with the group of a
    /// setgid directory; set-id bits the export does not allow are dropped.
    func owner(_ r: FUSERequest, parent: UInt64, mode: UInt32) throws -> (uid: UInt32, gid: UInt32, mode: UInt32) {
        let caller = try export.hostOwner(uid: r.uid, gid: r.gid)
        let mode = export.admitted(mode: mode)
        let p = try metadata.getattr(parent)
        if p.mode & ModeBits.setGID != 0 {
            let isDir = mode & ModeBits.typeMask == ModeBits.directory
            return (caller.uid, p.gid, isDir ? mode | ModeBits.setGID : mode)
        }
        return (caller.uid, caller.gid, mode)
    }

    /// EMFILE when the session has as many handles open as it may. Checked
    /// before an open or create does anything (concurrent opens may pass the
    /// limit by a few, which only bounds it less tightly).
    func requireHandleSlot() throws {
        guard handles.withLock({ $0.table.count }) < limits.openHandles else {
            logger.warning("session \(session): open handle limit (\(limits.openHandles)) reached: EMFILE")
            throw FUSEError(EMFILE)
        }
    }

    func newHandle(_ h: Handle) -> UInt64 {
        handles.withLock { state in
            let id = state.next
            state.next += 1
            state.table[id] = h
            return id
        }
    }

    /// Handles this session has open now (for the metrics).
    public var openHandleCount: Int { handles.withLock { $0.table.count } }

    func handle(_ id: UInt64) -> Handle? { handles.withLock { $0.table[id] } }

    /// The inode a node ID names. It must be one this session's kernel holds
    /// a reference for, or the root (nodeid 1: the export's directory), as
    /// virtiofsd requires: otherwise a guest could name any inode number,
    /// another session's unlinked-but-open file or a file outside its export
    /// included, and LINK it into its tree. EBADF otherwise; the export
    /// directory's own inode number is only ever spoken as 1.
    func reference(_ nodeid: UInt64) throws -> UInt64 {
        if nodeid == UInt64(FUSE_ROOT_ID) { return export.root }
        guard nodeid != export.root, lookups.withLock({ ($0[nodeid] ?? 0) > 0 }) else { throw FUSEError(EBADF) }
        return nodeid
    }


    enum HandleUse { case read, write }

    /// The open file `id` of this session, when it is open on `ino` for `use`;
    /// EBADF otherwise (a guest may name any number: another file's handle, or
    /// a read-only one to write through).
    func openFile(_ id: UInt64, on ino: UInt64, for use: HandleUse) throws -> Handle {
        guard let h = handle(id), h.ino == ino, !h.directory else { throw FUSEError(EBADF) }
        let accessMode = Int32(bitPattern: h.flags) & O_ACCMODE
        switch use {
        // With the writeback cache the kernel fills a page around a partial
        // write by READ through the writing handle, even a write-only one.
        case .read: guard accessMode != O_WRONLY || writebackCache.load(ordering: .relaxed) else { throw FUSEError(EBADF) }
        case .write: guard accessMode == O_WRONLY || accessMode == O_RDWR else { throw FUSEError(EBADF) }
        }
        return h
    }

    /// Clears the set-ID bits a write or truncate clears on a local file system
    /// (ModeBits.withoutSetID).
    func killPrivileges(_ ino: UInt64) throws {
        let permissions = try metadata.getattr(ino).permissions
        let mode = ModeBits.withoutSetID(permissions)
        if mode != permissions { _ = try metadata.setattr(ino, AttributeChanges(mode: mode)) }
    }

    // MARK: session

    /// What `pmfsctl sessions` shows of this session (read from another thread).
    public var status: (session: UInt64, since: Double?, openHandles: Int, heldInodes: Int, lockRecords: Int) {
        (session, initializedAt.withLock { $0 }, handles.withLock { $0.table.count }, lookups.withLock { $0.count },
         locks.records(of: session))
    }

    public func initialize(capabilities: UInt64) -> UInt64 {
        writebackCache.store(capabilities & UInt64(FUSE_WRITEBACK_CACHE) != 0, ordering: .relaxed)
        remotePosixLocks.store(capabilities & UInt64(FUSE_POSIX_LOCKS) != 0, ordering: .relaxed)
        initializedAt.withLock { $0 = wallClockSeconds() }
        return capabilities
    }

    public func destroy() {
        endSession()
        do { try fs.syncAll() } catch { logger.error("sync at DESTROY failed: \(error)") }
    }

    // MARK: names

    /// LOOKUP of a name where it lies in the request (no copy of it is made).
    public func lookup(_ r: FUSERequest, parent: UInt64, name: UnsafeRawBufferPointer) throws -> FUSEEntry {
        try run {
            let parent = try reference(parent)
            return try entry(try lookupInExport(parent, name))
        }
    }

    public func lookup(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws -> FUSEEntry {
        try name.withUnsafeBytes { try lookup(r, parent: parent, name: $0) }
    }

    public func forget(nodeid: UInt64, count: UInt64) {
        let nodeid = export.inode(nodeid)
        let dropped: UInt64 = lookups.withLock { table in
            let held = table[nodeid] ?? 0
            let n = min(held, count)
            table[nodeid] = held - n == 0 ? nil : held - n
            return n
        }
        guard dropped > 0 else { return }
        do { try metadata.unpin(nodeid, count: Int(clamping: dropped)) } catch {
            logger.debug("forget \(nodeid): \(error)")
        }
    }

    public func getattr(_ r: FUSERequest, nodeid: UInt64, handle: UInt64?) throws -> (FUSEAttributes, Double) {
        try run {
            let nodeid = try reference(nodeid)
            return (attributes(try fs.getattr(nodeid)), attributeTimeout)
        }
    }

    public func setattr(_ r: FUSERequest, nodeid: UInt64, _ c: FUSESetattr) throws -> (FUSEAttributes, Double) {
        try run(changes: true) {
            let nodeid = try reference(nodeid)
            try requireWritable(nodeid)
            try Self.requireValidNanoseconds(c)
            let current = try metadata.getattr(nodeid)
            var changes = AttributeChanges()
            var mode = c.mode.map { export.admitted(mode: $0 & 0o7777) }
            let uid = try export.hostID(uid: c.uid), gid = try export.hostID(gid: c.gid)
            if (uid != nil && uid != current.uid) || (gid != nil && gid != current.gid) || c.killSuidGid {
                // chown, and truncate/write with KILL_SUIDGID, clear set-ID bits of non-directories.
                if current.type != .directory {
                    let m = ModeBits.withoutSetID(mode ?? current.permissions)
                    if m != current.permissions || mode != nil { mode = m }
                }
            }
            changes.mode = mode
            changes.uid = uid
            changes.gid = gid
            switch c.atime {
            case .now: changes.atime = Timestamp.now()
            case .set(let s, let ns): changes.atime = Timestamp(seconds: s, nanoseconds: ns)
            case nil: break
            }
            switch c.mtime {
            case .now: changes.mtime = Timestamp.now()
            case .set(let s, let ns): changes.mtime = Timestamp(seconds: s, nanoseconds: ns)
            case nil: break
            }
            if let (s, ns) = c.ctime { changes.ctime = Timestamp(seconds: s, nanoseconds: ns) }
            changes.size = c.size
            let a = current.type == .regular ? try fs.setattr(nodeid, changes) : try metadata.setattr(nodeid, changes)
            changed(c.size != nil ? [.contents(nodeid)] : [.attributes(nodeid)])
            return (attributes(a), attributeTimeout)
        }
    }

    /// utimensat(2) answers EINVAL for a tv_nsec past a second; a guest's
    /// SETATTR gets the same rather than storing it.
    static func requireValidNanoseconds(_ c: FUSESetattr) throws {
        var all: [UInt32] = []
        if case .set(_, let ns) = c.atime { all.append(ns) }
        if case .set(_, let ns) = c.mtime { all.append(ns) }
        if let (_, ns) = c.ctime { all.append(ns) }
        guard all.allSatisfy({ $0 < 1_000_000_000 }) else { throw FUSEError(EINVAL) }
    }

    public func readlink(_ r: FUSERequest, nodeid: UInt64) throws -> [UInt8] {
        try run {
            let nodeid = try reference(nodeid)
            return try metadata.readlink(nodeid)
        }
    }

    public func symlink(_ r: FUSERequest, parent: UInt64, name: [UInt8], target: [UInt8]) throws -> FUSEEntry {
        try run(changes: true) {
            let parent = try reference(parent)
            try requireWritable(parent)
            let o = try owner(r, parent: parent, mode: ModeBits.symlink | 0o777)
            let e = try entry(try metadata.symlink(parent, try fileName(name), target: target, uid: o.uid, gid: o.gid, pin: true))
            changed([.entry(parent: parent, name: name), .attributes(parent)])
            return e
        }
    }

    public func mknod(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt32, umask: UInt32) throws -> FUSEEntry {
        try run(changes: true) {
            let parent = try reference(parent)
            try requireWritable(parent)
            try export.requireNodeAllowed(mode: mode)
            let o = try owner(r, parent: parent, mode: mode)
            let e = try entry(try metadata.create(parent, try fileName(name), NewInode(mode: o.mode, uid: o.uid, gid: o.gid, rdev: UInt64(rdev)), pin: true))
            changed([.entry(parent: parent, name: name), .attributes(parent)])
            return e
        }
    }

    public func mkdir(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, umask: UInt32) throws -> FUSEEntry {
        try run(changes: true) {
            let parent = try reference(parent)
            try requireWritable(parent)
            let o = try owner(r, parent: parent, mode: ModeBits.directory | (mode & 0o7777))
            let e = try entry(try metadata.mkdir(parent, try fileName(name), NewInode(mode: o.mode, uid: o.uid, gid: o.gid), pin: true))
            changed([.entry(parent: parent, name: name), .attributes(parent)])
            return e
        }
    }

    public func unlink(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws {
        try run(changes: true) {
            let parent = try reference(parent)
            let victim = inodeNamed(parent, name)
            try requireWritable(parent, victim)
            try metadata.unlink(parent, try fileName(name))
            changed([.entry(parent: parent, name: name), .attributes(parent)] + (victim.map { [.attributes($0)] } ?? []))
        }
    }

    public func rmdir(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws {
        try run(changes: true) {
            let parent = try reference(parent)
            try requireWritable(parent, inodeNamed(parent, name))
            try metadata.rmdir(parent, try fileName(name))
            changed([.entry(parent: parent, name: name), .attributes(parent)])
        }
    }

    public func rename(_ r: FUSERequest, parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: UInt32) throws {
        try run(changes: true) {
            let parent = try reference(parent), newParent = try reference(newParent)
            try export.requireWritable()
            try requireInsideExport(parent, newParent)
            guard RenameFlags(rawValue: flags).isSubset(of: .supported) else { throw FUSEError(EINVAL) }
            let moved = inodeNamed(parent, name), replaced = inodeNamed(newParent, newName)
            try requireWritable(parent, newParent, moved, replaced)
            try metadata.rename(parent, try fileName(name), newParent, try fileName(newName), flags: RenameFlags(rawValue: flags))
            changed([.entry(parent: parent, name: name), .entry(parent: newParent, name: newName), .attributes(parent), .attributes(newParent)]
                    + [moved, replaced].compactMap { $0.map { CacheInvalidation.attributes($0) } })
        }
    }

    public func link(_ r: FUSERequest, nodeid: UInt64, newParent: UInt64, newName: [UInt8]) throws -> FUSEEntry {
        try run(changes: true) {
            let nodeid = try reference(nodeid), newParent = try reference(newParent)
            try requireWritable(nodeid, newParent)
            try requireInsideExport(newParent)
            let e = try entry(try metadata.link(nodeid, newParent: newParent, newName: try fileName(newName), pin: true))
            changed([.entry(parent: newParent, name: newName), .attributes(newParent), .attributes(nodeid)])
            return e
        }
    }

    // MARK: files

    public func open(_ r: FUSERequest, nodeid: UInt64, flags: UInt32, killSuidGid: Bool) throws -> FUSEOpenResult {
        try run(changes: Int32(bitPattern: flags) & O_TRUNC != 0) {
            try openNode(try reference(nodeid), flags: flags, killSuidGid: killSuidGid)
        }
    }

    /// OPEN past the node ID check (and the writer gate when it truncates).
    func openNode(_ nodeid: UInt64, flags: UInt32, killSuidGid: Bool) throws -> FUSEOpenResult {
        let f = Int32(bitPattern: flags)
        if f & O_ACCMODE != O_RDONLY || f & O_TRUNC != 0 { try requireWritable(nodeid) }
        try requireHandleSlot()
        let a = try metadata.getattr(nodeid)
        switch a.type {
        case .directory: throw FUSEError(EISDIR)
        case .regular: break
        default: throw FUSEError(EINVAL)   // the kernel opens device nodes and fifos itself
        }
        if f & O_TRUNC != 0 && f & O_ACCMODE != O_RDONLY {
            if killSuidGid { try killPrivileges(nodeid) }
            _ = try fs.setattr(nodeid, AttributeChanges(size: 0))
            changed([.contents(nodeid)])
        }
        return FUSEOpenResult(handle: newHandle(Handle(ino: nodeid, flags: flags, directory: false)), flags: fileOpenFlags)
    }

    public func create(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) {
        try run(changes: true) {
            let parent = try reference(parent)
            try requireWritable(parent)
            try requireHandleSlot()
            let o = try owner(r, parent: parent, mode: ModeBits.regular | (mode & 0o7777))
            let a: InodeAttributes
            do {
                a = try metadata.create(parent, try fileName(name), NewInode(mode: o.mode, uid: o.uid, gid: o.gid), pin: true)
            } catch Errno.fileExists where Int32(bitPattern: flags) & O_EXCL == 0 {
                return try openExisting(r, parent: parent, name: name, flags: flags)
            }
            let h = newHandle(Handle(ino: a.ino, flags: flags, directory: false))
            let e = try entry(a)
            changed([.entry(parent: parent, name: name), .attributes(parent)])
            return (e, FUSEOpenResult(handle: h, flags: fileOpenFlags))
        }
    }

    /// CREATE without O_EXCL of a name that exists (the kernel's cache had no
    /// entry for it, or another session made it meanwhile) opens that file, as
    /// open(2) with O_CREAT does. The kernel skips its own permission check for
    /// a CREATE's file, so it is made here.
    func openExisting(_ r: FUSERequest, parent: UInt64, name: [UInt8], flags: UInt32) throws -> (FUSEEntry, FUSEOpenResult) {
        let a = try metadata.lookup(parent, try fileName(name), pin: true)
        lookups.withLock { $0[a.ino, default: 0] += 1 }
        do {
            switch a.type {
            case .regular: break
            case .directory: throw FUSEError(EISDIR)
            default: throw FUSEError(EEXIST)   // the kernel resolves symlinks and special files itself
            }
            let f = Int32(bitPattern: flags)
            let accessMode = f & O_ACCMODE
            var want: UInt32 = accessMode == O_RDONLY ? 4 : (accessMode == O_WRONLY ? 2 : 6)
            if f & O_TRUNC != 0 { want |= 2 }
            try access(r, nodeid: a.ino, mask: want)
            // Inside CREATE's pass of the writer gate already.
            let opened = try openNode(a.ino, flags: flags, killSuidGid: r.uid != 0)
            return (try countedEntry(a), opened)
        } catch {
            forget(nodeid: a.ino, count: 1)
            throw error
        }
    }

    public func tmpfile(_ r: FUSERequest, parent: UInt64, mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) {
        try run(changes: true) {
            let parent = try reference(parent)
            try requireWritable(parent)
            try requireHandleSlot()
            let o = try owner(r, parent: parent, mode: ModeBits.regular | (mode & 0o7777))
            let a = try metadata.tmpfile(parent, NewInode(mode: o.mode, uid: o.uid, gid: o.gid))
            let h = newHandle(Handle(ino: a.ino, flags: flags, directory: false))
            return (try entry(a), FUSEOpenResult(handle: h, flags: fileOpenFlags))
        }
    }

    public func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try run {
            let nodeid = export.inode(nodeid)
            _ = try openFile(handle, on: nodeid, for: .read)
            let n = try fs.read(nodeid, offset: offset, into: buffer)
            try noteAccess(nodeid)
            return n
        }
    }

    public func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws -> Int {
        try run {
            let nodeid = export.inode(nodeid)
            _ = try openFile(handle, on: nodeid, for: .read)
            let n = try fs.read(nodeid, offset: offset, into: segments)
            try noteAccess(nodeid)
            return n
        }
    }

    public func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws -> Int {
        try write(nodeid: nodeid, handle: handle, flags: flags) { ino, sync in try fs.write(ino, offset: offset, from: data, sync: sync) }
    }

    public func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, segments: [UnsafeRawBufferPointer], flags: UInt32) throws -> Int {
        try write(nodeid: nodeid, handle: handle, flags: flags) { ino, sync in try fs.write(ino, offset: offset, from: segments, sync: sync) }
    }

    /// WRITE's checks around `body`, which writes the data (in one piece or several) to inode `ino`.
    private func write(nodeid: UInt64, handle: UInt64, flags: UInt32, _ body: (UInt64, FileDataTier.SyncMode) throws -> Int) throws -> Int {
        try run(changes: true) {
            let nodeid = export.inode(nodeid)
            try export.requireWritable()
            let openFlags = Int32(bitPattern: try openFile(handle, on: nodeid, for: .write).flags)
            if flags & UInt32(FUSE_WRITE_KILL_SUIDGID) != 0 { try killPrivileges(nodeid) }
            let sync: FileDataTier.SyncMode = openFlags & O_SYNC == O_SYNC ? .all : (openFlags & O_DSYNC != 0 ? .data : .none)
            let n = try body(nodeid, sync)
            changed([.contents(nodeid)])
            return n
        }
    }

    public func flush(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, lockOwner: UInt64) throws {
        // close(2) of any descriptor drops the process's POSIX locks on the file.
        locks.releasePosix(ino: export.inode(nodeid), owner: lockOwner, session: session)
    }

    public func release(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, flags: UInt32, releaseFlags: UInt32, lockOwner: UInt64) throws {
        let nodeid = export.inode(nodeid)
        if releaseFlags & UInt32(FUSE_RELEASE_FLOCK_UNLOCK) != 0 { locks.releaseFlock(ino: nodeid, owner: lockOwner, session: session) }
        locks.releaseHandle(ino: nodeid, handle: handle, session: session)
        _ = handles.withLock { $0.table.removeValue(forKey: handle) }
    }

    public func fsync(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws {
        try run { try fs.fsync(reference(nodeid), dataOnly: dataOnly) }
    }

    /// FSYNCs that arrived together: one device flush for all (FileDataTier.fsync(group:)).
    /// A lone one (the common case) goes straight to its file, with no tables.
    public func fsync(group: [FUSEFsync], errors: inout [Int32]) {
        if group.count == 1 {
            errors[0] = replyErrno { try fs.fsync(reference(group[0].nodeid), dataOnly: group[0].dataOnly) }
            return
        }
        fs.withFsyncGroupTables { t in
            // A member naming a node this session holds no reference to fails alone (EBADF).
            for (i, m) in group.enumerated() {
                guard let ino = try? reference(m.nodeid) else { errors[i] = EBADF; continue }
                t.items.append((ino, m.dataOnly))
                t.tags.append(i)
            }
            fs.fsync(group: t)
            for (k, error) in t.results.enumerated() {
                errors[t.tags[k]] = replyErrno { if let error { throw error } }
            }
        }
    }

    /// 0 if `body` succeeds, else the errno a reply carries for what it threw.
    private func replyErrno(_ body: () throws -> Void) -> Int32 {
        do { try run(body); return 0 } catch let e as FUSEError { return e.errno } catch { return EIO }
    }

    // MARK: directories

    public func opendir(_ r: FUSERequest, nodeid: UInt64, flags: UInt32) throws -> FUSEOpenResult {
        try run {
            let nodeid = try reference(nodeid)
            try requireHandleSlot()
            guard try metadata.getattr(nodeid).type == .directory else { throw FUSEError(ENOTDIR) }
            return FUSEOpenResult(handle: newHandle(Handle(ino: nodeid, flags: flags, directory: true)))
        }
    }

    public func readdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, limit: Int) throws -> [FUSEDirectoryEntry] {
        try run {
            let nodeid = try reference(nodeid)
            if offset == 0 { try metadata.noteAccess(nodeid) }
            return try metadata.readdir(nodeid, cookie: offset, limit: limit).map {
                // The export's ".." is itself, as lookup answers.
                let ino = nodeid == export.root && $0.name == [0x2E, 0x2E] ? export.root : $0.ino
                return FUSEDirectoryEntry(ino: export.nodeid(ino), nextOffset: $0.nextCookie, type: UInt32($0.type.rawValue), name: $0.name)
            }
        }
    }

    public func readdirplusEntry(_ r: FUSERequest, parent: UInt64, entry e: FUSEDirectoryEntry) throws -> FUSEEntry? {
        do {
            return try run { try e.name.withUnsafeBytes { try entry(try lookupInExport(export.inode(parent), $0)) } }
        } catch let error as FUSEError where error.errno == ENOENT {
            return nil   // removed since the listing was read
        }
    }

    /// relatime: a read moves atime only when it is older than mtime/ctime or a
    /// day old; the check is a DRAM read, the rare update one small transaction.
    func noteAccess(_ ino: UInt64) throws {
        let a = try fs.getattr(ino)
        if Timestamp.relatimeUpdateDue(atime: a.atime, mtime: a.mtime, ctime: a.ctime, now: .now()) {
            try metadata.noteAccess(ino)
        }
    }

    public func releasedir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64) throws {
        _ = handles.withLock { $0.table.removeValue(forKey: handle) }
    }

    /// Namespace operations are durable when they return: nothing to do.
    public func fsyncdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws {}

    public func statfs(_ r: FUSERequest, nodeid: UInt64) throws -> FUSEStatistics {
        let s = metadata.statistics()
        return FUSEStatistics(blocks: s.totalBlocks, freeBlocks: s.freeBlocks, availableBlocks: s.freeBlocks, files: s.totalInodes,
                              freeFiles: s.freeInodes, blockSize: s.blockSize, nameLength: s.nameMax, fragmentSize: s.blockSize)
    }

    // MARK: xattrs

    public func setxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8], value: UnsafeRawBufferPointer, flags: UInt32) throws {
        try run(changes: true) {
            let nodeid = try reference(nodeid)
            try requireWritable(nodeid)
            try export.requireXattrAllowed(name)
            try metadata.setxattr(nodeid, name, Array(value), mode: XattrFlags.mode(flags))
            changed([.attributes(nodeid)])
        }
    }

    public func getxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws -> [UInt8] {
        try run {
            let nodeid = try reference(nodeid)
            return try metadata.getxattr(nodeid, name)
        }
    }

    public func listxattr(_ r: FUSERequest, nodeid: UInt64) throws -> [[UInt8]] {
        try run {
            let nodeid = try reference(nodeid)
            return try metadata.listxattr(nodeid)
        }
    }

    public func removexattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws {
        try run(changes: true) {
            let nodeid = try reference(nodeid)
            try requireWritable(nodeid)
            try metadata.removexattr(nodeid, name)
            changed([.attributes(nodeid)])
        }
    }

    /// ACCESS (peers without default_permissions): owner, group, other bits; root
    /// may do anything but execute a file with no execute bit.
    public func access(_ r: FUSERequest, nodeid: UInt64, mask: UInt32) throws {
        try run {
            let nodeid = try reference(nodeid)
            let a = try metadata.getattr(nodeid)
            let want = mask & UInt32(R_OK | W_OK | X_OK)
            if want == 0 { return }
            if want & UInt32(W_OK) != 0 { try requireWritable(nodeid) }
            // The guest's root is root in its export; owners compare in host ids.
            if r.uid == 0 {
                if want & UInt32(X_OK) != 0 && a.type != .directory && a.mode & 0o111 == 0 { throw FUSEError(EACCES) }
                return
            }
            let caller = export.hostCaller(uid: r.uid, gid: r.gid)
            let bits: UInt32 = caller.uid == a.uid ? (a.mode >> 6) & 7 : (caller.gid == a.gid ? (a.mode >> 3) & 7 : a.mode & 7)
            guard bits & want == want else { throw FUSEError(EACCES) }
        }
    }

    // MARK: locks

    func held(_ owner: UInt64, _ lock: FUSELock, flock: Bool, handle: UInt64 = 0) -> LockManager.Held {
        // flock locks cover the whole file. Owners are only unique within a session.
        LockManager.Held(owner: owner, session: session, pid: lock.pid, type: lock.type, start: flock ? 0 : lock.start,
                         end: flock ? UInt64.max : lock.end, flock: flock, handle: handle)
    }

    public func getlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool) throws -> FUSELock {
        let nodeid = try reference(nodeid)
        if let c = locks.test(ino: nodeid, held(owner, lock, flock: flock)) {
            return FUSELock(start: c.start, end: c.end, type: c.type, pid: c.pid)
        }
        return FUSELock(start: lock.start, end: lock.end, type: Int32(F_UNLCK), pid: 0)
    }

    public func setlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool, wait: Bool,
                      reply: @escaping @Sendable (Int32) -> Void) {
        guard lock.type == F_RDLCK || lock.type == F_WRLCK || lock.type == F_UNLCK else { reply(EINVAL); return }
        guard lock.start <= lock.end else { reply(EINVAL); return }
        guard let nodeid = try? reference(nodeid) else { reply(EBADF); return }
        let limits = LockManager.Limits(records: self.limits.lockRecords, waiters: self.limits.lockWaiters)
        locks.set(ino: nodeid, unique: r.unique, held(owner, lock, flock: flock, handle: handle), wait: wait, limits: limits) { [logger, session] error in
            if error == ENOLCK { logger.warning("session \(session): lock record or waiter limit reached: ENOLCK") }
            reply(error)
        }
    }

    /// Only this session's waits: `unique` numbers are per connection, so
    /// another guest's INTERRUPT may name the same one.
    public func interrupt(unique: UInt64) { locks.interrupt(unique: unique, session: session) }

    // MARK: data

    public func fallocate(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws {
        try run(changes: true) {
            let nodeid = export.inode(nodeid)
            try export.requireWritable()
            _ = try openFile(handle, on: nodeid, for: .write)
            try fs.fallocate(nodeid, mode: FileDataTier.FallocateMode(rawValue: Int32(bitPattern: mode)), offset: offset, length: length)
            changed([.contents(nodeid)])
        }
    }

    public func lseek(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws -> UInt64 {
        try run {
            let nodeid = try reference(nodeid)
            switch whence {
            case SeekWhence.data: return try fs.seek(nodeid, from: offset, to: .data)
            case SeekWhence.hole: return try fs.seek(nodeid, from: offset, to: .hole)
            default: throw FUSEError(EINVAL)
            }
        }
    }

    public func copyFileRange(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64,
                              toOffset: UInt64, length: UInt64, flags: UInt64) throws -> UInt64 {
        try run(changes: true) {
            guard flags == 0 else { throw FUSEError(EINVAL) }
            let nodeid = export.inode(nodeid), toNode = export.inode(toNode)
            try export.requireWritable()
            _ = try openFile(handle, on: nodeid, for: .read)
            _ = try openFile(toHandle, on: toNode, for: .write)
            let n = try fs.copyFileRange(from: nodeid, offset: offset, to: toNode, offset: toOffset, length: min(length, 1 << 30))
            changed([.contents(toNode)])
            return n
        }
    }

    public func syncfs(_ r: FUSERequest) throws {
        try run { try fs.syncAll() }
    }
}

/// Mode bits spelled out once (Glibc and the kernel headers both define the
/// S_* names, which makes them ambiguous in a module that imports both).
enum ModeBits {
    static let typeMask: UInt32 = 0o170000
    static let directory: UInt32 = 0o040000
    static let regular: UInt32 = 0o100000
    static let symlink: UInt32 = 0o120000
    static let setUID: UInt32 = 0o4000
    static let setGID: UInt32 = 0o2000
    static let groupExecute: UInt32 = 0o0010

    /// `permissions` after a write, truncate or chown of a non-directory:
    /// set-user-ID cleared, and set-group-ID where group execute is set (without
    /// it the bit marks mandatory locking, not privilege, and stays).
    static func withoutSetID(_ permissions: UInt32) -> UInt32 {
        var mode = permissions & ~setUID
        if mode & groupExecute != 0 { mode &= ~setGID }
        return mode
    }
}

/// setxattr(2)'s flags (linux/xattr.h), as FUSE_SETXATTR carries them.
enum XattrFlags {
    /// XATTR_CREATE: fail with EEXIST if the attribute exists.
    static let create: UInt32 = 1
    /// XATTR_REPLACE: fail with ENODATA if it does not.
    static let replace: UInt32 = 2

    /// The engine's mode for `flags` (create wins if both are set).
    static func mode(_ flags: UInt32) -> XattrSetMode {
        flags & create != 0 ? .create : (flags & replace != 0 ? .replace : .any)
    }
}

/// lseek(2)'s whence values that reach FUSE_LSEEK (the kernel answers
/// SEEK_SET, SEEK_CUR and SEEK_END itself).
enum SeekWhence {
    static let data: UInt32 = 3   // SEEK_DATA
    static let hole: UInt32 = 4   // SEEK_HOLE
}

/// Seconds since 1970 (CLOCK_REALTIME).
func wallClockSeconds() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_REALTIME, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
}
