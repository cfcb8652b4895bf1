import SystemPackage

/// Failures of the pool as a whole: opening, formatting, damage found while reading.
/// Per-operation results use `Errno`, as POSIX names them.
public enum PoolError: Error, CustomStringConvertible, Equatable {
    case cannotCreate(path: String, reason: String)
    case cannotOpen(path: String, reason: String)
    case notPMFS(path: String)
    case unsupportedVersion(found: UInt32, supported: UInt32)
    case unknownFeatures(UInt64)
    case alreadyFormatted(path: String)
    case dataDeviceMismatch(String)
    case dataDevice(path: String, reason: String)
    case corrupt(String)
    /// Damage met while serving one inode: EIO for requests on it, the rest serves on.
    case damagedInode(UInt64, String)
    /// rocompat bits this version does not know: reading is safe, writing is not.
    case unknownWriteFeatures(UInt64)
    case invalidArgument(String)

    public var description: String {
        switch self {
        case .cannotCreate(let path, let reason): return "cannot create pool \(path): \(reason)"
        case .cannotOpen(let path, let reason): return "cannot open pool \(path): \(reason)"
        case .notPMFS(let path): return "\(path) is not a pmfs metadata pool"
        case .unsupportedVersion(let found, let supported):
            return "pool format version \(found) is newer than this pmfs understands (\(supported))"
        case .unknownFeatures(let bits):
            return "pool uses incompatible features this pmfs does not know (0x\(String(bits, radix: 16)))"
        case .unknownWriteFeatures(let bits):
            return "pool uses features this pmfs cannot write without breaking them (rocompat 0x\(String(bits, radix: 16))); inspect it read-only or serve it with a newer pmfs"
        case .alreadyFormatted(let path): return "\(path) already holds a pmfs file system (use --force to overwrite)"
        case .dataDeviceMismatch(let why): return "wrong data device: \(why)"
        case .dataDevice(let path, let reason): return "data device \(path): \(reason)"
        case .corrupt(let what): return "pool is damaged: \(what) (run fsck.pmfs)"
        case .damagedInode(let ino, let what): return "inode \(ino) is damaged: \(what) (run fsck.pmfs)"
        case .invalidArgument(let what): return what
        }
    }
}

extension Errno {
    /// The errno of a failed PMDK call, with ENOMEM (allocator out of space) as ENOSPC.
    static func fromPMDK(_ code: Int32) -> Errno {
        if code == ENOMEM_ || code == 0 { return .noSpace }
        return Errno(rawValue: code)
    }
}

let ENOMEM_: Int32 = 12
