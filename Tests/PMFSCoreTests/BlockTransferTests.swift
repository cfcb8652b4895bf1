import Glibc
import PMFSData
import Testing

/// One request of the thread-pool engine (also io_uring's path for a batch
/// of one): vectored writes and reads land where they should, and a read
/// that runs past the end of the device comes back short and is finished
/// with zeros.
@Suite struct BlockTransferTests {
    /// A file of `blocks` 4 KiB blocks, each filled with its number + 1.
    func device(blocks: Int) throws -> (fd: Int32, path: String) {
        let path = "/tmp/pmfs-transfer-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0o600)
        try #require(fd >= 0)
        for b in 0..<blocks {
            let block = [UInt8](repeating: UInt8(b + 1), count: 4096)
            #expect(block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(b * 4096)) } == 4096)
        }
        return (fd, path)
    }

    @Test func aReadPastTheEndIsFinishedWithZeros() throws {
        let (fd, path) = try device(blocks: 2)
        defer { close(fd); unlink(path) }
        let pages = (0..<3).map { _ in AlignedBuffer(count: 4096) }
        for p in pages { memset(p.pointer, 0xEE, 4096) }
        // Blocks 1, 2 and 3 of a two-block file: one block read, then nothing.
        let request = BlockIORequest(kind: .read, segments: pages.map { iovec(iov_base: $0.pointer, iov_len: 4096) }, offset: 4096)
        try ThreadPoolEngine(fd: fd).perform([request])
        let bytes = pages.map { Array(UnsafeRawBufferPointer(start: $0.pointer, count: 4096)) }
        #expect(bytes[0].allSatisfy { $0 == 2 })
        #expect(bytes[1].allSatisfy { $0 == 0 })
        #expect(bytes[2].allSatisfy { $0 == 0 })
    }

    @Test func aVectoredWriteAndReadRoundTrip() throws {
        let (fd, path) = try device(blocks: 4)
        defer { close(fd); unlink(path) }
        let pages = (0..<2).map { _ in AlignedBuffer(count: 4096) }
        memset(pages[0].pointer, 0xA1, 4096)
        memset(pages[1].pointer, 0xB2, 4096)
        let segments = pages.map { iovec(iov_base: $0.pointer, iov_len: 4096) }
        try ThreadPoolEngine(fd: fd).perform([BlockIORequest(kind: .write, segments: segments, offset: 4096)])
        let back = (0..<4).map { _ in AlignedBuffer(count: 4096) }
        try ThreadPoolEngine(fd: fd).perform([BlockIORequest(kind: .read, segments: back.map { iovec(iov_base: $0.pointer, iov_len: 4096) }, offset: 0)])
        let firsts = back.map { $0.pointer.load(as: UInt8.self) }
        #expect(firsts == [1, 0xA1, 0xB2, 4])
        // The request's own iovecs were not moved by the transfer.
        #expect(segments[0].iov_base == pages[0].pointer && segments[0].iov_len == 4096)
    }

    @Test func aWriteOfNothingSucceeds() throws {
        let (fd, path) = try device(blocks: 1)
        defer { close(fd); unlink(path) }
        try ThreadPoolEngine(fd: fd).perform([BlockIORequest(kind: .write, segments: [], offset: 4096)])
    }
}
