import CFUSE
import Glibc
import PMFSConcurrency
import Synchronization

/// The transport-independent FUSE engine: decodes a request, calls the
/// operations, encodes the reply. Both transports (/dev/fuse and virtqueues)
/// hand it whole request messages and send what it returns. It is the only
/// place that parses the wire format.
public final class FUSEServer: @unchecked Sendable {
    public let operations: FUSEOperations
    /// What this server offers in INIT (FUSE_* flags, 64-bit with flags2).
    public let offered: UInt64
    public let maxWrite: UInt32
    public let maxPages: UInt16
    /// Counts and times requests when metrics are on (nil: no clock is read).
    public let metrics: FUSERequestMetrics?
    private let negotiatedState = Mutex<(initialized: Bool, flags: UInt64, minor: UInt32)>((false, 0, 0))
    private let withheld = Atomic<UInt64>(0)
    private let taken = Atomic<UInt64>(0)
    /// Requests answered (or ended without an answer) so far; a deferred one
    /// counts when its answer goes out.
    let answered = Atomic<UInt64>(0)
    /// Whether FSYNC groups go to the pool without requests waiting (see CommitHandOver).
    let handOver = CommitHandOver()
    /// Requests taken so far (`pmfsctl sessions`), metrics on or off.
    public var requestsTaken: UInt64 { taken.load(ordering: .relaxed) }
    /// Requests taken and not answered yet (waiting SETLKWs, FSYNCs in a group, those being served).
    public var requestsInFlight: Int {
        let done = answered.load(ordering: .relaxed), all = taken.load(ordering: .relaxed)
        return all > done ? Int(clamping: all - done) : 0
    }

    public static let defaultCapabilities: UInt64 =
        UInt64(FUSE_ASYNC_READ | FUSE_POSIX_LOCKS | FUSE_ATOMIC_O_TRUNC | FUSE_EXPORT_SUPPORT | FUSE_BIG_WRITES |
               FUSE_FLOCK_LOCKS | FUSE_DO_READDIRPLUS | FUSE_READDIRPLUS_AUTO | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS |
               FUSE_HANDLE_KILLPRIV_V2 | FUSE_MAX_PAGES | FUSE_CACHE_SYMLINKS | FUSE_SETXATTR_EXT | FUSE_INIT_EXT)

    /// FUSE_POSIX_LOCKS and FUSE_FLOCK_LOCKS: without them the kernel keeps
    /// locks itself (no request per lock, but no other peer sees them).
    public static let remoteLocks = UInt64(FUSE_POSIX_LOCKS | FUSE_FLOCK_LOCKS)

    /// FUSE_WRITEBACK_CACHE, offered only on request: the kernel then keeps
    /// written data, size and mtime itself (right for a peer that is the only writer).
    public static let writebackCache = UInt64(FUSE_WRITEBACK_CACHE)

    public init(operations: FUSEOperations, offered: UInt64 = FUSEServer.defaultCapabilities, maxWrite: UInt32 = 1 << 20,
                metrics: FUSERequestMetrics? = nil) {
        self.operations = operations
        self.metrics = metrics
        self.offered = offered
        self.maxWrite = maxWrite
        self.maxPages = UInt16(maxWrite / 4096)
    }

    /// Takes `flags` out of what INIT may agree on (a transport that finds it
    /// cannot serve FUSE_OVER_IO_URING after all, before INIT is answered).
    public func withhold(_ flags: UInt64) { withheld.bitwiseOr(flags, ordering: .relaxed) }

    /// Flags both sides agreed on at INIT.
    public var negotiated: UInt64 { negotiatedState.withLock { $0.flags } }
    public var initialized: Bool { negotiatedState.withLock { $0.initialized } }

    /// The largest request a transport must be able to receive.
    public var maxRequestSize: Int { Int(maxWrite) + 4096 }

    /// How many leading bytes of a request `mayBlock` looks at.
    public static let blockingCheckBytes = MemoryLayout<fuse_in_header>.size + MemoryLayout<fuse_read_in>.size

