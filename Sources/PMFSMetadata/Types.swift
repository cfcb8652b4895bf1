import CPMDK
import Glibc
import Synchronization
import SystemPackage

/// A directory entry name: 1 to 255 bytes, any byte but '/' and NUL.
public struct FileName: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// Validates a name; "." and ".." are valid names here and handled by the caller.
    public init(bytes: [UInt8]) throws(Errno) {
        let refused: Errno? = bytes.withUnsafeBytes { b in
            do throws(Errno) { try Self.validate(b); return nil } catch { return error }
        }
        if let refused { throw refused }
        self.bytes = bytes
    }

    /// The checks a name passes, on bytes where they lie (a lookup needs no copy).
    public static func validate(_ bytes: UnsafeRawBufferPointer) throws(Errno) {
        guard !bytes.isEmpty else { throw .noSuchFileOrDirectory }
        guard bytes.count <= Int(PMFS_NAME_MAX) else { throw .fileNameTooLong }
        guard !bytes.contains(0x2F), !bytes.contains(0) else { throw .invalidArgument }
    }

    public init(_ string: String) throws(Errno) {
        try self.init(bytes: Array(string.utf8))
    }

    var isDot: Bool { bytes.count == 1 && bytes[0] == 0x2E }
    var isDotDot: Bool { bytes.count == 2 && bytes[0] == 0x2E && bytes[1] == 0x2E }

    static func isDot(_ b: UnsafeRawBufferPointer) -> Bool { b.count == 1 && b[0] == 0x2E }
    static func isDotDot(_ b: UnsafeRawBufferPointer) -> Bool { b.count == 2 && b[0] == 0x2E && b[1] == 0x2E }

    public var description: String { String(decoding: bytes, as: UTF8.self) }
}

public enum FileType: UInt8, Sendable {
    case unknown = 0, fifo = 1, characterDevice = 2, directory = 4, blockDevice = 6
    case regular = 8, symbolicLink = 10, socket = 12

    public init(mode: UInt32) {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFIFO): self = .fifo
        case UInt32(S_IFCHR): self = .characterDevice
        case UInt32(S_IFDIR): self = .directory
        case UInt32(S_IFBLK): self = .blockDevice
        case UInt32(S_IFREG): self = .regular
        case UInt32(S_IFLNK): self = .symbolicLink
        case UInt32(S_IFSOCK): self = .socket
        default: self = .unknown
        }
    }
}

public struct Timestamp: Hashable, Sendable, Comparable {
    public var seconds: Int64
    public var nanoseconds: UInt32

    public init(seconds: Int64, nanoseconds: UInt32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    /// The time, to the nanosecond (namespace changes, setattr): also the
    /// floor `coarseNow` never goes below.
    public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let t = Timestamp(seconds: Int64(ts.tv_sec), nanoseconds: UInt32(ts.tv_nsec))
        let nanoseconds = t.sinceEpoch
        var floor = fineFloor.load(ordering: .relaxed)
        while floor < nanoseconds {
            let (exchanged, found) = fineFloor.compareExchange(expected: floor, desired: nanoseconds, ordering: .relaxed)
            if exchanged { break }
            floor = found
        }
        return t
    }

    /// The time of the kernel's clock tick (CLOCK_REALTIME_COARSE, 4 ms here),
    /// as Linux stamps file writes, but never before a `now()` handed out
    /// already, so a file written after another was created never looks older.
    public static func coarseNow() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &ts)
        let tick = Timestamp(seconds: Int64(ts.tv_sec), nanoseconds: UInt32(ts.tv_nsec))
        let floor = fineFloor.load(ordering: .relaxed)
        return tick.sinceEpoch >= floor ? tick : Timestamp(sinceEpoch: floor)
    }

    /// The newest time `now()` returned, in ns since the epoch.
    private static let fineFloor = Atomic<UInt64>(0)

    /// ns since the epoch, clamped to 0 for times before it (clocks only, not stored times).
    private var sinceEpoch: UInt64 {
        seconds < 0 ? 0 : UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000).partialValue &+ UInt64(nanoseconds)
    }

    private init(sinceEpoch ns: UInt64) {
        self.init(seconds: Int64(ns / 1_000_000_000), nanoseconds: UInt32(ns % 1_000_000_000))
    }

    /// One nanosecond later (saturating at the largest time).
    public var next: Timestamp {
        if nanoseconds < 999_999_999 { return Timestamp(seconds: seconds, nanoseconds: nanoseconds + 1) }
        return seconds == Int64.max ? self : Timestamp(seconds: seconds + 1, nanoseconds: 0)
    }

    public static func < (a: Timestamp, b: Timestamp) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }

    init(_ t: pmfs_timespec) { self.init(seconds: t.sec, nanoseconds: t.nsec) }
    var persistent: pmfs_timespec { pmfs_timespec(sec: seconds, nsec: nanoseconds, reserved: 0) }

    /// relatime: whether a read should move atime to `now` (atime older than
    /// mtime or ctime, or a day old). The times are whatever a client set, any
    /// Int64 (SETATTR stores them as sent), so the age is never computed as
    /// `now - atime`: that overflows for an atime near Int64.min.
    public static func relatimeUpdateDue(atime: Timestamp, mtime: Timestamp, ctime: Timestamp, now: Timestamp) -> Bool {
        if atime < mtime || atime < ctime { return true }
        let (dayBeforeNow, overflow) = now.seconds.subtractingReportingOverflow(86_400)
        return !overflow && atime.seconds <= dayBeforeNow
    }
}

