import CFUSE
@testable import FUSEDevice
import FUSEProtocol
import FileSystemTestSupport
import Glibc
import PMFSConcurrency
import PMFSCore
import PMFSData
import PMFSMetadata
import PMFSServer
import Synchronization
import Testing

/// A real pmfs (pool on /dev/shm) mounted on the host through FUSE over
/// io_uring: the kernel's requests come from the per-CPU rings, and the
/// transport's counters prove it (no silent fallback to /dev/fuse).
final class RingMount {
    let files: ShmFileSystem
    let mountPoint: String
    let mount: FUSEMount
    let transport: String
    private var serving: JoinableThread?
    private let served = Tally()

    init(_ choice: FUSETransportChoice = .uring) throws {
        files = try ShmFileSystem(name: "ring", dataBlocks: 16384)
        let operations = PMFSOperations(metadata: files.metadata, fs: files.fs, group: SessionGroup())
        mountPoint = "/tmp/pmfs-ring-\(files.tag)"
        mkdir(mountPoint, 0o755)
        if choice != .device, FUSERingParameter.isEnabled() == false { _ = FUSERingParameter.enable() }
        let server = FUSEServer(operations: operations, offered: FUSEServer.defaultCapabilities | FUSEServer.overIOURing)
        mount = try FUSEMount(mountPoint: mountPoint, server: server, fsName: "pmfs-ring-test")
        do {
            transport = try mount.negotiate(choice)
        } catch {
            mount.unmount()
            throw error
        }
        // The thread holds the mount and the tally, not this fixture.
        let m = mount, done = served
        serving = JoinableThread.spawn {
            m.serve(workers: 2)
            done.count.store(1, ordering: .releasing)
        }
    }

    /// Unmounts and waits for `serve` to return: true if it did within 10 s.
    func stop() -> Bool {
        mount.unmount()
        for _ in 0..<1000 {
            if served.count.load(ordering: .acquiring) == 1 {
                serving?.join()
                return true
            }
            usleep(10_000)
        }
        return false
    }

    deinit { rmdir(mountPoint) }

    func path(_ name: String) -> String { mountPoint + "/" + name }
}

final class Tally: Sendable {
    let count = Atomic<Int>(0)
}

@Suite(.serialized) struct RingMountTests {
    static let root = geteuid() == 0 && access("/dev/fuse", R_OK | W_OK) == 0
        && FUSERingParameter.isEnabled() != nil

