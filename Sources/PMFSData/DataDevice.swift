import CoreMetrics
import CURing
import Dispatch
import Glibc
import PMFSConcurrency
import Synchronization
import Logging

/// The data device: a block device or a preallocated file, opened with O_DIRECT
/// where the file system allows it (tmpfs does not: then buffered, and said so).
public final class DataDevice: @unchecked Sendable {
    public let path: String
    public let fd: Int32
    public let size: UInt64
    public let direct: Bool
    public let engine: BlockIOEngine
    /// Concurrent fsyncs share device flushes through this.
    public let groupFlush = GroupFlush()
    private let counters: DeviceCounters
    /// Device flushes done, counted with the metrics registry on or off (pmfsctl stats).
    private let flushCount = Atomic<UInt64>(0)
    public var flushesDone: UInt64 { flushCount.load(ordering: .relaxed) }

    public convenience init(path: String, engine choice: IOEngineChoice = .auto, logger: Logger = Logger(label: "pmfs.data"),
                            metrics: MetricsFactory = NOOPMetricsHandler.instance) throws {
        try self.init(path: path, logger: logger, metrics: metrics) { fd in try Self.engine(choice, fd: fd, logger: logger) }
    }

    /// The device served by the engine `makeEngine` makes for its descriptor
    /// (tests give one that fails on purpose).
    package init(path: String, logger: Logger = Logger(label: "pmfs.data"), metrics: MetricsFactory = NOOPMetricsHandler.instance,
                 makeEngine: (Int32) throws -> BlockIOEngine) throws {
        counters = DeviceCounters(metrics)
        self.path = path
        var fd = Glibc.open(path, O_RDWR | O_CLOEXEC | curing_O_DIRECT)
        var direct = true
        if fd < 0 && errno == EINVAL {
            // The file system under the data file has no O_DIRECT (tmpfs).
            fd = Glibc.open(path, O_RDWR | O_CLOEXEC)
            direct = false
            if fd >= 0 { logger.notice("data device \(path) does not support O_DIRECT; using buffered I/O") }
        }
        guard fd >= 0 else { throw DataDeviceError.open(path: path, errno: IOErrno(errno)) }
        self.fd = fd
        self.direct = direct
        var st = stat()
        fstat(fd, &st)
        if st.st_mode & S_IFMT == S_IFBLK {
            size = UInt64(lseek(fd, 0, SEEK_END))
        } else {
            size = UInt64(st.st_size)
        }
        do { engine = try makeEngine(fd) } catch {
            Glibc.close(fd)
            throw error
        }
        logger.info("data device \(path): \(size) bytes, \(direct ? "O_DIRECT" : "buffered"), engine \(engine.name)")
    }

    private static func engine(_ choice: IOEngineChoice, fd: Int32, logger: Logger) throws -> BlockIOEngine {
        switch choice {
        case .threads:
            return ThreadPoolEngine(fd: fd)
        case .iouring:
            return try IOUringEngine(fd: fd)
        case .inline:
            return InlineEngine(fd: fd)
        case .auto:
            if MemoryBackedMedia.holds(fd) { return InlineEngine(fd: fd) }
            do {
                return try IOUringEngine(fd: fd)
            } catch {
                logger.warning("\(error); falling back to the thread-pool engine")
                return ThreadPoolEngine(fd: fd)
            }
        }
    }

    public func close() {
        engine.close()
        Glibc.close(fd)
    }
}

extension DataDevice {
    /// Bytes at the start of the device that hold its header (block 0) and are
    /// never file data.
    public static let headerBytes: UInt64 = 4096

    /// Refuses a batch with any transfer outside the file-data area: before the
    /// end of the header or past the end of the device. Offsets come from extent
    /// maps read from the pool; the engine checks them again here, where they
    /// become device addresses, so no damage can write over the header.
    public func checkRange(_ requests: [BlockIORequest]) throws {
        for r in requests {
            guard r.offset >= Self.headerBytes, r.offset <= size, UInt64(r.length) <= size - r.offset else {
                throw DataDeviceError.outOfRange(offset: r.offset, length: r.length, deviceSize: size)
            }
        }
    }

    /// Performs `requests` once they are known to lie in the data area.
    public func perform(_ requests: [BlockIORequest]) throws {
        try checkRange(requests)
        let start = counters.timed ? DispatchTime.now().uptimeNanoseconds : 0
        try engine.perform(requests)
        counters.count(requests, startedAt: start)
    }

    /// Makes every completed write durable, sharing the flush with concurrent callers.
    public func flushShared() throws {
        try groupFlush.flush {
            let start = monotonicNanoseconds()
            try engine.flush()
            flushCount.add(1, ordering: .relaxed)
            counters.flushes.increment()
            counters.flushDuration.recordNanoseconds(Int64(truncatingIfNeeded: monotonicNanoseconds() &- start))
        }
    }

    /// The writes, then a (shared) flush: fsync's path.
    public func writeDurably(_ requests: [BlockIORequest]) throws {
        try perform(requests)
        try flushShared()
    }
}

