import CURing
import Glibc
import Testing

/// seccomp does not see what an io_uring does, so pmfs's rings are limited
/// when they are made (IORING_REGISTER_RESTRICTIONS): a confined thread that
/// goes astray cannot use one to reach other files or other operations.
@Suite struct RingRestrictionTests {
    /// Submits what is queued, waits for `count` completions; tag -> result.
    func complete(_ ring: inout io_uring, _ count: Int) -> [UInt64: Int32] {
        #expect(curing_submit_and_wait(&ring, UInt32(count)) >= 0)
        var tags = [UInt64](repeating: 0, count: 16), results = [Int32](repeating: 0, count: 16)
        var done: [UInt64: Int32] = [:]
        while done.count < count {
            let n = Int(curing_reap(&ring, &tags, &results, 16))
            for i in 0..<n { done[tags[i]] = results[i] }
            if n == 0 { _ = curing_submit_and_wait(&ring, 1) }
        }
        return done
    }

    func scratchFile() throws -> Int32 {
        var name = Array("/var/tmp/pmfs-ring-XXXXXX".utf8CString)
        let fd = mkstemp(&name)
        try #require(fd >= 0)
        unlink(name)
        #expect(ftruncate(fd, 1 << 20) == 0)
        return fd
    }

    @Test func theDataRingTakesOnlyVectoredIOOnTheDevice() throws {
        let device = try scratchFile(), other = try scratchFile()
        defer { close(device); close(other) }
        var ring = io_uring()
        try #require(curing_init_data_ring(&ring, 8, device) == 0)
        defer { curing_exit(&ring) }
        var bytes = [UInt8](repeating: 0x5A, count: 4096)
        let done = bytes.withUnsafeMutableBytes { b -> [UInt64: Int32] in
            var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
            #expect(curing_queue_vectored(&ring, 1, device, 1, &iov, 1, 0, 1) == 0)     // writev, registered file
            #expect(curing_queue_vectored(&ring, 0, device, 1, &iov, 1, 0, 2) == 0)     // readv, registered file
            #expect(curing_queue_vectored(&ring, 1, other, 0, &iov, 1, 0, 3) == 0)      // writev, a plain descriptor
            #expect(curing_queue_fsync(&ring, device, 1, 1, 4) == 0)                    // fsync: not on the list
            #expect(curing_queue_nop(&ring, 5) == 0)                                    // NOP: not on the list
            return complete(&ring, 5)
        }
        #expect(done[1] == 4096 && done[2] == 4096)
        #expect(done[3] == -EACCES && done[4] == -EACCES && done[5] == -EACCES)
        #expect(curing_update_file(&ring, 0, other) == -EACCES, "no registration once the ring runs")
        var read = [UInt8](repeating: 0, count: 4096)
        #expect(pread(other, &read, 4096, 0) == 4096 && read.allSatisfy { $0 == 0 }, "the plain descriptor was not written")
    }

    @Test func theFUSERingTakesOnlyCommandsAndTheWakeRead() throws {
        // Any descriptor stands for /dev/fuse here: what is checked is what the ring refuses.
        let fuse = try scratchFile()
        let wake = curing_eventfd()
        try #require(wake >= 0)
        defer { close(fuse); close(wake) }
        var ring = io_uring()
        try #require(curing_init_fuse_ring(&ring, 8, fuse, wake) == 0)
        defer { curing_exit(&ring) }
        var one: UInt64 = 1
        #expect(write(wake, &one, 8) == 8)
        var counter: UInt64 = 0
        var block = [UInt8](repeating: 0, count: 4096)
        let done = block.withUnsafeMutableBytes { b -> [UInt64: Int32] in
            #expect(curing_queue_read_fixed(&ring, 1, &counter, 8, 1) == 0)             // the wake read
            var iov = iovec(iov_base: b.baseAddress, iov_len: b.count)
            #expect(curing_queue_vectored(&ring, 1, fuse, 1, &iov, 1, 0, 2) == 0)      // writev: not on the list
            #expect(curing_queue_plain_read(&ring, fuse, b.baseAddress, 16, 3) == 0)    // read of a plain descriptor
            return complete(&ring, 3)
        }
        #expect(done[1] == 8 && counter == 1)
        #expect(done[2] == -EACCES && done[3] == -EACCES)
    }
}
