import CFUSE
import Glibc
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
    private let negotiatedState = Mutex<(initialized: Bool, flags: UInt64, minor: UInt32)>((false, 0, 0))
    private let withheld = Atomic<UInt64>(0)

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

    public init(operations: FUSEOperations, offered: UInt64 = FUSEServer.defaultCapabilities, maxWrite: UInt32 = 1 << 20) {
        self.operations = operations
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

    /// Handles a request that arrives in pieces (a guest's descriptor chain).
    /// A WRITE's data is passed on where it lies (header and arguments are
    /// copied out, the payload is not); anything else is gathered first.
    public func handle(segments: [UnsafeRawBufferPointer], replyMemory: [UnsafeMutableRawBufferPointer]? = nil,
                       reply: @escaping FUSEReplySink) {
        // One piece is a whole message already (a WRITE's data is used where it lies there too).
        if segments.count == 1 { return handle(segments[0], replyMemory: replyMemory, reply: reply) }
        let total = segments.reduce(0) { $0 + $1.count }
        let fixed = MemoryLayout<fuse_in_header>.size + MemoryLayout<fuse_write_in>.size
        let write = withUnsafeTemporaryAllocation(byteCount: fixed, alignment: 8) { prefix -> (fuse_in_header, fuse_write_in)? in
            guard Self.gather(segments, into: prefix) == fixed else { return nil }
            let header = prefix.loadUnaligned(as: fuse_in_header.self)
            guard header.opcode == FUSE_WRITE.rawValue, Int(header.len) == total, header.total_extlen == 0 else { return nil }
            return (header, prefix.loadUnaligned(fromByteOffset: MemoryLayout<fuse_in_header>.size, as: fuse_write_in.self))
        }
        if let (header, w) = write, negotiatedState.withLock({ $0.initialized && $0.minor >= 9 }) {
            let r = FUSERequest(unique: header.unique, nodeid: header.nodeid, uid: header.uid, gid: header.gid,
                                pid: header.pid, opcode: header.opcode)
            reply(writeInPlace(r, w, segments, skip: fixed, available: total - fixed))
            return
        }
        // Anything else is gathered (small requests on the stack).
        withUnsafeTemporaryAllocation(byteCount: max(total, 1), alignment: 16) { message in
            let n = Self.gather(segments, into: message)
            handle(UnsafeRawBufferPointer(rebasing: message[0..<n]), replyMemory: replyMemory, reply: reply)
        }
    }

    /// Copies the first bytes of `segments` into `buffer`: how many fit.
    static func gather(_ segments: [UnsafeRawBufferPointer], into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var done = 0
        for s in segments where done < buffer.count {
            let n = min(s.count, buffer.count - done)
            if n > 0 { (buffer.baseAddress! + done).copyMemory(from: s.baseAddress!, byteCount: n) }
            done += n
        }
        return done
    }

    /// The bytes of `segments` from `skip` on, at most `count` of them, as
    /// pieces of the same memory; nil when `skip` is past their end.
    static func pieces(of segments: [UnsafeRawBufferPointer], from skip: Int, count: Int) -> [UnsafeRawBufferPointer]? {
        var out: [UnsafeRawBufferPointer] = []
        var toSkip = skip, wanted = count
        for s in segments {
            if toSkip > 0 && toSkip >= s.count { toSkip -= s.count; continue }
            let n = min(s.count - toSkip, wanted)
            if n > 0 { out.append(UnsafeRawBufferPointer(start: s.baseAddress! + toSkip, count: n)) }
            wanted -= n
            toSkip = 0
            if wanted == 0 { break }
        }
        return toSkip == 0 ? out : nil
    }

    /// WRITE from the request's own pieces, past its first `skip` bytes.
    private func writeInPlace(_ r: FUSERequest, _ w: fuse_write_in, _ segments: [UnsafeRawBufferPointer], skip: Int, available: Int) -> [UInt8] {
        guard w.size <= maxWrite, Int(w.size) <= available,
              let data = Self.pieces(of: segments, from: skip, count: Int(w.size)) else {
            return ReplyBuilder(unique: r.unique, error: EINVAL).finish()
        }
        do {
            let n = try operations.write(r, nodeid: r.nodeid, handle: w.fh, offset: w.offset, segments: data, flags: w.write_flags)
            var b = ReplyBuilder(unique: r.unique)
            b.append(fuse_write_out(size: UInt32(n), padding: 0))
            return b.finish()
        } catch let e as FUSEError {
            return ReplyBuilder(unique: r.unique, error: e.errno).finish()
        } catch {
            return ReplyBuilder(unique: r.unique, error: EIO).finish()
        }
    }

    /// A READ whose data goes straight into `memory` past the out-header's
    /// room; returns the out-header alone, its length counting the data.
    private func readInPlace(_ r: FUSERequest, _ reader: inout RequestReader, _ memory: [UnsafeMutableRawBufferPointer]) throws -> [UInt8] {
        let rd = try reader.read(fuse_read_in.self)
        // Not even room for the out-header: an error the transport can still send.
        guard let pieces = Self.pieces(of: memory.map { UnsafeRawBufferPointer($0) }, from: MemoryLayout<fuse_out_header>.size,
                                       count: Int(min(rd.size, maxWrite))) else { throw FUSEError(EINVAL) }
        let segments = pieces.map { UnsafeMutableRawBufferPointer(mutating: $0) }
        let n = segments.isEmpty ? 0 : try operations.read(r, nodeid: r.nodeid, handle: rd.fh, offset: rd.offset, into: segments)
        var header = ReplyBuilder(unique: r.unique).finish()
        let length = UInt32(header.count + n)
        withUnsafeBytes(of: length) { l in header.withUnsafeMutableBytes { $0.copyMemory(from: l) } }
        return header
    }

    /// Handles one request. Replies go through `reply`, now or later (SETLKW);
    /// requests that take no reply (FORGET, BATCH_FORGET, INTERRUPT) send none.
    ///
    /// `replyMemory`: where the reply will be copied to (a guest's writable
    /// buffers). A READ then puts its data there directly, after room for the
    /// out-header, and `reply` gets just the out-header, whose `len` counts the
    /// data: a transport sends `len` bytes, which is right for every reply.
    public func handle(_ message: UnsafeRawBufferPointer, replyMemory: [UnsafeMutableRawBufferPointer]? = nil,
                       reply: @escaping FUSEReplySink) {
        var reader = RequestReader(message)
        guard let header = try? reader.read(fuse_in_header.self) else { return }   // cannot even answer
        let request = FUSERequest(unique: header.unique, nodeid: header.nodeid, uid: header.uid, gid: header.gid,
                                  pid: header.pid, opcode: header.opcode)
        guard Int(header.len) == message.count else {
            reply(ReplyBuilder(unique: header.unique, error: EINVAL).finish())
            return
        }
        // Extensions (security context etc.) trail the arguments; pmfs asks for none.
        if header.total_extlen != 0 {
            let ext = Int(header.total_extlen) * 8
            guard ext <= reader.remaining else { reply(ReplyBuilder(unique: header.unique, error: EINVAL).finish()); return }
            reader = RequestReader(UnsafeRawBufferPointer(rebasing: message[0..<(message.count - ext)]))
            _ = try? reader.read(fuse_in_header.self)
        }
        if header.opcode != FUSE_INIT.rawValue && !initialized {
            reply(ReplyBuilder(unique: header.unique, error: EIO).finish())
            return
        }
        do {
            if header.opcode == FUSE_READ.rawValue, let replyMemory {
                reply(try readInPlace(request, &reader, replyMemory))
            } else if let out = try dispatch(request, &reader, reply: reply) {
                reply(out)
            }
        } catch let e as FUSEError {
            reply(ReplyBuilder(unique: header.unique, error: e.errno).finish())
        } catch is FUSEWireError {
            reply(ReplyBuilder(unique: header.unique, error: EINVAL).finish())
        } catch {
            reply(ReplyBuilder(unique: header.unique, error: EIO).finish())
        }
    }

    private func ok(_ r: FUSERequest) -> [UInt8] { ReplyBuilder(unique: r.unique).finish() }

    private func entryReply(_ r: FUSERequest, _ e: FUSEEntry) -> [UInt8] {
        var b = ReplyBuilder(unique: r.unique, capacity: MemoryLayout<fuse_entry_out>.size)
        b.append(Self.entryOut(e))
        return b.finish()
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

    private func attrReply(_ r: FUSERequest, _ a: (FUSEAttributes, Double)) -> [UInt8] {
        var b = ReplyBuilder(unique: r.unique, capacity: MemoryLayout<fuse_attr_out>.size)
        let (s, ns) = Self.split(a.1)
        b.append(fuse_attr_out(attr_valid: s, attr_valid_nsec: ns, dummy: 0, attr: a.0.wire))
        return b.finish()
    }

    /// CREATE and TMPFILE: the new entry, then the open file.
    private func createReply(_ r: FUSERequest, _ created: (FUSEEntry, FUSEOpenResult)) -> [UInt8] {
        var b = ReplyBuilder(unique: r.unique)
        b.append(Self.entryOut(created.0))
        b.append(fuse_open_out(fh: created.1.handle, open_flags: created.1.flags, padding: 0))
        return b.finish()
    }

    private func openReply(_ r: FUSERequest, _ o: FUSEOpenResult) -> [UInt8] {
        var b = ReplyBuilder(unique: r.unique)
        b.append(fuse_open_out(fh: o.handle, open_flags: o.flags, padding: 0))
        return b.finish()
    }

    private func name(_ reader: inout RequestReader) throws -> [UInt8] {
        let n = try reader.readCString()
        guard !n.isEmpty else { throw FUSEError(ENOENT) }
        return n
    }

    private func dispatch(_ r: FUSERequest, _ reader: inout RequestReader, reply: @escaping FUSEReplySink) throws -> [UInt8]? {
        let ops = operations
        let opcode = fuse_opcode(rawValue: r.opcode)
        switch opcode {
        case FUSE_INIT:
            return try initialize(r, &reader)
        case FUSE_DESTROY:
            ops.destroy()
            return ok(r)
        case FUSE_LOOKUP:
            return entryReply(r, try ops.lookup(r, parent: r.nodeid, name: try name(&reader)))
        case FUSE_FORGET:
            let f = try reader.read(fuse_forget_in.self)
            ops.forget(nodeid: r.nodeid, count: f.nlookup)
            return nil
        case FUSE_BATCH_FORGET:
            let b = try reader.read(fuse_batch_forget_in.self)
            for _ in 0..<b.count {
                guard let one = try? reader.read(fuse_forget_one.self) else { break }
                ops.forget(nodeid: one.nodeid, count: one.nlookup)
            }
            return nil
        case FUSE_GETATTR:
            let g = try reader.read(fuse_getattr_in.self)
            let handle = g.getattr_flags & UInt32(FUSE_GETATTR_FH) != 0 ? g.fh : nil
            return attrReply(r, try ops.getattr(r, nodeid: r.nodeid, handle: handle))
        case FUSE_SETATTR:
            let s = try reader.read(fuse_setattr_in.self)
            return attrReply(r, try ops.setattr(r, nodeid: r.nodeid, Self.setattr(s)))
        case FUSE_READLINK:
            var b = ReplyBuilder(unique: r.unique)
            b.append(contentsOf: try ops.readlink(r, nodeid: r.nodeid))
            return b.finish()
        case FUSE_SYMLINK:
            let n = try name(&reader)
            let target = try reader.readCString()
            return entryReply(r, try ops.symlink(r, parent: r.nodeid, name: n, target: target))
        case FUSE_MKNOD:
            let m = try reader.readPadded(fuse_mknod_in.self, minimum: 8)
            return entryReply(r, try ops.mknod(r, parent: r.nodeid, name: try name(&reader), mode: m.mode, rdev: m.rdev, umask: m.umask))
        case FUSE_MKDIR:
            let m = try reader.read(fuse_mkdir_in.self)
            return entryReply(r, try ops.mkdir(r, parent: r.nodeid, name: try name(&reader), mode: m.mode, umask: m.umask))
        case FUSE_UNLINK:
            try ops.unlink(r, parent: r.nodeid, name: try name(&reader))
            return ok(r)
        case FUSE_RMDIR:
            try ops.rmdir(r, parent: r.nodeid, name: try name(&reader))
            return ok(r)
        case FUSE_RENAME:
            let m = try reader.read(fuse_rename_in.self)
            let old = try name(&reader), new = try name(&reader)
            try ops.rename(r, parent: r.nodeid, name: old, newParent: m.newdir, newName: new, flags: 0)
            return ok(r)
        case FUSE_RENAME2:
            let m = try reader.read(fuse_rename2_in.self)
            let old = try name(&reader), new = try name(&reader)
            try ops.rename(r, parent: r.nodeid, name: old, newParent: m.newdir, newName: new, flags: m.flags)
            return ok(r)
        case FUSE_LINK:
            let l = try reader.read(fuse_link_in.self)
            return entryReply(r, try ops.link(r, nodeid: l.oldnodeid, newParent: r.nodeid, newName: try name(&reader)))
        case FUSE_OPEN:
            let o = try reader.read(fuse_open_in.self)
            return openReply(r, try ops.open(r, nodeid: r.nodeid, flags: o.flags, killSuidGid: o.open_flags & UInt32(FUSE_OPEN_KILL_SUIDGID) != 0))
        case FUSE_CREATE:
            let c = try reader.read(fuse_create_in.self)
            return createReply(r, try ops.create(r, parent: r.nodeid, name: try name(&reader), mode: c.mode, flags: c.flags, umask: c.umask))
        case FUSE_TMPFILE:
            let c = try reader.read(fuse_create_in.self)
            return createReply(r, try ops.tmpfile(r, parent: r.nodeid, mode: c.mode, flags: c.flags, umask: c.umask))
        case FUSE_READ:
            let rd = try reader.read(fuse_read_in.self)
            let size = Int(min(rd.size, maxWrite))
            var b = ReplyBuilder(unique: r.unique, capacity: size)
            try b.appendUninitialized(size) { buffer in
                try ops.read(r, nodeid: r.nodeid, handle: rd.fh, offset: rd.offset, into: buffer)
            }
            return b.finish()
        case FUSE_WRITE:
            let w = try reader.readPadded(fuse_write_in.self, minimum: 24)
            guard w.size <= maxWrite else { throw FUSEError(EINVAL) }
            let data = try reader.readBytes(Int(w.size))
            let n = try ops.write(r, nodeid: r.nodeid, handle: w.fh, offset: w.offset, data: data, flags: w.write_flags)
            var b = ReplyBuilder(unique: r.unique)
            b.append(fuse_write_out(size: UInt32(n), padding: 0))
            return b.finish()
        case FUSE_FLUSH:
            let f = try reader.read(fuse_flush_in.self)
            try ops.flush(r, nodeid: r.nodeid, handle: f.fh, lockOwner: f.lock_owner)
            return ok(r)
        case FUSE_RELEASE:
            let rl = try reader.read(fuse_release_in.self)
            try ops.release(r, nodeid: r.nodeid, handle: rl.fh, flags: rl.flags, releaseFlags: rl.release_flags, lockOwner: rl.lock_owner)
            return ok(r)
        case FUSE_FSYNC:
            let f = try reader.read(fuse_fsync_in.self)
            try ops.fsync(r, nodeid: r.nodeid, handle: f.fh, dataOnly: f.fsync_flags & UInt32(FUSE_FSYNC_FDATASYNC) != 0)
            return ok(r)
        case FUSE_OPENDIR:
            let o = try reader.read(fuse_open_in.self)
            return openReply(r, try ops.opendir(r, nodeid: r.nodeid, flags: o.flags))
        case FUSE_READDIR, FUSE_READDIRPLUS:
            let rd = try reader.read(fuse_read_in.self)
            return try readdir(r, rd, plus: opcode == FUSE_READDIRPLUS)
        case FUSE_RELEASEDIR:
            let rl = try reader.read(fuse_release_in.self)
            try ops.releasedir(r, nodeid: r.nodeid, handle: rl.fh)
            return ok(r)
        case FUSE_FSYNCDIR:
            let f = try reader.read(fuse_fsync_in.self)
            try ops.fsyncdir(r, nodeid: r.nodeid, handle: f.fh, dataOnly: f.fsync_flags & 1 != 0)
            return ok(r)
        case FUSE_STATFS:
            let s = try ops.statfs(r, nodeid: r.nodeid)
            var b = ReplyBuilder(unique: r.unique)
            b.append(fuse_statfs_out(st: fuse_kstatfs(blocks: s.blocks, bfree: s.freeBlocks, bavail: s.availableBlocks, files: s.files,
                                                      ffree: s.freeFiles, bsize: s.blockSize, namelen: s.nameLength, frsize: s.fragmentSize,
                                                      padding: 0, spare: (0, 0, 0, 0, 0, 0))))
            return b.finish()
        case FUSE_SETXATTR:
            // The argument is 16 bytes with SETXATTR_EXT, 8 without.
            let size: UInt32, flags: UInt32
            if negotiated & UInt64(FUSE_SETXATTR_EXT) != 0 {
                let s = try reader.read(fuse_setxattr_in.self)
                (size, flags) = (s.size, s.flags)
            } else {
                size = try reader.read(UInt32.self)
                flags = try reader.read(UInt32.self)
            }
            let n = try name(&reader)
            let value = try reader.readBytes(Int(size))
            try ops.setxattr(r, nodeid: r.nodeid, name: n, value: value, flags: flags)
            return ok(r)
        case FUSE_GETXATTR:
            let g = try reader.read(fuse_getxattr_in.self)
            let value = try ops.getxattr(r, nodeid: r.nodeid, name: try name(&reader))
            return sizedReply(r, value, requested: g.size)
        case FUSE_LISTXATTR:
            let g = try reader.read(fuse_getxattr_in.self)
            var list: [UInt8] = []
            for n in try ops.listxattr(r, nodeid: r.nodeid) { list += n; list.append(0) }
            return sizedReply(r, list, requested: g.size)
        case FUSE_REMOVEXATTR:
            try ops.removexattr(r, nodeid: r.nodeid, name: try name(&reader))
            return ok(r)
        case FUSE_ACCESS:
            let a = try reader.read(fuse_access_in.self)
            try ops.access(r, nodeid: r.nodeid, mask: a.mask)
            return ok(r)
        case FUSE_GETLK:
            let l = try reader.read(fuse_lk_in.self)
            let got = try ops.getlk(r, nodeid: r.nodeid, handle: l.fh, owner: l.owner, lock: Self.lock(l.lk),
                                    flock: l.lk_flags & UInt32(FUSE_LK_FLOCK) != 0)
            var b = ReplyBuilder(unique: r.unique)
            b.append(fuse_lk_out(lk: fuse_file_lock(start: got.start, end: got.end, type: UInt32(bitPattern: got.type), pid: got.pid)))
            return b.finish()
        case FUSE_SETLK, FUSE_SETLKW:
            let l = try reader.read(fuse_lk_in.self)
            let unique = r.unique
            ops.setlk(r, nodeid: r.nodeid, handle: l.fh, owner: l.owner, lock: Self.lock(l.lk),
                      flock: l.lk_flags & UInt32(FUSE_LK_FLOCK) != 0, wait: opcode == FUSE_SETLKW) { error in
                reply(ReplyBuilder(unique: unique, error: error).finish())
            }
            return nil
        case FUSE_INTERRUPT:
            let i = try reader.read(fuse_interrupt_in.self)
            ops.interrupt(unique: i.unique)
            return nil
        case FUSE_FALLOCATE:
            let f = try reader.read(fuse_fallocate_in.self)
            try ops.fallocate(r, nodeid: r.nodeid, handle: f.fh, offset: f.offset, length: f.length, mode: f.mode)
            return ok(r)
        case FUSE_LSEEK:
            let l = try reader.read(fuse_lseek_in.self)
            let off = try ops.lseek(r, nodeid: r.nodeid, handle: l.fh, offset: l.offset, whence: l.whence)
            var b = ReplyBuilder(unique: r.unique)
            b.append(fuse_lseek_out(offset: off))
            return b.finish()
        case FUSE_COPY_FILE_RANGE:
            let c = try reader.read(fuse_copy_file_range_in.self)
            let n = try ops.copyFileRange(r, nodeid: r.nodeid, handle: c.fh_in, offset: c.off_in, toNode: c.nodeid_out,
                                          toHandle: c.fh_out, toOffset: c.off_out, length: c.len, flags: c.flags)
            var b = ReplyBuilder(unique: r.unique)
            b.append(fuse_write_out(size: UInt32(min(n, UInt64(UInt32.max))), padding: 0))
            return b.finish()
        case FUSE_SYNCFS:
            try ops.syncfs(r)
            return ok(r)
        default:
            // IOCTL, POLL, BMAP, mappings and anything unknown.
            throw FUSEError(ENOSYS)
        }
    }

    /// GETXATTR / LISTXATTR: size 0 asks for the length; too small a buffer is ERANGE.
    private func sizedReply(_ r: FUSERequest, _ value: [UInt8], requested: UInt32) -> [UInt8] {
        var b = ReplyBuilder(unique: r.unique)
        if requested == 0 {
            b.append(fuse_getxattr_out(size: UInt32(value.count), padding: 0))
            return b.finish()
        }
        guard value.count <= Int(requested) else { return ReplyBuilder(unique: r.unique, error: ERANGE).finish() }
        b.append(contentsOf: value)
        return b.finish()
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

    private func readdir(_ r: FUSERequest, _ rd: fuse_read_in, plus: Bool) throws -> [UInt8] {
        let size = Int(min(rd.size, maxWrite))
        var b = ReplyBuilder(unique: r.unique, capacity: size)
        let header = b.count
        let nameOffset = plus ? MemoryLayout<fuse_entry_out>.size + 24 : 24
        // Ask for about as many entries as can fit; unsent ones are asked for again.
        let entries = try operations.readdir(r, nodeid: r.nodeid, handle: rd.fh, offset: rd.offset, limit: max(1, size / 32))
        for e in entries {
            let record = (nameOffset + e.name.count + 7) & ~7
            if b.count - header + record > size { break }
            if plus {
                // . and .. carry no entry (the kernel takes no reference for them).
                var entry = fuse_entry_out()
                if e.name != [0x2E] && e.name != [0x2E, 0x2E] {
                    guard let looked = try operations.readdirplusEntry(r, parent: r.nodeid, entry: e) else { continue }
                    entry = Self.entryOut(looked)
                }
                b.append(entry)
            }
            // struct fuse_dirent: ino, off, namelen, type, then the name.
            b.append(e.ino)
            b.append(e.nextOffset)
            b.append(UInt32(e.name.count))
            b.append(e.type)
            b.append(contentsOf: e.name)
            b.alignTo8()
        }
        return b.finish()
    }

    private func initialize(_ r: FUSERequest, _ reader: inout RequestReader) throws -> [UInt8] {
        let i = try reader.readPadded(fuse_init_in.self, minimum: 16)
        guard i.major == 7 else {
            // A newer major: answer with ours so the kernel can retry (it does not for 7 < major).
            var b = ReplyBuilder(unique: r.unique)
            var out = fuse_init_out()
            out.major = cfuse_kernel_version
            out.minor = cfuse_kernel_minor_version
            b.append(out)
            return b.finish()
        }
        guard i.minor >= 26 else { throw FUSEError(EPROTO) }
        var kernelFlags = UInt64(i.flags)
        if kernelFlags & UInt64(FUSE_INIT_EXT) != 0 { kernelFlags |= UInt64(i.flags2) << 32 }
        let allowed = offered & ~withheld.load(ordering: .relaxed)
        let agreed = operations.initialize(capabilities: kernelFlags & allowed) & kernelFlags & allowed
        negotiatedState.withLock { $0 = (true, agreed, min(i.minor, cfuse_kernel_minor_version)) }
        var b = ReplyBuilder(unique: r.unique)
        var out = fuse_init_out()
        out.major = cfuse_kernel_version
        out.minor = cfuse_kernel_minor_version
        out.max_readahead = i.max_readahead
        out.flags = UInt32(truncatingIfNeeded: agreed)
        out.max_background = 64
        out.congestion_threshold = 48
        out.max_write = maxWrite
        out.time_gran = 1
        out.max_pages = maxPages
        out.flags2 = UInt32(truncatingIfNeeded: agreed >> 32)
        b.append(out)
        return b.finish()
    }
}