    /// Whether a request can wait on the device or on write-back (fsync, large
    /// reads and writes, truncation, allocation), judged from its first bytes,
    /// so a transport can run it off the thread that serves its queue. Lookups,
    /// attributes, names and small I/O (mostly cache hits) are quick.
    public static func mayBlock(_ start: UnsafeRawBufferPointer) -> Bool {
        let header = MemoryLayout<fuse_in_header>.size
        guard start.count >= header else { return false }
        let opcode = start.loadUnaligned(fromByteOffset: MemoryLayout<fuse_in_header>.offset(of: \.opcode)!, as: UInt32.self)
        switch opcode {
        case FUSE_FSYNC.rawValue, FUSE_FSYNCDIR.rawValue, FUSE_SYNCFS.rawValue, FUSE_DESTROY.rawValue, FUSE_FALLOCATE.rawValue,
             FUSE_COPY_FILE_RANGE.rawValue, FUSE_SETATTR.rawValue, FUSE_OPEN.rawValue:
            return true   // SETATTR may truncate, OPEN may carry O_TRUNC
        case FUSE_READ.rawValue, FUSE_WRITE.rawValue:
            // fuse_read_in and fuse_write_in both have the size at this offset.
            let sizeOffset = header + MemoryLayout<fuse_read_in>.offset(of: \.size)!
            guard start.count >= sizeOffset + 4 else { return true }
            return start.loadUnaligned(fromByteOffset: sizeOffset, as: UInt32.self) >= 64 << 10
        default:
            return false
        }
    }

    /// Whether a request is an FSYNC of a file, which a transport collects in
    /// a `FUSEFsyncGroup` rather than hands to another thread.
    public static func joinsFsyncGroup(_ start: UnsafeRawBufferPointer) -> Bool {
        guard start.count >= MemoryLayout<fuse_in_header>.size else { return false }
        let opcode = start.loadUnaligned(fromByteOffset: MemoryLayout<fuse_in_header>.offset(of: \.opcode)!, as: UInt32.self)
        return opcode == FUSE_FSYNC.rawValue
    }

    /// Handles one request: reads it through `request`, writes the reply
    /// through `reply`, and says what became of it. The transports only move
    /// bytes: they wrap their buffers (a /dev/fuse buffer, an io_uring entry,
    /// a guest's descriptor chain) and send `.replied(n)`'s first n bytes. A
    /// WRITE's data is used where it lies and a READ's put straight into the
    /// reply memory. `later` gets a `.deferred` request's reply (a SETLKW that
    /// waits) as a whole message, possibly from another thread. With a
    /// `group`, an FSYNC joins it (`.deferred`) and is answered by `commit`.
    public func handle(_ request: inout RequestCursor, _ reply: inout ReplyWriter,
                       later: @escaping FUSEReplySink, group: FUSEFsyncGroup? = nil) -> FUSEOutcome {
        handle(&request, &reply, deferring: { later }, group: group)
    }

    /// `handle`, asking `deferring` for the sink only when a reply may come
    /// later (a SETLK or SETLKW, whose answer the lock manager may give after
    /// `setlk` returns; an FSYNC put in `group`): a sink is an escaping
    /// closure, one allocation each, which most requests never need.
    public func handle(_ request: inout RequestCursor, _ reply: inout ReplyWriter,
                       deferring later: () -> FUSEReplySink, group: FUSEFsyncGroup? = nil) -> FUSEOutcome {
        guard let header = try? request.read(fuse_in_header.self) else { return .noReply }   // cannot even answer
        taken.add(1, ordering: .relaxed)
        // Every transport comes through here: the one place requests are counted and timed.
        let outcome: FUSEOutcome
        if let metrics {
            let start = monotonicNanoseconds()
            let joined = group?.count ?? 0
            outcome = serve(header, &request, &reply, later: later, group: group)
            // A grouped FSYNC is timed until its reply, by commit.
            if (group?.count ?? 0) == joined { metrics.finished(header.opcode, since: start) }
        } else {
            outcome = serve(header, &request, &reply, later: later, group: group)
        }
        if case .deferred = outcome {} else { answered.add(1, ordering: .relaxed) }
        return outcome
    }

    private func serve(_ header: fuse_in_header, _ request: inout RequestCursor, _ reply: inout ReplyWriter,
                       later: () -> FUSEReplySink, group: FUSEFsyncGroup?) -> FUSEOutcome {
        let r = FUSERequest(unique: header.unique, nodeid: header.nodeid, uid: header.uid, gid: header.gid,
                            pid: header.pid, opcode: header.opcode)
        guard Int(header.len) == request.total else { return fail(r, EINVAL, &reply) }
        // Extensions (security context etc.) trail the arguments; pmfs asks for none.
        let ext = Int(header.total_extlen) * 8
        guard ext <= request.remaining, var args = try? request.prefix(request.remaining - ext) else { return fail(r, EINVAL, &reply) }
        if header.opcode != FUSE_INIT.rawValue && !initialized { return fail(r, EIO, &reply) }
        do {
            return try dispatch(r, &args, &reply, later: later, group: group)
        } catch let e as FUSEError {
            return fail(r, e.errno, &reply)
        } catch is FUSEWireError {
            return fail(r, EINVAL, &reply)
        } catch {
            return fail(r, EIO, &reply)
        }
    }

