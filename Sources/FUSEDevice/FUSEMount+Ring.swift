import CFUSE
import CURing
import FUSEProtocol
import Glibc
import Logging
import PMFSConcurrency

extension FUSEServer {
    /// FUSE_OVER_IO_URING, to add to what a server offers when the host mount
    /// may take its requests from io_uring queues.
    public static let overIOURing = cfuse_over_io_uring
}

/// The fuse module's `enable_uring` parameter (Linux 6.14+): the kernel offers
/// FUSE over io_uring at INIT only while it is Y.
public enum FUSERingParameter {
    public static let path = "/sys/module/fuse/parameters/enable_uring"

    /// true/false, or nil if this kernel has no such parameter.
    public static func isEnabled() -> Bool? {
        guard let f = fopen(path, "r") else { return nil }
        defer { fclose(f) }
        var c: Int32 = 0
        c = fgetc(f)
        return c == Int32(UInt8(ascii: "Y")) || c == Int32(UInt8(ascii: "1"))
    }

    /// Writes Y (root only); returns 0 or the errno.
    public static func enable() -> Int32 {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        return write(fd, "Y", 1) == 1 ? 0 : errno
    }
}

extension FUSEMount {
    static let maxQueues = 1024

    /// How many queues the kernel wants: one per possible CPU
    /// (/sys/devices/system/cpu/possible, e.g. "0-3" or "0,2-5").
    static func possibleCPUs() -> Int {
        guard let f = fopen("/sys/devices/system/cpu/possible", "r") else { return Int(curing_possible_cpus()) }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 256)
        guard fgets(&line, 256, f) != nil else { return Int(curing_possible_cpus()) }
        let text = String(decoding: line.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var count = 0
        for range in text.trimmingCharacters(in: "\n").split(separator: ",") {
            let ends = range.split(separator: "-").compactMap { Int($0) }
            if ends.count == 2, ends[1] >= ends[0], ends[1] < Self.maxQueues { count += ends[1] - ends[0] + 1 } else if ends.count == 1 { count += 1 }
        }
        // A thread and 8 MiB of buffers per queue: never more than CPU_SETSIZE.
        return (1...Self.maxQueues).contains(count) ? count : max(1, min(Int(curing_possible_cpus()), Self.maxQueues))
    }

    /// Answers the kernel's INIT on this thread (it is queued by mount(2)),
    /// then, unless `choice` is `.device`, starts FUSE over io_uring if both
    /// sides agreed on it. Returns a line saying which transport serves the
    /// mount; throws if `.uring` was asked for and cannot be had. `serve`
    /// then runs the /dev/fuse readers (FORGET, INTERRUPT; everything if the
    /// rings are off) and waits for the end.
    @discardableResult
    /// `blockingThreads` serve ring requests that may block (fsync, large I/O)
    /// while other requests wait behind them on the same CPU's queue; each
    /// queue's thread polls up to `pollMicroseconds` for the next request (see
    /// `PollWindow`).
    public func negotiate(_ choice: FUSETransportChoice, queueDepth: Int = 8, blockingThreads: Int = 4,
                          pollMicroseconds: Int = 0) throws -> String {
        // Once INIT agrees on io_uring, the kernel holds every request until
        // all queues are registered: agree only if rings can be made here.
        if choice == .device {
            server.withhold(FUSEServer.overIOURing)
        } else if let why = ringsUnavailable() {
            if choice == .uring, server.offered & FUSEServer.overIOURing != 0 { throw FUSEMountError.ring(why) }
            server.withhold(FUSEServer.overIOURing)
        }
        try answerInit()
        let agreed = server.negotiated & FUSEServer.overIOURing != 0
        if choice == .device { return "transport /dev/fuse (--fuse-transport device)" }
        guard agreed else {
            let why = server.offered & FUSEServer.overIOURing == 0 ? "not asked for" : "the kernel did not offer it at INIT"
            if choice == .uring { throw FUSEMountError.ring(why) }
            return "transport /dev/fuse (FUSE over io_uring: \(why))"
        }
        let count = Self.possibleCPUs()
        do {
            try startQueues(count: count, depth: max(1, min(queueDepth, 64)), blockingThreads: blockingThreads,
                            pollMicroseconds: pollMicroseconds)
        } catch {
            if choice == .uring { throw error }
            return "transport /dev/fuse (\(error))"
        }
        return "transport io_uring (\(count) queue(s) of \(queueDepth) entries; /dev/fuse for FORGET and INTERRUPT)"
    }

