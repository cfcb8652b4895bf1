import CFUSE
import Glibc

/// Who asks: the caller's credentials and the request's identity.
public struct FUSERequest: Sendable {
    public var unique: UInt64
    public var nodeid: UInt64
    public var uid: UInt32
    public var gid: UInt32
    public var pid: UInt32
    public var opcode: UInt32
}

/// Attributes as FUSE carries them.
public struct FUSEAttributes: Sendable {
    public var ino: UInt64
    public var size: UInt64
    public var blocks: UInt64
    public var atime: (seconds: Int64, nanoseconds: UInt32)
    public var mtime: (seconds: Int64, nanoseconds: UInt32)
    public var ctime: (seconds: Int64, nanoseconds: UInt32)
    public var mode: UInt32
    public var nlink: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt32
    public var blockSize: UInt32

    public init(ino: UInt64, size: UInt64, blocks: UInt64, atime: (Int64, UInt32), mtime: (Int64, UInt32), ctime: (Int64, UInt32),
                mode: UInt32, nlink: UInt32, uid: UInt32, gid: UInt32, rdev: UInt32, blockSize: UInt32) {
        self.ino = ino; self.size = size; self.blocks = blocks
        self.atime = atime; self.mtime = mtime; self.ctime = ctime
        self.mode = mode; self.nlink = nlink; self.uid = uid; self.gid = gid; self.rdev = rdev; self.blockSize = blockSize
    }

    var wire: fuse_attr {
        fuse_attr(ino: ino, size: size, blocks: blocks, atime: UInt64(bitPattern: atime.seconds), mtime: UInt64(bitPattern: mtime.seconds),
                  ctime: UInt64(bitPattern: ctime.seconds), atimensec: atime.nanoseconds, mtimensec: mtime.nanoseconds,
                  ctimensec: ctime.nanoseconds, mode: mode, nlink: nlink, uid: uid, gid: gid, rdev: rdev, blksize: blockSize, flags: 0)
    }
}

/// A looked-up (or created) inode: the kernel now holds one more reference.
public struct FUSEEntry: Sendable {
    public var nodeid: UInt64
    public var generation: UInt64
    public var attributes: FUSEAttributes
    public var entryTimeout: Double
    public var attributeTimeout: Double

    public init(nodeid: UInt64, generation: UInt64, attributes: FUSEAttributes, entryTimeout: Double, attributeTimeout: Double) {
        self.nodeid = nodeid; self.generation = generation; self.attributes = attributes
        self.entryTimeout = entryTimeout; self.attributeTimeout = attributeTimeout
    }
}

/// What SETATTR asks to change (nil = leave it).
public struct FUSESetattr: Sendable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeChange?
    public var mtime: TimeChange?
    public var ctime: (Int64, UInt32)?
    public var handle: UInt64?
    /// FATTR_KILL_SUIDGID: clear set-user/group-ID (handle_killpriv_v2).
    public var killSuidGid: Bool

    public enum TimeChange: Sendable { case now, set(Int64, UInt32) }
}

public struct FUSEOpenResult: Sendable {
    public var handle: UInt64
    /// FOPEN_* flags (direct I/O, keep cache, ...).
    public var flags: UInt32
    public init(handle: UInt64, flags: UInt32 = 0) { self.handle = handle; self.flags = flags }
}

public struct FUSEDirectoryEntry: Sendable {
    public var ino: UInt64
    public var nextOffset: UInt64
    public var type: UInt32
    public var name: [UInt8]
    public init(ino: UInt64, nextOffset: UInt64, type: UInt32, name: [UInt8]) {
        self.ino = ino; self.nextOffset = nextOffset; self.type = type; self.name = name
    }
}

