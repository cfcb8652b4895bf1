import CFUSE
import CoreMetrics
import Glibc
import PMFSConcurrency

/// What one FUSE session (the host mount, or one guest's socket) counts per
/// request, through swift-metrics. Every handle is made here, once: the
/// request path indexes arrays by opcode and class, and so takes no lock,
/// looks nothing up by name and allocates nothing.
public final class FUSERequestMetrics: Sendable {
    /// The `session` label: a guest's socket path (or descriptor), or `host`.
    public let session: String
    /// By opcode slot (`slot(_:)`): opcodes 0..<64, with every unnamed one sharing "other".
    private let requests: [CoreMetrics.Counter]
    private let errors: [CoreMetrics.Counter]
    /// By errno (0..<`errnoSlots`; unnamed ones share "other").
    private let errorsByErrno: [CoreMetrics.Counter]
    /// By `LatencyClass`.
    private let latency: [CoreMetrics.Timer]
    let readBytes: CoreMetrics.Counter
    let writtenBytes: CoreMetrics.Counter

    public static let requestsName = "pmfs_fuse_requests_total"
    public static let errorsName = "pmfs_fuse_request_errors_total"
    public static let errnoName = "pmfs_fuse_errors_by_errno_total"
    public static let latencyName = "pmfs_fuse_request_duration_seconds"
    public static let readBytesName = "pmfs_fuse_read_bytes_total"
    public static let writtenBytesName = "pmfs_fuse_written_bytes_total"

    public init(session: String, factory: MetricsFactory) {
        self.session = session
        func counters(_ name: String) -> [CoreMetrics.Counter] {
            let other = CoreMetrics.Counter(label: name, dimensions: [("session", session), ("opcode", "other")], factory: factory)
            return (0..<Self.slots).map { op in
                guard let opName = Self.opcodeNames[UInt32(op)] else { return other }
                return CoreMetrics.Counter(label: name, dimensions: [("session", session), ("opcode", opName)], factory: factory)
            }
        }
        requests = counters(Self.requestsName)
        errors = counters(Self.errorsName)
        let otherErrno = CoreMetrics.Counter(label: Self.errnoName, dimensions: [("session", session), ("errno", "other")], factory: factory)
        errorsByErrno = (0..<Self.errnoSlots).map { e in
            guard let name = Self.errnoNames[Int32(e)] else { return otherErrno }
            return CoreMetrics.Counter(label: Self.errnoName, dimensions: [("session", session), ("errno", name)], factory: factory)
        }
        latency = LatencyClass.allCases.map {
            CoreMetrics.Timer(label: Self.latencyName, dimensions: [("session", session), ("class", $0.label)], factory: factory)
        }
        readBytes = CoreMetrics.Counter(label: Self.readBytesName, dimensions: [("session", session)], factory: factory)
        writtenBytes = CoreMetrics.Counter(label: Self.writtenBytesName, dimensions: [("session", session)], factory: factory)
    }

    static let slots = 64

    @inline(__always)
    static func slot(_ opcode: UInt32) -> Int { opcode < UInt32(slots) ? Int(opcode) : 0 }

    /// One request taken, `nanoseconds` after it arrived at the engine.
    @inline(__always)
    /// One request answered; `start` is when it was taken (`monotonicNanoseconds()`).
    func finished(_ opcode: UInt32, since start: UInt64) {
        requests[Self.slot(opcode)].increment()
        if let c = LatencyClass(opcode) { latency[c.rawValue].recordNanoseconds(Int64(clamping: nanosecondsSince(start))) }
    }

    @inline(__always)
    func failed(_ opcode: UInt32, errno: Int32) {
        errors[Self.slot(opcode)].increment()
        errorsByErrno[errno > 0 && errno < Int32(Self.errnoSlots) ? Int(errno) : 0].increment()
    }

    static let errnoSlots = 134

