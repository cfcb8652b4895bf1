import Glibc

/// One read or write of the data device: the buffers in `segments`, in order,
/// to or from `offset`. Buffers are 4 KiB aligned when the device uses O_DIRECT.
/// Several segments make one vectored transfer (adjacent cache pages written
/// as one large device write).
public struct BlockIORequest: @unchecked Sendable {
    public enum Kind: Sendable { case read, write }
    public var kind: Kind
    public var segments: [iovec]
    public var offset: UInt64
    public var length: Int { segments.reduce(0) { $0 + $1.iov_len } }

    public init(kind: Kind, buffer: UnsafeMutableRawPointer, length: Int, offset: UInt64) {
        self.init(kind: kind, segments: [iovec(iov_base: buffer, iov_len: length)], offset: offset)
    }

    public init(kind: Kind, segments: [iovec], offset: UInt64) {
        self.kind = kind
        self.segments = segments
        self.offset = offset
    }
}

/// How the data tier moves blocks: a batch of requests submitted together and
/// waited for together, and a device flush. io_uring is the production engine
/// for devices; memory-backed media get the inline engine; the thread engine
/// is the fallback where io_uring is unavailable. An SPDK NVMe driver would be
/// another.
public protocol BlockIOEngine: AnyObject, Sendable {
    var name: String { get }
    /// Performs every request; throws the first error (short transfers are errors).
    func perform(_ requests: [BlockIORequest]) throws
    /// Makes every completed write durable (fdatasync / NVMe flush).
    func flush() throws
    func close()
}

/// `auto`: inline on memory-backed media, else io_uring, else threads.
public enum IOEngineChoice: String, Sendable, CaseIterable {
    case auto, iouring = "io_uring", threads, inline
}

public enum DataDeviceError: Error, CustomStringConvertible {
    case open(path: String, errno: IOErrno)
    case io(String, errno: IOErrno)
    case ioUringUnavailable(IOErrno)
    case outOfRange(offset: UInt64, length: Int, deviceSize: UInt64)

    public var description: String {
        switch self {
        case .open(let path, let e): return "cannot open data device \(path): \(e)"
        case .io(let what, let e): return "data device I/O failed (\(what)): \(e)"
        case .ioUringUnavailable(let e): return "io_uring is unavailable on this kernel (\(e))"
        case .outOfRange(let offset, let length, let deviceSize):
            return "refused a transfer of \(length) bytes at \(offset), outside the data area of the \(deviceSize)-byte device (damaged extent? run fsck.pmfs)"
        }
    }
}

/// An errno value from the data path, printed as strerror does.
public struct IOErrno: Error, Equatable, Sendable, CustomStringConvertible {
    public let code: Int32
    public init(_ code: Int32) { self.code = code }
    public var description: String { String(cString: strerror(code)) }
}

/// Memory aligned for O_DIRECT, freed on deinit.
public final class AlignedBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer
    public let count: Int

    /// Whether the memory came from mmap (large buffers) rather than malloc.
    private let mapped: Bool
    /// From this size on, the buffer is mapped: its pages are zero and take
    /// memory only once touched (a cache of 256 MiB costs nothing until used).
    static let mappedFrom = 1 << 20

    public init(count: Int, alignment: Int = 4096) {
        let rounded = max((count + alignment - 1) / alignment * alignment, alignment)
        self.count = rounded
        if rounded >= Self.mappedFrom && alignment <= 4096,
           let m = mmap(nil, rounded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), m != MAP_FAILED {
            pointer = m
            mapped = true
            return
        }
        var p: UnsafeMutableRawPointer? = nil
        precondition(posix_memalign(&p, alignment, rounded) == 0, "out of memory")
        pointer = p!
        mapped = false
        memset(pointer, 0, rounded)
    }

    deinit { if mapped { munmap(pointer, count) } else { free(pointer) } }
}