    /// The same path for a caller holding one whole message and wanting the
    /// reply as bytes (tests, INIT before the rings start): replies, now or
    /// deferred, go to `reply`.
    public func handle(_ message: UnsafeRawBufferPointer, reply: @escaping FUSEReplySink) {
        var request = RequestCursor(message)
        let memory = ReplyWriter(owning: maxReplySize)
        defer { memory.release() }
        var writer = memory
        if case .replied = handle(&request, &writer, later: reply) { reply(writer.bytes) }
    }

    /// The largest reply: a READ or READDIR of `maxWrite` bytes and its header.
    public var maxReplySize: Int { Int(maxWrite) + 4096 }

    /// An error reply, in place of anything half written.
    private func fail(_ r: FUSERequest, _ errno: Int32, _ out: inout ReplyWriter) -> FUSEOutcome {
        metrics?.failed(r.opcode, errno: errno)
        out.reset()
        let header = fuse_out_header(len: UInt32(MemoryLayout<fuse_out_header>.size), error: -errno, unique: r.unique)
        guard (try? out.write(header)) != nil else { return .noReply }   // no room even for that
        return .replied(out.written)
    }

    /// A successful reply: the out-header, what `body` writes, then the
    /// header's length filled in.
    private func answer(_ r: FUSERequest, _ out: inout ReplyWriter,
                        _ body: (inout ReplyWriter) throws -> Void = { _ in }) throws -> FUSEOutcome {
        out.reset()
        try out.write(fuse_out_header(len: 0, error: 0, unique: r.unique))
        try body(&out)
        try out.patch(UInt32(out.written), at: 0)
        return .replied(out.written)
    }

    private func answer<T: BitwiseCopyable>(_ r: FUSERequest, _ out: inout ReplyWriter, with value: T) throws -> FUSEOutcome {
        try answer(r, &out) { try $0.write(value) }
    }

    private func entry(_ r: FUSERequest, _ out: inout ReplyWriter, _ e: FUSEEntry) throws -> FUSEOutcome {
        try answer(r, &out, with: Self.entryOut(e))
    }

    static func entryOut(_ e: FUSEEntry) -> fuse_entry_out {
        let (es, ens) = split(e.entryTimeout), (asec, ans) = split(e.attributeTimeout)
        return fuse_entry_out(nodeid: e.nodeid, generation: e.generation, entry_valid: es, attr_valid: asec,
                              entry_valid_nsec: ens, attr_valid_nsec: ans, attr: e.attributes.wire)
    }

    static func split(_ seconds: Double) -> (UInt64, UInt32) {
        let s = max(0, seconds)
        return (UInt64(s), UInt32((s - Double(UInt64(s))) * 1e9))
    }

    private func attributes(_ r: FUSERequest, _ out: inout ReplyWriter, _ a: (FUSEAttributes, Double)) throws -> FUSEOutcome {
        let (s, ns) = Self.split(a.1)
        return try answer(r, &out, with: fuse_attr_out(attr_valid: s, attr_valid_nsec: ns, dummy: 0, attr: a.0.wire))
    }

    /// CREATE and TMPFILE: the new entry, then the open file.
    private func created(_ r: FUSERequest, _ out: inout ReplyWriter, _ c: (FUSEEntry, FUSEOpenResult)) throws -> FUSEOutcome {
        try answer(r, &out) {
            try $0.write(Self.entryOut(c.0))
            try $0.write(fuse_open_out(fh: c.1.handle, open_flags: c.1.flags, padding: 0))
        }
    }

    private func opened(_ r: FUSERequest, _ out: inout ReplyWriter, _ o: FUSEOpenResult) throws -> FUSEOutcome {
        try answer(r, &out, with: fuse_open_out(fh: o.handle, open_flags: o.flags, padding: 0))
    }

