import Glibc
import PMFSConcurrency
import PMFSData
import Synchronization
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// fsync(group:): the fsyncs a queue worker collects in one pass are durable
/// together, with one device flush, and each gets its own result.
@Suite struct GroupFsyncTests {
    @Test func aGroupIsDurableWithOneFlush() throws {
        let t = try CoreFixture()
        let files = try (0..<4).map { try t.newFile("g\($0)") }
        for (i, ino) in files.enumerated() {
            _ = try t.write(ino, 4096 * UInt64(i), [UInt8](repeating: UInt8(0x10 + i), count: 5000))
        }
        let missing: UInt64 = 9_999
        let before = t.device.groupFlush.flushes
        // A file twice (fsync and fdatasync), one with nothing cached, one that does not exist.
        let clean = try t.newFile("clean")
        let results = t.fs.fsync(group: [(files[0], false), (files[1], true), (files[2], false), (files[0], true),
                                         (files[3], true), (clean, false), (missing, false)])
        #expect(t.device.groupFlush.flushes == before + 1)
        #expect(results.prefix(6).allSatisfy { $0 == nil })
        #expect(results[6] != nil)
        try t.crashAndReopen()
        for (i, ino) in files.enumerated() {
            #expect(try t.read(ino, 4096 * UInt64(i), 5000) == [UInt8](repeating: UInt8(0x10 + i), count: 5000))
            #expect(try t.metadata.getattr(ino).size == 4096 * UInt64(i) + 5000)
        }
    }

    /// The group's writes go to the device as one batch; when a file's write
    /// fails, that file's fsync fails and every other file is still durable.
    @Test func aFailedWriteFailsOnlyItsFile() throws {
        let engine = EngineSlot<PoisonedWriteEngine?>(nil)
        let t = try CoreFixture(engineMaker: { fd in
            let e = PoisonedWriteEngine(ThreadPoolEngine(fd: fd))
            engine.value = e
            return e
        })
        let files = try (0..<3).map { try t.newFile("p\($0)") }
        let fills: [UInt8] = [0x31, PoisonedWriteEngine.poison, 0x33]
        for (ino, fill) in zip(files, fills) { _ = try t.write(ino, 0, [UInt8](repeating: fill, count: 8192)) }
        let results = t.fs.fsync(group: files.map { ($0, false) })
        #expect(results[0] == nil && results[2] == nil)
        #expect(results[1] != nil)
        #expect((engine.value?.largestWriteBatch ?? 0) >= 3)   // all three files' writes at once, first
        try t.crashAndReopen()
        for i in [0, 2] { #expect(try t.read(files[i], 0, 8192) == [UInt8](repeating: fills[i], count: 8192)) }
        #expect(try t.metadata.getattr(files[1]).size == 0)   // its fsync failed: nothing of it committed
    }

    @Test func aFileAnotherThreadHoldsIsSyncedAloneAfterwards() throws {
        let t = try CoreFixture()
        let a = try t.newFile("a"), b = try t.newFile("b")
        _ = try t.write(a, 0, [UInt8](repeating: 0xA1, count: 4096))
        _ = try t.write(b, 0, [UInt8](repeating: 0xB2, count: 4096))
        // b's lock is held by another thread for a while: the group must not wait
        // for it while holding a's, and must still make b durable.
        let f = try t.fs.withFile(max(a, b)) { $0 }
        final class Box: @unchecked Sendable {
            let f: FileData
            let locked = Atomic<Bool>(false)
            init(_ f: FileData) { self.f = f }
        }
        let box = Box(f)
        let thread = JoinableThread.spawn {
            box.f.lock.lock()
            box.locked.store(true, ordering: .sequentiallyConsistent)
            usleep(50_000)
            box.f.lock.unlock()
        }
        #expect(thread != nil)
        while !box.locked.load(ordering: .sequentiallyConsistent) { usleep(100) }
        let results = t.fs.fsync(group: [(a, false), (b, false)])
        thread?.join()
        #expect(results.allSatisfy { $0 == nil })
        try t.crashAndReopen()
        #expect(try t.read(a, 0, 4096) == [UInt8](repeating: 0xA1, count: 4096))
        #expect(try t.read(b, 0, 4096) == [UInt8](repeating: 0xB2, count: 4096))
    }
}


/// An engine that fails every batch holding a write whose first byte is
/// `poison`, and counts the largest batch of writes it was given.
final class PoisonedWriteEngine: BlockIOEngine, @unchecked Sendable {
    static let poison: UInt8 = 0xEE
    let name = "poisoned"
    private let inner: BlockIOEngine
    private let largest = Mutex<Int>(0)
    var largestWriteBatch: Int { largest.withLock { $0 } }

    init(_ inner: BlockIOEngine) { self.inner = inner }

    func perform(_ requests: [BlockIORequest]) throws {
        let writes = requests.filter { $0.kind == .write }
        largest.withLock { $0 = max($0, writes.count) }
        let poisoned = writes.contains { r in
            guard let first = r.segments.first, first.iov_len > 0 else { return false }
            return first.iov_base.load(as: UInt8.self) == Self.poison
        }
        if poisoned { throw DataDeviceError.io("poisoned write", errno: IOErrno(EIO)) }
        try inner.perform(requests)
    }

    func flush() throws { try inner.flush() }
    func close() { inner.close() }
}

/// A value a closure may set (the fixture's engine maker).
final class EngineSlot<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}