/// The fallback engine: pread/pwrite, a batch spread over a few threads.
public final class ThreadPoolEngine: BlockIOEngine, @unchecked Sendable {
    public let name = "threads"
    private let fd: Int32

    public init(fd: Int32) { self.fd = fd }

    public func perform(_ requests: [BlockIORequest]) throws {
        if requests.count == 1 { try Self.run(fd, requests[0]); return }
        let firstError = Mutex<DataDeviceError?>(nil)
        let fd = fd
        DispatchQueue.concurrentPerform(iterations: min(requests.count, 8)) { worker in
            for i in stride(from: worker, to: requests.count, by: min(requests.count, 8)) {
                do { try Self.run(fd, requests[i]) } catch {
                    firstError.withLock { if $0 == nil { $0 = error as? DataDeviceError } }
                }
            }
        }
        if let e = firstError.withLock({ $0 }) { throw e }
    }

    /// Performs one request with preadv/pwritev, resuming after short transfers;
    /// a read past the end of the device reads zeros. The iovecs are passed
    /// where they lie; only a short transfer (rare) copies the rest of them.
    static func run(_ fd: Int32, _ r: BlockIORequest) throws {
        var rest = r
        while true {
            let n = transfer(fd, rest)
            if n < 0 {
                if errno == EINTR { continue }
                throw DataDeviceError.io("\(r.kind) \(r.length) bytes at \(r.offset)", errno: IOErrno(errno))
            }
            if n == rest.length { return }
            if n == 0 {
                if r.kind == .read {
                    for s in rest.segments { memset(s.iov_base, 0, s.iov_len) }
                    return
                }
                throw DataDeviceError.io("short write at \(r.offset)", errno: IOErrno(ENOSPC))
            }
            rest = rest.dropping(n)
        }
    }

    /// One preadv or pwritev of all of `r`'s segments: bytes moved, or -1 (errno set).
    private static func transfer(_ fd: Int32, _ r: BlockIORequest) -> Int {
        r.segments.withUnsafeBufferPointer { iov in
            switch r.kind {
            case .read: return preadv(fd, iov.baseAddress, Int32(iov.count), off_t(r.offset))
            case .write: return pwritev(fd, iov.baseAddress, Int32(iov.count), off_t(r.offset))
            }
        }
    }

    public func flush() throws {
        guard fdatasync(fd) == 0 else { throw DataDeviceError.io("flush", errno: IOErrno(errno)) }
    }

    public func close() {}
}

/// The device's I/O as metrics: requests and bytes by op, batch times, and flushes.
struct DeviceCounters: Sendable {
    let reads, writes, readBytes, writtenBytes, flushes: CoreMetrics.Counter
    /// How long each device flush took (one per group of concurrent fsyncs).
    let flushDuration: CoreMetrics.Timer
    /// How long each batch of transfers took, submitted to last completion,
    /// by its op (a batch is all reads or all writes).
    let readBatchDuration, writeBatchDuration: CoreMetrics.Timer
    /// False with no metrics: then no batch reads the clock.
    let timed: Bool

    init(_ factory: MetricsFactory) {
        func counter(_ name: String, _ op: String) -> CoreMetrics.Counter {
            CoreMetrics.Counter(label: name, dimensions: [("op", op)], factory: factory)
        }
        reads = counter("pmfs_device_requests_total", "read")
        writes = counter("pmfs_device_requests_total", "write")
        readBytes = counter("pmfs_device_bytes_total", "read")
        writtenBytes = counter("pmfs_device_bytes_total", "write")
        flushes = CoreMetrics.Counter(label: "pmfs_device_flushes_total", factory: factory)
        flushDuration = CoreMetrics.Timer(label: "pmfs_device_flush_duration_seconds", factory: factory)
        readBatchDuration = CoreMetrics.Timer(label: "pmfs_device_batch_duration_seconds", dimensions: [("op", "read")], factory: factory)
        writeBatchDuration = CoreMetrics.Timer(label: "pmfs_device_batch_duration_seconds", dimensions: [("op", "write")], factory: factory)
        timed = !(factory is NOOPMetricsHandler)
    }

    /// A batch that completed, begun at `start` (uptime ns; 0 when not timed).
    func count(_ requests: [BlockIORequest], startedAt start: UInt64) {
        if timed, let first = requests.first {
            let elapsed = Int64(truncatingIfNeeded: DispatchTime.now().uptimeNanoseconds &- start)
            (first.kind == .read ? readBatchDuration : writeBatchDuration).recordNanoseconds(elapsed)
        }
        var n = (reads: 0, writes: 0, readBytes: 0, writtenBytes: 0)
        for r in requests {
            switch r.kind {
            case .read: n.reads += 1; n.readBytes += r.length
            case .write: n.writes += 1; n.writtenBytes += r.length
            }
        }
        if n.reads > 0 { reads.increment(by: n.reads); readBytes.increment(by: n.readBytes) }
        if n.writes > 0 { writes.increment(by: n.writes); writtenBytes.increment(by: n.writtenBytes) }
    }
}