    private func name(_ args: inout RequestCursor) throws -> [UInt8] {
        let n = try args.readName()
        guard !n.isEmpty else { throw FUSEError(ENOENT) }
        return n
    }

    /// One small method per opcode; each reads all of its arguments before it
    /// writes its reply (over io_uring both share the payload buffer).
    private func dispatch(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter,
                          later: () -> FUSEReplySink, group: FUSEFsyncGroup?) throws -> FUSEOutcome {
        switch fuse_opcode(rawValue: r.opcode) {
        case FUSE_INIT: return try initialize(r, &a, &o)
        case FUSE_DESTROY: operations.destroy(); return try answer(r, &o)
        case FUSE_LOOKUP: return try lookup(r, &a, &o)
        case FUSE_FORGET: return try forget(r, &a)
        case FUSE_BATCH_FORGET: return try batchForget(r, &a)
        case FUSE_GETATTR: return try getattr(r, &a, &o)
        case FUSE_SETATTR: return try attributes(r, &o, try operations.setattr(r, nodeid: r.nodeid, Self.setattr(try a.read())))
        case FUSE_READLINK: return try readlink(r, &o)
        case FUSE_SYMLINK: return try symlink(r, &a, &o)
        case FUSE_MKNOD: return try mknod(r, &a, &o)
        case FUSE_MKDIR: return try mkdir(r, &a, &o)
        case FUSE_UNLINK: try operations.unlink(r, parent: r.nodeid, name: try name(&a)); return try answer(r, &o)
        case FUSE_RMDIR: try operations.rmdir(r, parent: r.nodeid, name: try name(&a)); return try answer(r, &o)
        case FUSE_RENAME: return try rename(r, &a, &o, newdir: try a.read(fuse_rename_in.self).newdir, flags: 0)
        case FUSE_RENAME2:
            let m = try a.read(fuse_rename2_in.self)
            return try rename(r, &a, &o, newdir: m.newdir, flags: m.flags)
        case FUSE_LINK: return try link(r, &a, &o)
        case FUSE_OPEN: return try open(r, &a, &o)
        case FUSE_CREATE: return try create(r, &a, &o)
        case FUSE_TMPFILE: return try tmpfile(r, &a, &o)
        case FUSE_READ: return try read(r, &a, &o)
        case FUSE_WRITE: return try write(r, &a, &o)
        case FUSE_FLUSH: return try flush(r, &a, &o)
        case FUSE_RELEASE: return try release(r, &a, &o)
        case FUSE_FSYNC:
            if let group { return try join(group, r, &a, later: later) }
            return try fsync(r, &a, &o, directory: false)
        case FUSE_OPENDIR: return try opened(r, &o, try operations.opendir(r, nodeid: r.nodeid, flags: try a.read(fuse_open_in.self).flags))
        case FUSE_READDIR: return try readdir(r, try a.read(), &o, plus: false)
        case FUSE_READDIRPLUS: return try readdir(r, try a.read(), &o, plus: true)
        case FUSE_RELEASEDIR:
            try operations.releasedir(r, nodeid: r.nodeid, handle: try a.read(fuse_release_in.self).fh)
            return try answer(r, &o)
        case FUSE_FSYNCDIR: return try fsync(r, &a, &o, directory: true)
        case FUSE_STATFS: return try statfs(r, &o)
        case FUSE_SETXATTR: return try setxattr(r, &a, &o)
        case FUSE_GETXATTR: return try getxattr(r, &a, &o)
        case FUSE_LISTXATTR: return try listxattr(r, &a, &o)
        case FUSE_REMOVEXATTR: try operations.removexattr(r, nodeid: r.nodeid, name: try name(&a)); return try answer(r, &o)
        case FUSE_ACCESS: try operations.access(r, nodeid: r.nodeid, mask: try a.read(fuse_access_in.self).mask); return try answer(r, &o)
        case FUSE_GETLK: return try getlk(r, &a, &o)
        case FUSE_SETLK: return try setlk(r, &a, &o, wait: false, later: later)
        case FUSE_SETLKW: return try setlk(r, &a, &o, wait: true, later: later)
        case FUSE_INTERRUPT: operations.interrupt(unique: try a.read(fuse_interrupt_in.self).unique); return .noReply
        case FUSE_FALLOCATE: return try fallocate(r, &a, &o)
        case FUSE_LSEEK: return try lseek(r, &a, &o)
        case FUSE_COPY_FILE_RANGE: return try copyFileRange(r, &a, &o)
        case FUSE_SYNCFS: try operations.syncfs(r); return try answer(r, &o)
        default: throw FUSEError(ENOSYS)   // IOCTL, POLL, BMAP, mappings and anything unknown
        }
    }