public struct FUSEStatistics: Sendable {
    public var blocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64
    public var files: UInt64, freeFiles: UInt64
    public var blockSize: UInt32, nameLength: UInt32, fragmentSize: UInt32
    public init(blocks: UInt64, freeBlocks: UInt64, availableBlocks: UInt64, files: UInt64, freeFiles: UInt64,
                blockSize: UInt32, nameLength: UInt32, fragmentSize: UInt32) {
        self.blocks = blocks; self.freeBlocks = freeBlocks; self.availableBlocks = availableBlocks
        self.files = files; self.freeFiles = freeFiles; self.blockSize = blockSize; self.nameLength = nameLength
        self.fragmentSize = fragmentSize
    }
}

/// A POSIX record lock or flock as FUSE describes it.
public struct FUSELock: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64       // inclusive; UInt64.max = to EOF
    public var type: Int32       // F_RDLCK, F_WRLCK, F_UNLCK
    public var pid: UInt32
    public init(start: UInt64, end: UInt64, type: Int32, pid: UInt32) {
        self.start = start; self.end = end; self.type = type; self.pid = pid
    }
}

/// How a deferred reply is delivered (SETLKW waits without holding a worker).
public typealias FUSEReplySink = @Sendable ([UInt8]) -> Void

extension FUSEOperations {
    /// READ into scattered memory (a guest's buffers): by default through one
    /// contiguous buffer; an implementation may copy straight into `segments`.
    public func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64,
                     into segments: [UnsafeMutableRawBufferPointer]) throws -> Int {
        if segments.count == 1 { return try read(r, nodeid: nodeid, handle: handle, offset: offset, into: segments[0]) }
        let total = segments.reduce(0) { $0 + $1.count }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(total, 1), alignment: 16)
        defer { buffer.deallocate() }
        let n = try read(r, nodeid: nodeid, handle: handle, offset: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<total]))
        var done = 0
        for s in segments where done < n {
            let k = min(s.count, n - done)
            s.baseAddress!.copyMemory(from: buffer.baseAddress! + done, byteCount: k)
            done += k
        }
        return n
    }

    public func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64,
                      segments: [UnsafeRawBufferPointer], flags: UInt32) throws -> Int {
        if segments.count == 1 { return try write(r, nodeid: nodeid, handle: handle, offset: offset, data: segments[0], flags: flags) }
        let data = Array(segments.joined())
        return try data.withUnsafeBytes { try write(r, nodeid: nodeid, handle: handle, offset: offset, data: $0, flags: flags) }
    }
}