    /// Why this process cannot make a FUSE ring (io_uring off, no 128-byte
    /// SQEs, no restrictions), or nil if it can: a test ring made as a queue
    /// makes its own, and dropped.
    func ringsUnavailable() -> String? {
        let wake = curing_eventfd()
        guard wake >= 0 else { return "eventfd: \(String(cString: strerror(errno)))" }
        defer { close(wake) }
        var ring = io_uring()
        let rc = curing_init_fuse_ring(&ring, 8, fd, wake)
        guard rc == 0 else { return "cannot make a restricted io_uring with 128-byte entries: \(String(cString: strerror(-rc)))" }
        curing_exit(&ring)
        return nil
    }

    /// Reads and answers requests from /dev/fuse until INIT has been answered.
    private func answerInit() throws {
        let size = max(server.maxRequestSize, 1 << 17)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 4096)
        defer { buffer.deallocate() }
        while !server.initialized {
            let n = read(fd, buffer, size)
            if n < 0 {
                if errno == EINTR || errno == EAGAIN || errno == ENOENT { continue }
                throw FUSEMountError.ring("reading INIT from /dev/fuse: \(String(cString: strerror(errno)))")
            }
            counters.deviceRequests.add(1, ordering: .relaxed)
            let fd = self.fd
            server.handle(UnsafeRawBufferPointer(start: buffer, count: n)) { reply in
                reply.withUnsafeBytes { Self.send(fd, $0) }
            }
        }
    }

    /// One queue thread per possible CPU; waits until each registered its
    /// entries (the kernel switches to the rings once all have).
    private func startQueues(count: Int, depth: Int, blockingThreads: Int, pollMicroseconds: Int) throws {
        // The kernel wants room for the largest request and reply it may send.
        let payload = max(8192, Int(server.maxWrite), Int(server.maxPages) * 4096)
        let pool = blockingThreads > 0 ? RequestPool(threads: blockingThreads) : nil
        ringPool = pool
        var made: [FUSERingQueue] = []
        for qid in 0..<count {
            made.append(try FUSERingQueue(qid: qid, depth: depth, fd: fd, server: server, payloadSize: payload,
                                          counters: counters, pool: pool, pollMicroseconds: pollMicroseconds, logger: logger))
        }
        let threads = made.compactMap { q in JoinableThread.spawn { q.run() } }
        queues = made
        queueThreads = threads
        var waited = 0
        while made.contains(where: { $0.registered.load(ordering: .acquiring) == 0 }) && waited < 5000 {
            usleep(1000)
            waited += 1
        }
        let failures = made.map { $0.registered.load(ordering: .acquiring) }.filter { $0 != 1 }
        guard threads.count == made.count, failures.isEmpty else {
            stopQueues()
            let why = failures.first.map { $0 == 0 ? "a queue did not register in time" : String(cString: strerror(Int32(-$0))) }
            throw FUSEMountError.ring("registering the queues failed: \(why ?? "no thread")")
        }
    }

    /// Stops and joins the queue threads (the kernel then keeps using /dev/fuse).
    func stopQueues() {
        queues.forEach { $0.stop() }
        for t in queueThreads { t.join() }
        queueThreads = []
        queues = []
        ringPool?.stop()
        ringPool = nil
    }
}

private extension String {
    func trimmingCharacters(in set: Character) -> String {
        String(self.filter { $0 != set })
    }
}