    /// LOOKUP: the name is looked up where it lies in the request, not copied.
    private func lookup(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let found = try a.withName { n in
            guard !n.isEmpty else { throw FUSEError(ENOENT) }
            return try operations.lookup(r, parent: r.nodeid, name: n)
        }
        return try entry(r, &o, found)
    }

    private func forget(_ r: FUSERequest, _ a: inout RequestCursor) throws -> FUSEOutcome {
        operations.forget(nodeid: r.nodeid, count: try a.read(fuse_forget_in.self).nlookup)
        return .noReply
    }

    private func batchForget(_ r: FUSERequest, _ a: inout RequestCursor) throws -> FUSEOutcome {
        let b = try a.read(fuse_batch_forget_in.self)
        for _ in 0..<b.count {
            guard let one = try? a.read(fuse_forget_one.self) else { break }
            operations.forget(nodeid: one.nodeid, count: one.nlookup)
        }
        return .noReply
    }

    private func getattr(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let g = try a.read(fuse_getattr_in.self)
        let handle = g.getattr_flags & UInt32(FUSE_GETATTR_FH) != 0 ? g.fh : nil
        return try attributes(r, &o, try operations.getattr(r, nodeid: r.nodeid, handle: handle))
    }

    private func readlink(_ r: FUSERequest, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let target = try operations.readlink(r, nodeid: r.nodeid)
        return try answer(r, &o) { out in try target.withUnsafeBytes { try out.write(bytes: $0) } }
    }

    private func symlink(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let n = try name(&a)
        let target = try a.readName()
        return try entry(r, &o, try operations.symlink(r, parent: r.nodeid, name: n, target: target))
    }

    private func mknod(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let m = try a.readPadded(fuse_mknod_in.self, minimum: 8)
        return try entry(r, &o, try operations.mknod(r, parent: r.nodeid, name: try name(&a), mode: m.mode, rdev: m.rdev, umask: m.umask))
    }

    private func mkdir(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let m = try a.read(fuse_mkdir_in.self)
        return try entry(r, &o, try operations.mkdir(r, parent: r.nodeid, name: try name(&a), mode: m.mode, umask: m.umask))
    }

    private func rename(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter, newdir: UInt64, flags: UInt32) throws -> FUSEOutcome {
        let old = try name(&a), new = try name(&a)
        try operations.rename(r, parent: r.nodeid, name: old, newParent: newdir, newName: new, flags: flags)
        return try answer(r, &o)
    }

    private func link(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let l = try a.read(fuse_link_in.self)
        return try entry(r, &o, try operations.link(r, nodeid: l.oldnodeid, newParent: r.nodeid, newName: try name(&a)))
    }

    private func open(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let i = try a.read(fuse_open_in.self)
        let kill = i.open_flags & UInt32(FUSE_OPEN_KILL_SUIDGID) != 0
        return try opened(r, &o, try operations.open(r, nodeid: r.nodeid, flags: i.flags, killSuidGid: kill))
    }

    private func create(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let c = try a.read(fuse_create_in.self)
        let n = try name(&a)
        return try created(r, &o, try operations.create(r, parent: r.nodeid, name: n, mode: c.mode, flags: c.flags, umask: c.umask))
    }

    private func tmpfile(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let c = try a.read(fuse_create_in.self)
        return try created(r, &o, try operations.tmpfile(r, parent: r.nodeid, mode: c.mode, flags: c.flags, umask: c.umask))
    }

    /// READ: the data goes straight into the reply memory behind the out-header
    /// (a guest's buffers, an io_uring payload, a /dev/fuse reply buffer).
    private func read(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let rd = try a.read(fuse_read_in.self)
        return try answer(r, &o) { out in
            let n = try out.fill(upTo: Int(min(rd.size, maxWrite)), contiguous: { buffer in
                try operations.read(r, nodeid: r.nodeid, handle: rd.fh, offset: rd.offset, into: buffer)
            }, scattered: { pieces in
                try operations.read(r, nodeid: r.nodeid, handle: rd.fh, offset: rd.offset, into: pieces)
            })
            metrics?.readBytes.increment(by: n)
        }
    }