/// One method per FUSE operation, typed: the file system behind the FUSE
/// engine. Nothing here knows the wire format. Errors are errno values
/// (thrown as `FUSEError`). Methods an implementation leaves out answer
/// ENOSYS (the defaults below), which tells the kernel not to ask again.
public protocol FUSEOperations: AnyObject, Sendable {
    func initialize(capabilities: UInt64) -> UInt64
    func destroy()
    /// `name` points into the request (not empty, no NUL checked yet) and is valid only during the call.
    func lookup(_ r: FUSERequest, parent: UInt64, name: UnsafeRawBufferPointer) throws -> FUSEEntry
    func forget(nodeid: UInt64, count: UInt64)
    func getattr(_ r: FUSERequest, nodeid: UInt64, handle: UInt64?) throws -> (FUSEAttributes, Double)
    func setattr(_ r: FUSERequest, nodeid: UInt64, _ changes: FUSESetattr) throws -> (FUSEAttributes, Double)
    func readlink(_ r: FUSERequest, nodeid: UInt64) throws -> [UInt8]
    func symlink(_ r: FUSERequest, parent: UInt64, name: [UInt8], target: [UInt8]) throws -> FUSEEntry
    func mknod(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt32, umask: UInt32) throws -> FUSEEntry
    func mkdir(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, umask: UInt32) throws -> FUSEEntry
    func unlink(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws
    func rmdir(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws
    func rename(_ r: FUSERequest, parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: UInt32) throws
    func link(_ r: FUSERequest, nodeid: UInt64, newParent: UInt64, newName: [UInt8]) throws -> FUSEEntry
    func open(_ r: FUSERequest, nodeid: UInt64, flags: UInt32, killSuidGid: Bool) throws -> FUSEOpenResult
    func create(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult)
    func tmpfile(_ r: FUSERequest, parent: UInt64, mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult)
    func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, into: UnsafeMutableRawBufferPointer) throws -> Int
    /// READ into scattered memory; the default goes through one buffer (see the extension).
    func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, into segments: [UnsafeMutableRawBufferPointer]) throws -> Int
    func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws -> Int
    /// WRITE from scattered memory; the default gathers it into one buffer (see the extension).
    func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, segments: [UnsafeRawBufferPointer], flags: UInt32) throws -> Int
    func flush(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, lockOwner: UInt64) throws
    func release(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, flags: UInt32, releaseFlags: UInt32, lockOwner: UInt64) throws
    func fsync(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws
    /// FSYNCs that arrived together (a `FUSEFsyncGroup`), made durable
    /// together: `errors[i]` becomes 0 or member i's errno (`errors` has an
    /// entry per member; kept by the group, it costs no allocation). The
    /// default runs them one by one.
    func fsync(group: [FUSEFsync], errors: inout [Int32])
    func opendir(_ r: FUSERequest, nodeid: UInt64, flags: UInt32) throws -> FUSEOpenResult
    /// Entries from `offset` on; the engine stops packing when the reply is full
    /// (the kernel asks again from the last offset it saw).
    func readdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, limit: Int) throws -> [FUSEDirectoryEntry]
    /// A readdirplus entry: a lookup that counts as one (nil: skip the entry, it went away).
    func readdirplusEntry(_ r: FUSERequest, parent: UInt64, entry: FUSEDirectoryEntry) throws -> FUSEEntry?
    func releasedir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64) throws
    func fsyncdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws
    func statfs(_ r: FUSERequest, nodeid: UInt64) throws -> FUSEStatistics
    func setxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8], value: UnsafeRawBufferPointer, flags: UInt32) throws
    func getxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws -> [UInt8]
    func listxattr(_ r: FUSERequest, nodeid: UInt64) throws -> [[UInt8]]
    func removexattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws
    func access(_ r: FUSERequest, nodeid: UInt64, mask: UInt32) throws
    func getlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool) throws -> FUSELock
    /// Sets or clears a lock. With `wait`, a conflicting lock is waited for and
    /// the reply goes through `reply` later (or now); `interrupt(unique:)` ends the wait with EINTR.
    func setlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool, wait: Bool,
               reply: @escaping @Sendable (Int32) -> Void)
    func interrupt(unique: UInt64)
    func fallocate(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws
    func lseek(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws -> UInt64
    func copyFileRange(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64,
                       toOffset: UInt64, length: UInt64, flags: UInt64) throws -> UInt64
    func syncfs(_ r: FUSERequest) throws
}

/// ENOSYS for everything an implementation does not provide; the lifecycle
/// calls (initialize, destroy, forget, interrupt) have nothing to refuse.
extension FUSEOperations {
    private var unsupported: FUSEError { FUSEError(ENOSYS) }
    public func initialize(capabilities: UInt64) -> UInt64 { capabilities }
    public func destroy() {}
    public func forget(nodeid: UInt64, count: UInt64) {}
    public func interrupt(unique: UInt64) {}
    public func lookup(_ r: FUSERequest, parent: UInt64, name: UnsafeRawBufferPointer) throws -> FUSEEntry { throw unsupported }
    public func getattr(_ r: FUSERequest, nodeid: UInt64, handle: UInt64?) throws -> (FUSEAttributes, Double) { throw unsupported }
    public func setattr(_ r: FUSERequest, nodeid: UInt64, _ changes: FUSESetattr) throws -> (FUSEAttributes, Double) { throw unsupported }
    public func readlink(_ r: FUSERequest, nodeid: UInt64) throws -> [UInt8] { throw unsupported }
    public func symlink(_ r: FUSERequest, parent: UInt64, name: [UInt8], target: [UInt8]) throws -> FUSEEntry { throw unsupported }
    public func mknod(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt32, umask: UInt32) throws -> FUSEEntry { throw unsupported }
    public func mkdir(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, umask: UInt32) throws -> FUSEEntry { throw unsupported }
    public func unlink(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws { throw unsupported }
    public func rmdir(_ r: FUSERequest, parent: UInt64, name: [UInt8]) throws { throw unsupported }
    public func rename(_ r: FUSERequest, parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: UInt32) throws { throw unsupported }
    public func link(_ r: FUSERequest, nodeid: UInt64, newParent: UInt64, newName: [UInt8]) throws -> FUSEEntry { throw unsupported }
    public func open(_ r: FUSERequest, nodeid: UInt64, flags: UInt32, killSuidGid: Bool) throws -> FUSEOpenResult { throw unsupported }
    public func create(_ r: FUSERequest, parent: UInt64, name: [UInt8], mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) { throw unsupported }
    public func tmpfile(_ r: FUSERequest, parent: UInt64, mode: UInt32, flags: UInt32, umask: UInt32) throws -> (FUSEEntry, FUSEOpenResult) { throw unsupported }
    public func read(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, into: UnsafeMutableRawBufferPointer) throws -> Int { throw unsupported }
    public func write(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, data: UnsafeRawBufferPointer, flags: UInt32) throws -> Int { throw unsupported }
    public func flush(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, lockOwner: UInt64) throws { throw unsupported }
    public func release(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, flags: UInt32, releaseFlags: UInt32, lockOwner: UInt64) throws { throw unsupported }
    public func fsync(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws { throw unsupported }
    public func opendir(_ r: FUSERequest, nodeid: UInt64, flags: UInt32) throws -> FUSEOpenResult { throw unsupported }
    public func readdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, limit: Int) throws -> [FUSEDirectoryEntry] { throw unsupported }
    public func readdirplusEntry(_ r: FUSERequest, parent: UInt64, entry: FUSEDirectoryEntry) throws -> FUSEEntry? { throw unsupported }
    public func releasedir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64) throws { throw unsupported }
    public func fsyncdir(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws { throw unsupported }
    public func statfs(_ r: FUSERequest, nodeid: UInt64) throws -> FUSEStatistics { throw unsupported }
    public func setxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8], value: UnsafeRawBufferPointer, flags: UInt32) throws { throw unsupported }
    public func getxattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws -> [UInt8] { throw unsupported }
    public func listxattr(_ r: FUSERequest, nodeid: UInt64) throws -> [[UInt8]] { throw unsupported }
    public func removexattr(_ r: FUSERequest, nodeid: UInt64, name: [UInt8]) throws { throw unsupported }
    public func access(_ r: FUSERequest, nodeid: UInt64, mask: UInt32) throws { throw unsupported }
    public func getlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool) throws -> FUSELock { throw unsupported }
    public func setlk(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, owner: UInt64, lock: FUSELock, flock: Bool, wait: Bool,
                      reply: @escaping @Sendable (Int32) -> Void) { reply(ENOSYS) }
    public func fallocate(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, length: UInt64, mode: UInt32) throws { throw unsupported }
    public func lseek(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, whence: UInt32) throws -> UInt64 { throw unsupported }
    public func copyFileRange(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, offset: UInt64, toNode: UInt64, toHandle: UInt64,
                              toOffset: UInt64, length: UInt64, flags: UInt64) throws -> UInt64 { throw unsupported }
    public func syncfs(_ r: FUSERequest) throws { throw unsupported }
}

/// An errno for the reply.
public struct FUSEError: Error, Sendable, Equatable {
    public let errno: Int32
    public init(_ errno: Int32) { self.errno = errno }
}