/// Everything stat(2) reports of an inode, plus its generation.
public struct InodeAttributes: Hashable, Sendable {
    public var ino: UInt64
    public var generation: UInt64
    public var mode: UInt32
    public var nlink: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var size: UInt64
    /// 512-byte units allocated on the data device.
    public var blocks: UInt64
    public var rdev: UInt64
    public var atime: Timestamp
    public var mtime: Timestamp
    public var ctime: Timestamp
    public var btime: Timestamp
    public var flags: UInt32
    /// Part of a read-only snapshot: the file system refuses every change (EROFS).
    public var readOnly: Bool = false

    public var type: FileType { FileType(mode: mode) }
    public var permissions: UInt32 { mode & 0o7777 }
}

/// A requested change of attributes (setattr); nil fields stay as they are.
public struct AttributeChanges: Sendable {
    public var mode: UInt32?       // permission bits only; the type never changes
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: Timestamp?
    public var mtime: Timestamp?
    public var ctime: Timestamp?
    public var flags: UInt32?

    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil,
                atime: Timestamp? = nil, mtime: Timestamp? = nil, ctime: Timestamp? = nil, flags: UInt32? = nil) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.size = size
        self.atime = atime; self.mtime = mtime; self.ctime = ctime; self.flags = flags
    }
}

/// Who creates a new inode and with what.
public struct NewInode: Sendable {
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64

    public init(mode: UInt32, uid: UInt32 = 0, gid: UInt32 = 0, rdev: UInt64 = 0) {
        self.mode = mode; self.uid = uid; self.gid = gid; self.rdev = rdev
    }
}

public struct RenameFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// RENAME_NOREPLACE: fail with EEXIST if the target exists.
    public static let noReplace = RenameFlags(rawValue: 1)
    /// RENAME_EXCHANGE: swap the two entries atomically.
    public static let exchange = RenameFlags(rawValue: 2)
    /// RENAME_WHITEOUT: leave a whiteout behind (for overlayfs); not supported.
    public static let whiteout = RenameFlags(rawValue: 4)
    /// The flags pmfs implements; others are refused with EINVAL.
    public static let supported: RenameFlags = [.noReplace, .exchange]
}

public struct DirectoryEntry: Hashable, Sendable {
    public var name: [UInt8]
    public var ino: UInt64
    public var type: FileType
    /// The cookie to pass back to continue after this entry.
    public var nextCookie: UInt64
}

public enum XattrSetMode: Sendable {
    case any, create, replace
}

/// One piece of a file's block range: mapped to the data device, or a hole.
public struct ExtentSegment: Hashable, Sendable {
    public var fileBlock: UInt64
    public var length: UInt64
    /// nil for a hole.
    public var deviceBlock: UInt64?
    /// Allocated by fallocate but never written: reads as zeros.
    public var unwritten: Bool
    /// The device blocks have other owners (a clone): a write must not change
    /// them in place but go to new blocks (copy-on-write).
    public var shared: Bool = false
}

public struct FileSystemStatistics: Sendable {
    public var blockSize: UInt32
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var totalInodes: UInt64
    public var freeInodes: UInt64
    public var nameMax: UInt32
    public var poolBytes: UInt64
    /// Usable bytes of the pool's live objects (inodes, directories, extent
    /// maps, xattrs...), as libpmemobj counts them; headers and free-space
    /// fragments are not in it, so the pool is full before this reaches its size.
    public var poolObjectBytes: UInt64
}

/// Counts read back from the pool (link, entry, extent counts) are input: a
/// damaged one at 0 or at its maximum must not trap the operation that steps
/// it, and every one after; it stays pinned at the bound for fsck to mend.
extension FixedWidthInteger {
    mutating func decrementSaturating() { if self > .min { self -= 1 } }
    mutating func incrementSaturating() { if self < .max { self += 1 } }
    /// `self + n`, or `.max` past it (the end of a range that may run off the end).
    package func addingClamped(_ n: Self) -> Self where Self: UnsignedInteger {
        let (sum, overflow) = addingReportingOverflow(n)
        return overflow ? .max : sum
    }
    /// `self * n`, or `.max` past it.
    package func multipliedClamped(_ n: Self) -> Self where Self: UnsignedInteger {
        let (product, overflow) = multipliedReportingOverflow(by: n)
        return overflow ? .max : product
    }
    mutating func addSaturating(_ n: Self) where Self: UnsignedInteger {
        let (sum, overflow) = addingReportingOverflow(n)
        self = overflow ? .max : sum
    }
    mutating func subtractSaturating(_ n: Self) where Self: UnsignedInteger {
        self = n > self ? 0 : self - n
    }
}