    /// WRITE: the data is used where it lies in the request, in however many pieces.
    private func write(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let w = try a.readPadded(fuse_write_in.self, minimum: 24)
        guard w.size <= maxWrite else { throw FUSEError(EINVAL) }
        let n: Int
        if let data = try a.contiguous(Int(w.size)) {   // the common case: no array of pieces
            n = try operations.write(r, nodeid: r.nodeid, handle: w.fh, offset: w.offset, data: data, flags: w.write_flags)
        } else {
            let data = try a.segments(Int(w.size))
            n = try operations.write(r, nodeid: r.nodeid, handle: w.fh, offset: w.offset, segments: data, flags: w.write_flags)
        }
        metrics?.writtenBytes.increment(by: n)
        return try answer(r, &o, with: fuse_write_out(size: UInt32(n), padding: 0))
    }

    private func flush(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let f = try a.read(fuse_flush_in.self)
        try operations.flush(r, nodeid: r.nodeid, handle: f.fh, lockOwner: f.lock_owner)
        return try answer(r, &o)
    }

    private func release(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let rl = try a.read(fuse_release_in.self)
        try operations.release(r, nodeid: r.nodeid, handle: rl.fh, flags: rl.flags, releaseFlags: rl.release_flags, lockOwner: rl.lock_owner)
        return try answer(r, &o)
    }

    private func fsync(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter, directory: Bool) throws -> FUSEOutcome {
        let f = try a.read(fuse_fsync_in.self)
        let dataOnly = f.fsync_flags & UInt32(FUSE_FSYNC_FDATASYNC) != 0
        if directory {
            try operations.fsyncdir(r, nodeid: r.nodeid, handle: f.fh, dataOnly: dataOnly)
        } else {
            try operations.fsync(r, nodeid: r.nodeid, handle: f.fh, dataOnly: dataOnly)
        }
        return try answer(r, &o)
    }

    /// An FSYNC put in its transport's group, answered when the group commits.
    private func join(_ group: FUSEFsyncGroup, _ r: FUSERequest, _ a: inout RequestCursor,
                      later: () -> FUSEReplySink) throws -> FUSEOutcome {
        let f = try a.read(fuse_fsync_in.self)
        let member = FUSEFsync(request: r, nodeid: r.nodeid, handle: f.fh, dataOnly: f.fsync_flags & UInt32(FUSE_FSYNC_FDATASYNC) != 0)
        group.add(member, reply: later(), start: metrics == nil ? 0 : monotonicNanoseconds())
        return .deferred
    }

    private func statfs(_ r: FUSERequest, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let s = try operations.statfs(r, nodeid: r.nodeid)
        let st = fuse_kstatfs(blocks: s.blocks, bfree: s.freeBlocks, bavail: s.availableBlocks, files: s.files,
                              ffree: s.freeFiles, bsize: s.blockSize, namelen: s.nameLength, frsize: s.fragmentSize,
                              padding: 0, spare: (0, 0, 0, 0, 0, 0))
        return try answer(r, &o, with: fuse_statfs_out(st: st))
    }

    private func setxattr(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        // The argument is 16 bytes with SETXATTR_EXT, 8 without.
        let size: UInt32, flags: UInt32
        if negotiated & UInt64(FUSE_SETXATTR_EXT) != 0 {
            let s = try a.read(fuse_setxattr_in.self)
            (size, flags) = (s.size, s.flags)
        } else {
            size = try a.read(UInt32.self)
            flags = try a.read(UInt32.self)
        }
        let n = try name(&a)
        let pieces = try a.segments(Int(size))
        if pieces.count <= 1 {
            let value = pieces.first ?? UnsafeRawBufferPointer(start: nil, count: 0)
            try operations.setxattr(r, nodeid: r.nodeid, name: n, value: value, flags: flags)
        } else {
            let value = Array(pieces.joined())   // a value split across a guest's buffers
            try value.withUnsafeBytes { try operations.setxattr(r, nodeid: r.nodeid, name: n, value: $0, flags: flags) }
        }
        return try answer(r, &o)
    }

    private func getxattr(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let g = try a.read(fuse_getxattr_in.self)
        let value = try operations.getxattr(r, nodeid: r.nodeid, name: try name(&a))
        return try sized(r, &o, value, requested: g.size)
    }