    func bytes(_ count: Int, seed: UInt8) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31) &+ seed } }

    @Test(.enabled(if: root)) func fileIOComesThroughTheRings() throws {
        let m = try RingMount()
        #expect(m.mount.usesRing)
        #expect(m.transport.contains("io_uring"))
        let before = m.mount.counters.viaRing

        // create, write (small and larger than a page), fsync, read back, stat
        let fd = open(m.path("f"), O_CREAT | O_RDWR | O_EXCL, 0o644)
        #expect(fd >= 0)
        let content = bytes(300_000, seed: 7)
        #expect(content.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) } == content.count)
        #expect(fsync(fd) == 0)
        var back = [UInt8](repeating: 0, count: content.count)
        // O_DIRECT is not asked for: drop the page cache so the read goes to pmfsd.
        #expect(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
        #expect(back.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) } == content.count)
        #expect(back == content)
        close(fd)
        var st = stat()
        #expect(stat(m.path("f"), &st) == 0)
        #expect(st.st_size == content.count)
        #expect(st.st_mode & S_IFMT == S_IFREG)

        // readdir sees it; unlink removes it
        #expect(mkdir(m.path("d"), 0o755) == 0)
        #expect(listing(m.mountPoint) == ["d", "f"])
        #expect(unlink(m.path("f")) == 0)
        #expect(stat(m.path("f"), &st) == -1 && errno == ENOENT)
        #expect(listing(m.mountPoint) == ["d"])

        #expect(m.mount.counters.viaRing - before >= 8)
        #expect(m.stop())
    }

    @Test(.enabled(if: root)) func concurrentWritersFromThreads() throws {
        let m = try RingMount()
        let writers = 6, rounds = 40
        let failures = Tally()
        var threads: [JoinableThread] = []
        final class Job: @unchecked Sendable {
            let path: String, seed: UInt8, rounds: Int, failures: Tally
            init(path: String, seed: UInt8, rounds: Int, failures: Tally) {
                self.path = path; self.seed = seed; self.rounds = rounds; self.failures = failures
            }
            func run() {
                let fd = open(path, O_CREAT | O_RDWR | O_TRUNC, 0o644)
                guard fd >= 0 else { failures.count.add(1, ordering: .relaxed); return }
                defer { close(fd) }
                var block = [UInt8](repeating: seed, count: 4096)
                for i in 0..<rounds {
                    block[0] = UInt8(truncatingIfNeeded: i)
                    let w = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(i * 4096)) }
                    if w != 4096 || fsync(fd) != 0 { failures.count.add(1, ordering: .relaxed) }
                }
            }
        }
        for w in 0..<writers {
            let job = Job(path: m.path("w\(w)"), seed: UInt8(w + 1), rounds: rounds, failures: failures)
            threads.append(try #require(JoinableThread.spawn { job.run() }))
        }
        for t in threads { t.join() }
        #expect(failures.count.load(ordering: .relaxed) == 0)
        for w in 0..<writers {
            let fd = open(m.path("w\(w)"), O_RDONLY)
            #expect(fd >= 0)
            _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
            var file = [UInt8](repeating: 0, count: rounds * 4096 + 1)
            let n = file.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            close(fd)
            #expect(n == rounds * 4096)
            for i in 0..<rounds {
                #expect(file[i * 4096] == UInt8(truncatingIfNeeded: i))
                #expect(file[i * 4096 + 1] == UInt8(w + 1))
            }
        }
        // Each write and fsync is a request: they came through the rings.
        #expect(m.mount.counters.viaRing >= writers * rounds * 2)
        #expect(m.mount.counters.viaDevice < m.mount.counters.viaRing / 10)
        // fsyncs that met others on their CPU's queue shared a commit (one device
        // flush), or went to a pool thread while requests waited behind them.
        let c = m.mount.counters
        print("ring requests on pool threads: \(c.offloaded) of \(c.viaRing); \(c.groupedFsyncs) fsyncs in \(c.fsyncGroups) group commits")
        #expect(c.groupedFsyncs > c.fsyncGroups || c.offloaded > 0)
        #expect(c.groupedFsyncs == writers * rounds, "every fsync went through a group commit")
        #expect(m.stop())
    }

    /// A blocking flock is answered later, when the holder unlocks (a reply
    /// from outside the waiting entry's turn, through the queue's mailbox).
    @Test(.enabled(if: root)) func aWaitingLockIsAnsweredLater() throws {
        let m = try RingMount()
        let holder = open(m.path("lock"), O_CREAT | O_RDWR, 0o644)
        let waiter = open(m.path("lock"), O_RDWR)
        #expect(holder >= 0 && waiter >= 0)
        #expect(flock(holder, LOCK_EX) == 0)
        let granted = Tally()
        let t = try #require(JoinableThread.spawn {
            if flock(waiter, LOCK_EX) == 0 { granted.count.add(1, ordering: .relaxed) }
        })
        usleep(200_000)
        #expect(granted.count.load(ordering: .relaxed) == 0)
        #expect(flock(holder, LOCK_UN) == 0)
        t.join()
        #expect(granted.count.load(ordering: .relaxed) == 1)
        close(holder)
        close(waiter)
        #expect(m.stop())
    }

    @Test(.enabled(if: root)) func deviceChoiceNeverUsesTheRings() throws {
        let m = try RingMount(.device)
        #expect(!m.mount.usesRing)
        var st = stat()
        #expect(stat(m.mountPoint, &st) == 0)
        #expect(mkdir(m.path("x"), 0o755) == 0)
        #expect(m.mount.counters.viaRing == 0)
        #expect(m.mount.counters.viaDevice >= 2)
        #expect(m.stop())
    }

    func listing(_ dir: String) -> [String] {
        guard let d = opendir(dir) else { return [] }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

/// The lengths a ring entry's header claims are checked before use.
@Suite struct RingEntryTests {
    func entry(len: UInt32, payload: UInt32, opcode: UInt32 = FUSE_GETATTR.rawValue) -> FUSERingEntry {
        let e = FUSERingEntry(index: 0, payloadSize: 8192)
        var h = fuse_in_header()
        h.len = len
        h.opcode = opcode
        h.unique = 42
        withUnsafeBytes(of: h) { e.header.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        var io = cfuse_uring_ent_in_out()
        io.commit_id = 42
        io.payload_sz = payload
        withUnsafeBytes(of: io) { (e.header + FUSERingEntry.inOutOffset).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return e
    }

    @Test func consistentLengthsMakeOneMessage() {
        let e = entry(len: 40 + 16 + 5, payload: 5)
        for i in 0..<16 { e.header.storeBytes(of: UInt8(i), toByteOffset: FUSERingEntry.opInOffset + i, as: UInt8.self) }
        for i in 0..<5 { e.payload.storeBytes(of: UInt8(100 + i), toByteOffset: i, as: UInt8.self) }
        let m = e.message()
        #expect(m?.count == 61)
        if let m {
            #expect(m.loadUnaligned(as: fuse_in_header.self).unique == 42)
            #expect(Array(m[40..<56]) == (0..<16).map { UInt8($0) })
            #expect(Array(m[56..<61]) == [100, 101, 102, 103, 104])
        }
    }

    @Test func lengthsThatDoNotAddUpAreRefused() {
        #expect(entry(len: 40 + 200, payload: 0).message() == nil)        // op argument beyond its 128 bytes
        #expect(entry(len: 40, payload: 8193).message() == nil)           // payload beyond the buffer
        #expect(entry(len: 30, payload: 0).message() == nil)              // shorter than the in-header
        #expect(entry(len: 40 + 10, payload: 20).message() == nil)        // payload longer than the request
        #expect(entry(len: UInt32.max, payload: 0).message() == nil)
    }

    func stored(_ e: FUSERingEntry) -> (fuse_out_header, UInt32) {
        (e.header.loadUnaligned(as: fuse_out_header.self),
         e.header.loadUnaligned(fromByteOffset: FUSERingEntry.inOutOffset, as: cfuse_uring_ent_in_out.self).payload_sz)
    }

    @Test func repliesLandInHeaderAndPayload() {
        let e = entry(len: 40, payload: 0)
        var reply = [UInt8](repeating: 0, count: 16 + 24)
        withUnsafeBytes(of: fuse_out_header(len: 40, error: 0, unique: 42)) { h in reply.withUnsafeMutableBytes { $0.copyMemory(from: h) } }
        reply[16] = 0xAB
        e.store(.message(reply), unique: 42)
        var (h, size) = stored(e)
        #expect(h.error == 0 && h.len == 40 && h.unique == 42 && size == 24)
        #expect(e.payload.load(as: UInt8.self) == 0xAB)

        // A reply the engine wrote into the entry's own memory: header room, then payload.
        var writer = ReplyWriter(e.replyMemory)
        try? writer.write(fuse_out_header(len: 16 + 4096, error: 0, unique: 42))
        try? writer.write(zeros: 4096)
        e.store(.inPlace(writer.written), unique: 42)
        (h, size) = stored(e)
        #expect(h.error == 0 && size == 4096 && h.len == 16 + 4096)
        e.store(.inPlace(16 + 9000), unique: 42)
        (h, size) = stored(e)
        #expect(h.error == -EIO && size == 0 && h.len == 16)

        // Too big for the payload, or not a reply at all: EIO, nothing in the payload.
        withUnsafeBytes(of: fuse_out_header(len: 16 + 9000, error: 0, unique: 42)) { e.store(.message(Array($0)), unique: 42) }
        (h, size) = stored(e)
        #expect(h.error == -EIO && size == 0 && h.len == 16)
        e.store(.message([1, 2, 3]), unique: 42)
        (h, size) = stored(e)
        #expect(h.error == -EIO && size == 0 && h.unique == 42)

        // An error reply carries no payload.
        withUnsafeBytes(of: fuse_out_header(len: 16, error: -ENOENT, unique: 42)) { e.store(.message(Array($0)), unique: 42) }
        (h, size) = stored(e)
        #expect(h.error == -ENOENT && size == 0)
    }
}