    /// The errnos a FUSE server answers with, by their C names; any other
    /// counts as "other" (one counter each, made at start).
    public static let errnoNames: [Int32: String] = {
        let known: [(Int32, String)] = [
            (EPERM, "EPERM"), (ENOENT, "ENOENT"), (EINTR, "EINTR"), (EIO, "EIO"), (ENXIO, "ENXIO"), (E2BIG, "E2BIG"),
            (EBADF, "EBADF"), (EAGAIN, "EAGAIN"), (ENOMEM, "ENOMEM"), (EACCES, "EACCES"), (EEXIST, "EEXIST"),
            (EXDEV, "EXDEV"), (ENODEV, "ENODEV"), (ENOTDIR, "ENOTDIR"), (EISDIR, "EISDIR"), (EINVAL, "EINVAL"),
            (EMFILE, "EMFILE"), (EFBIG, "EFBIG"), (ENOSPC, "ENOSPC"), (ESPIPE, "ESPIPE"), (EROFS, "EROFS"),
            (EMLINK, "EMLINK"), (ERANGE, "ERANGE"), (ENAMETOOLONG, "ENAMETOOLONG"), (ENOLCK, "ENOLCK"), (ENOSYS, "ENOSYS"),
            (ENOTEMPTY, "ENOTEMPTY"), (ELOOP, "ELOOP"), (ENODATA, "ENODATA"), (EOVERFLOW, "EOVERFLOW"), (EPROTO, "EPROTO"),
            (EOPNOTSUPP, "EOPNOTSUPP"), (EDEADLK, "EDEADLK"), (ETXTBSY, "ETXTBSY"), (ECANCELED, "ECANCELED"),
        ]
        return Dictionary(uniqueKeysWithValues: known)
    }()

    /// The label values of opcodes (lowercase, without FUSE_), for a known opcode.
    public static let opcodeNames: [UInt32: String] = {
        let known: [(fuse_opcode, String)] = [
            (FUSE_LOOKUP, "lookup"), (FUSE_FORGET, "forget"), (FUSE_GETATTR, "getattr"), (FUSE_SETATTR, "setattr"),
            (FUSE_READLINK, "readlink"), (FUSE_SYMLINK, "symlink"), (FUSE_MKNOD, "mknod"), (FUSE_MKDIR, "mkdir"),
            (FUSE_UNLINK, "unlink"), (FUSE_RMDIR, "rmdir"), (FUSE_RENAME, "rename"), (FUSE_LINK, "link"),
            (FUSE_OPEN, "open"), (FUSE_READ, "read"), (FUSE_WRITE, "write"), (FUSE_STATFS, "statfs"),
            (FUSE_RELEASE, "release"), (FUSE_FSYNC, "fsync"), (FUSE_SETXATTR, "setxattr"), (FUSE_GETXATTR, "getxattr"),
            (FUSE_LISTXATTR, "listxattr"), (FUSE_REMOVEXATTR, "removexattr"), (FUSE_FLUSH, "flush"), (FUSE_INIT, "init"),
            (FUSE_OPENDIR, "opendir"), (FUSE_READDIR, "readdir"), (FUSE_RELEASEDIR, "releasedir"), (FUSE_FSYNCDIR, "fsyncdir"),
            (FUSE_GETLK, "getlk"), (FUSE_SETLK, "setlk"), (FUSE_SETLKW, "setlkw"), (FUSE_ACCESS, "access"),
            (FUSE_CREATE, "create"), (FUSE_INTERRUPT, "interrupt"), (FUSE_BMAP, "bmap"), (FUSE_DESTROY, "destroy"),
            (FUSE_IOCTL, "ioctl"), (FUSE_POLL, "poll"), (FUSE_BATCH_FORGET, "batch_forget"), (FUSE_FALLOCATE, "fallocate"),
            (FUSE_READDIRPLUS, "readdirplus"), (FUSE_RENAME2, "rename2"), (FUSE_LSEEK, "lseek"),
            (FUSE_COPY_FILE_RANGE, "copy_file_range"), (FUSE_SETUPMAPPING, "setupmapping"),
            (FUSE_REMOVEMAPPING, "removemapping"), (FUSE_SYNCFS, "syncfs"), (FUSE_TMPFILE, "tmpfile"),
        ]
        return Dictionary(uniqueKeysWithValues: known.map { ($0.0.rawValue, $0.1) })
    }()
}

/// The latency histogram's classes. FORGET, BATCH_FORGET and INTERRUPT have
/// no reply and take no time worth a bucket: they have no class.
public enum LatencyClass: Int, CaseIterable, Sendable {
    case read, write, fsync, metadata

    public var label: String {
        switch self {
        case .read: "read"
        case .write: "write"
        case .fsync: "fsync"
        case .metadata: "metadata"
        }
    }

    @inline(__always)
    init?(_ opcode: UInt32) {
        switch opcode {
        case FUSE_READ.rawValue: self = .read
        case FUSE_WRITE.rawValue: self = .write
        case FUSE_FSYNC.rawValue: self = .fsync
        case FUSE_FORGET.rawValue, FUSE_BATCH_FORGET.rawValue, FUSE_INTERRUPT.rawValue: return nil
        default: self = .metadata
        }
    }
}