    private func listxattr(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let g = try a.read(fuse_getxattr_in.self)
        var list: [UInt8] = []
        for n in try operations.listxattr(r, nodeid: r.nodeid) { list += n; list.append(0) }
        return try sized(r, &o, list, requested: g.size)
    }

    /// GETXATTR / LISTXATTR: size 0 asks for the length; too small a buffer is ERANGE.
    private func sized(_ r: FUSERequest, _ o: inout ReplyWriter, _ value: [UInt8], requested: UInt32) throws -> FUSEOutcome {
        if requested == 0 { return try answer(r, &o, with: fuse_getxattr_out(size: UInt32(value.count), padding: 0)) }
        guard value.count <= Int(requested) else { throw FUSEError(ERANGE) }
        return try answer(r, &o) { out in try value.withUnsafeBytes { try out.write(bytes: $0) } }
    }

    private func getlk(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let l = try a.read(fuse_lk_in.self)
        let got = try operations.getlk(r, nodeid: r.nodeid, handle: l.fh, owner: l.owner, lock: Self.lock(l.lk),
                                       flock: l.lk_flags & UInt32(FUSE_LK_FLOCK) != 0)
        let lk = fuse_file_lock(start: got.start, end: got.end, type: UInt32(bitPattern: got.type), pid: got.pid)
        return try answer(r, &o, with: fuse_lk_out(lk: lk))
    }

    /// SETLK / SETLKW: answered in place when the lock manager decides before
    /// `setlk` returns; otherwise deferred, and the answer goes to `later`.
    private func setlk(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter, wait: Bool,
                       later: () -> FUSEReplySink) throws -> FUSEOutcome {
        let l = try a.read(fuse_lk_in.self)
        let decision = LockDecision()
        let later = later()
        operations.setlk(r, nodeid: r.nodeid, handle: l.fh, owner: l.owner, lock: Self.lock(l.lk),
                         flock: l.lk_flags & UInt32(FUSE_LK_FLOCK) != 0, wait: wait) { [self, unique = r.unique, opcode = r.opcode] error in
            guard decision.settle(error) else { return }
            answered.add(1, ordering: .relaxed)
            if error != 0 { metrics?.failed(opcode, errno: error) }
            var header = fuse_out_header(len: UInt32(MemoryLayout<fuse_out_header>.size), error: -error, unique: unique)
            later(withUnsafeBytes(of: &header) { Array($0) })
        }
        guard let error = decision.returned() else { return .deferred }
        return error == 0 ? try answer(r, &o) : fail(r, error, &o)
    }

    private func fallocate(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let f = try a.read(fuse_fallocate_in.self)
        try operations.fallocate(r, nodeid: r.nodeid, handle: f.fh, offset: f.offset, length: f.length, mode: f.mode)
        return try answer(r, &o)
    }

    private func lseek(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let l = try a.read(fuse_lseek_in.self)
        let offset = try operations.lseek(r, nodeid: r.nodeid, handle: l.fh, offset: l.offset, whence: l.whence)
        return try answer(r, &o, with: fuse_lseek_out(offset: offset))
    }

    private func copyFileRange(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let c = try a.read(fuse_copy_file_range_in.self)
        let n = try operations.copyFileRange(r, nodeid: r.nodeid, handle: c.fh_in, offset: c.off_in, toNode: c.nodeid_out,
                                             toHandle: c.fh_out, toOffset: c.off_out, length: c.len, flags: c.flags)
        return try answer(r, &o, with: fuse_write_out(size: UInt32(min(n, UInt64(UInt32.max))), padding: 0))
    }

    static func lock(_ l: fuse_file_lock) -> FUSELock {
        FUSELock(start: l.start, end: l.end, type: Int32(bitPattern: l.type), pid: l.pid)
    }

    static func setattr(_ s: fuse_setattr_in) -> FUSESetattr {
        let v = s.valid
        func has(_ bit: Int32) -> Bool { v & UInt32(bit) != 0 }
        var c = FUSESetattr(killSuidGid: has(FATTR_KILL_SUIDGID))
        if has(FATTR_MODE) { c.mode = s.mode }
        if has(FATTR_UID) { c.uid = s.uid }
        if has(FATTR_GID) { c.gid = s.gid }
        if has(FATTR_SIZE) { c.size = s.size }
        if has(FATTR_ATIME_NOW) { c.atime = .now } else if has(FATTR_ATIME) { c.atime = .set(Int64(bitPattern: s.atime), s.atimensec) }
        if has(FATTR_MTIME_NOW) { c.mtime = .now } else if has(FATTR_MTIME) { c.mtime = .set(Int64(bitPattern: s.mtime), s.mtimensec) }
        if has(FATTR_CTIME) { c.ctime = (Int64(bitPattern: s.ctime), s.ctimensec) }
        if has(FATTR_FH) { c.handle = s.fh }
        return c
    }

