import CURing
import Glibc
import Synchronization

/// The io_uring engine. Each batch takes a ring of its own from a small pool,
/// queues every request, submits them with one system call and reaps the
/// completions from the shared completion ring without further calls, so
/// concurrent batches never see each other's completions. The device file is
/// registered with each ring (fixed file).
public final class IOUringEngine: BlockIOEngine, @unchecked Sendable {
    public let name = "io_uring"
    private let fd: Int32
    private let idle = Mutex<[Ring]>([])
    private static let depth: UInt32 = 128

    public init(fd: Int32) throws {
        self.fd = fd
        // Prove io_uring works here (it may be disabled by sysctl or seccomp).
        let ring = try makeRing()
        idle.withLock { $0.append(Ring(ring)) }
    }

    private func makeRing() throws -> UnsafeMutablePointer<io_uring> {
        let ring = UnsafeMutablePointer<io_uring>.allocate(capacity: 1)
        // Only READV and WRITEV, only on the device (registered file 0).
        let rc = curing_init_data_ring(ring, Self.depth, fd)
        guard rc == 0 else {
            ring.deallocate()
            throw DataDeviceError.ioUringUnavailable(IOErrno(-rc))
        }
        return ring
    }

    private func withRing<T>(_ body: (UnsafeMutablePointer<io_uring>) throws -> T) throws -> T {
        let ring = try idle.withLock { $0.popLast() } ?? Ring(makeRing())
        defer { idle.withLock { $0.append(ring) } }
        return try body(ring.pointer)
    }

    public func perform(_ requests: [BlockIORequest]) throws {
        guard !requests.isEmpty else { return }
        // One transfer gains nothing from a ring (queue depth 1): the system
        // call itself is cheaper than a submission and a completion.
        if requests.count == 1 { return try ThreadPoolEngine.run(fd, requests[0]) }
        try withRing { ring in
            var next = 0, pending = 0
            var shortOnes: [Int: Int] = [:]   // request index -> bytes done
            var firstError: IOErrno? = nil
            // iovec arrays must stay put until their completions arrive.
            let vectors = requests.map { r -> UnsafeMutablePointer<iovec> in
                let p = UnsafeMutablePointer<iovec>.allocate(capacity: r.segments.count)
                p.initialize(from: r.segments, count: r.segments.count)
                return p
            }
            defer { for v in vectors { v.deallocate() } }
            var tags = [UInt64](repeating: 0, count: Int(Self.depth))
            var results = [Int32](repeating: 0, count: Int(Self.depth))
            while next < requests.count || pending > 0 {
                // Fill the submission queue.
                while next < requests.count && pending < Int(Self.depth) {
                    let r = requests[next]
                    let rc: Int32
                    rc = curing_queue_vectored(ring, r.kind == .write ? 1 : 0, fd, 1, vectors[next], UInt32(r.segments.count),
                                               r.offset, UInt64(next))
                    if rc != 0 { break }
                    next += 1; pending += 1
                }
                let rc = curing_submit_and_wait(ring, 1)
                if rc < 0 && rc != -EINTR { throw DataDeviceError.io("io_uring submit", errno: IOErrno(-rc)) }
                let n = Int(curing_reap(ring, &tags, &results, Self.depth))
                pending -= n
                for i in 0..<n {
                    let index = Int(tags[i]), res = results[i]
                    if res < 0 {
                        if firstError == nil { firstError = IOErrno(-res) }
                    } else if Int(res) < requests[index].length {
                        shortOnes[index] = Int(res)
                    }
                }
            }
            if let firstError { throw DataDeviceError.io("io_uring", errno: firstError) }
            // Finish short transfers synchronously (rare: end of a file, signals).
            for (index, done) in shortOnes {
                try ThreadPoolEngine.run(fd, requests[index].dropping(done))
            }
        }
    }

    /// fdatasync on the calling thread: io_uring would hand an fsync to one of
    /// its worker threads anyway (it cannot be done without blocking), which
    /// costs a wake-up and a thread switch on every fsync.
    public func flush() throws {
        guard fdatasync(fd) == 0 else { throw DataDeviceError.io("flush", errno: IOErrno(errno)) }
    }

    public func close() {
        idle.withLock { rings in
            for r in rings { curing_exit(r.pointer); r.pointer.deallocate() }
            rings.removeAll()
        }
    }
}

/// A ring owned by one batch at a time (the pool hands it over under its lock).
private final class Ring: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<io_uring>
    init(_ pointer: UnsafeMutablePointer<io_uring>) { self.pointer = pointer }
}

extension BlockIORequest {
    /// The rest of the request after its first `bytes` bytes.
    func dropping(_ bytes: Int) -> BlockIORequest {
        var r = self
        var left = bytes
        while left > 0, let first = r.segments.first {
            if left >= first.iov_len { left -= first.iov_len; r.segments.removeFirst() }
            else { r.segments[0].iov_base += left; r.segments[0].iov_len -= left; left = 0 }
        }
        r.offset += UInt64(bytes)
        return r
    }
}