    private func readdir(_ r: FUSERequest, _ rd: fuse_read_in, _ o: inout ReplyWriter, plus: Bool) throws -> FUSEOutcome {
        let nameOffset = plus ? MemoryLayout<fuse_entry_out>.size + 24 : 24
        return try answer(r, &o) { out in
            let start = out.written
            let size = min(Int(min(rd.size, maxWrite)), out.remaining)
            // Ask for about as many entries as can fit; unsent ones are asked for again.
            let entries = try operations.readdir(r, nodeid: r.nodeid, handle: rd.fh, offset: rd.offset, limit: max(1, size / 32))
            for e in entries {
                let record = (nameOffset + e.name.count + 7) & ~7
                if out.written - start + record > size { break }
                if plus {
                    // . and .. carry no entry (the kernel takes no reference for them).
                    var entry = fuse_entry_out()
                    if e.name != [0x2E] && e.name != [0x2E, 0x2E] {
                        guard let looked = try operations.readdirplusEntry(r, parent: r.nodeid, entry: e) else { continue }
                        entry = Self.entryOut(looked)
                    }
                    try out.write(entry)
                }
                // struct fuse_dirent: ino, off, namelen, type, then the name, padded to 8.
                try out.write(e.ino)
                try out.write(e.nextOffset)
                try out.write(UInt32(e.name.count))
                try out.write(e.type)
                try e.name.withUnsafeBytes { try out.write(bytes: $0) }
                try out.write(zeros: record - nameOffset - e.name.count)
            }
        }
    }

    private func initialize(_ r: FUSERequest, _ a: inout RequestCursor, _ o: inout ReplyWriter) throws -> FUSEOutcome {
        let i = try a.readPadded(fuse_init_in.self, minimum: 16)
        var out = fuse_init_out()
        out.major = cfuse_kernel_version
        out.minor = cfuse_kernel_minor_version
        // A newer major: answer with ours so the kernel can retry (it does not for 7 < major).
        guard i.major == 7 else { return try answer(r, &o, with: out) }
        guard i.minor >= 26 else { throw FUSEError(EPROTO) }
        var kernelFlags = UInt64(i.flags)
        if kernelFlags & UInt64(FUSE_INIT_EXT) != 0 { kernelFlags |= UInt64(i.flags2) << 32 }
        let allowed = offered & ~withheld.load(ordering: .relaxed)
        let agreed = operations.initialize(capabilities: kernelFlags & allowed) & kernelFlags & allowed
        negotiatedState.withLock { $0 = (true, agreed, min(i.minor, cfuse_kernel_minor_version)) }
        out.max_readahead = i.max_readahead
        out.flags = UInt32(truncatingIfNeeded: agreed)
        out.max_background = 64
        out.congestion_threshold = 48
        out.max_write = maxWrite
        out.time_gran = 1
        out.max_pages = maxPages
        out.flags2 = UInt32(truncatingIfNeeded: agreed >> 32)
        return try answer(r, &o, with: out)
    }
}

/// What became of a request.
public enum FUSEOutcome: Equatable, Sendable {
    /// The reply is the first `n` bytes of the reply memory.
    case replied(Int)
    /// No reply is due (FORGET, BATCH_FORGET, INTERRUPT, a request too short to
    /// answer); the transport still gives its buffers back.
    case noReply
    /// The reply comes later through the `later` sink (a SETLKW that waits);
    /// the transport keeps the request's buffers until then.
    case deferred
}

/// Whether a lock request's answer came before `setlk` returned (then it is
/// written in place) or after (then it goes through the deferred sink).
final class LockDecision: Sendable {
    private let state = Mutex<(returned: Bool, error: Int32?)>((false, nil))

    /// The answer arrives: true when it must go out through the deferred sink.
    func settle(_ error: Int32) -> Bool {
        state.withLock { s in
            if s.returned { return true }
            s.error = error
            return false
        }
    }

    /// `setlk` returned: the answer if it came already; nil means deferred.
    func returned() -> Int32? { state.withLock { s in s.returned = true; return s.error } }
}
