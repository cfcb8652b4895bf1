import Glibc
import PMFSConcurrency
import PMFSData
import Synchronization
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// Write-backs whose device I/O runs without the file lock (above the dirty
/// ratio, and from the timer): writes to other pages, reads, truncates and
/// fsyncs go on beside them, and nothing written is lost or mixed up.
@Suite struct InFlightWriteBackTests {
    /// A small cache with a low dirty ratio, so writers start write-backs all
    /// the time; device writes that take a while after their bytes are taken,
    /// as a real device's do, so writers meet write-backs in flight.
    static func fixture() throws -> CoreFixture {
        var options = FileDataTier.Options()
        options.cacheBytes = 2 << 20
        options.dirtyRatio = 0.25
        options.writeBackStartPages = 8
        return try CoreFixture(dataBlocks: 65536, options: options, engineMaker: { SlowWriteEngine(ThreadPoolEngine(fd: $0)) })
    }

    /// Random bytes the patterns are cut from.
    static let noise: [UInt8] = {
        var rng = SplitMix64(seed: 2026)
        return (0..<(1 << 20)).flatMap { _ in withUnsafeBytes(of: rng.next()) { Array($0) } }
    }()

    /// The bytes a write with tag `tag` puts at `offset` (position-dependent,
    /// so a page written to the wrong place or from another write shows).
    static func pattern(_ tag: UInt64, _ offset: UInt64, _ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var at = offset
        while out.count < count {
            let start = Int((at &+ tag &* 7919) % UInt64(noise.count))
            let n = min(count - out.count, noise.count - start)
            out += noise[start..<(start + n)]
            at += UInt64(n)
        }
        return out
    }

    @Test func aSequentialWriterStartsWriteBacksAndLosesNothing() throws {
        let t = try Self.fixture()
        let ino = try t.newFile("seq")
        let chunk = 64 << 10, total = 12 << 20
        for offset in stride(from: 0, to: total, by: chunk) {
            #expect(try t.write(ino, UInt64(offset), Self.pattern(1, UInt64(offset), chunk)) == chunk)
        }
        #expect(t.fs.writeBacksStartedInFlight.load(ordering: .relaxed) > 0)
        try t.fs.fsync(ino)
        for offset in stride(from: 0, to: total, by: 1 << 20) {
            #expect(try t.read(ino, UInt64(offset), 1 << 20) == Self.pattern(1, UInt64(offset), 1 << 20), "offset \(offset)")
        }
        try t.crashAndReopen()
        #expect(try t.metadata.getattr(ino).size == UInt64(total))
        for offset in stride(from: 0, to: total, by: 1 << 20) {
            #expect(try t.read(ino, UInt64(offset), 1 << 20) == Self.pattern(1, UInt64(offset), 1 << 20), "offset \(offset) after a crash")
        }
        try expectClean(t)
    }

    /// Four threads, a file each, random writes, reads, truncates, fsyncs and
    /// fdatasyncs against a model of each file, while write-backs are in
    /// flight; then every file matches its model, after a clean restart too,
    /// and the checker finds nothing.
    @Test func concurrentFilesMatchTheirModels() throws {
        let t = try Self.fixture()
        let files = try (0..<4).map { try t.newFile("m\($0)") }
        let models = Mutex<[[UInt8]]>(Array(repeating: [], count: files.count))
        let failures = Mutex<[String]>([])
        let fs = t.fs!
        let span = 1 << 20
        func run(_ k: Int) {
            var rng = SplitMix64(seed: UInt64(k) &+ 77)
            var model: [UInt8] = []
            let ino = files[k]
            do {
                for op in 0..<600 {
                    let kind = rng.next() % 16
                    if kind < 9 {
                        let offset = Int(rng.next() % UInt64(span)), count = 1 + Int(rng.next() % UInt64(64 << 10))
                        let bytes = Self.pattern(UInt64(k * 1000 + op), UInt64(offset), count)
                        _ = try bytes.withUnsafeBytes { try fs.write(ino, offset: UInt64(offset), from: $0) }
                        if model.count < offset + count { model += [UInt8](repeating: 0, count: offset + count - model.count) }
                        model.replaceSubrange(offset..<(offset + count), with: bytes)
                    } else if kind < 13 {
                        let offset = Int(rng.next() % UInt64(span)), count = 1 + Int(rng.next() % UInt64(200 << 10))
                        var out = [UInt8](repeating: 0xEE, count: count)
                        let n = try out.withUnsafeMutableBytes { try fs.read(ino, offset: UInt64(offset), into: $0) }
                        let want = offset < model.count ? Array(model[offset..<min(model.count, offset + count)]) : []
                        if Array(out.prefix(n)) != want { failures.withLock { $0.append("file \(k) op \(op): read at \(offset)") } }
                    } else if kind == 13 {
                        let size = Int(rng.next() % UInt64(span))
                        _ = try fs.setattr(ino, AttributeChanges(size: UInt64(size)))
                        if size < model.count { model.removeLast(model.count - size) } else { model += [UInt8](repeating: 0, count: size - model.count) }
                    } else {
                        try fs.fsync(ino, dataOnly: kind == 15)
                    }
                }
                try fs.fsync(ino)
            } catch {
                failures.withLock { $0.append("file \(k): \(error)") }
            }
            models.withLock { $0[k] = model }
        }
        let threads = (0..<files.count).compactMap { k in JoinableThread.spawn(name: "model-\(k)") { run(k) } }
        #expect(threads.count == files.count)
        for th in threads { th.join() }
        #expect(failures.withLock { $0 } == [])
        #expect(t.fs.writeBacksStartedInFlight.load(ordering: .relaxed) > 50)
        let want = models.withLock { $0 }
        func expectModels(_ when: String) throws {
            for (k, ino) in files.enumerated() {
                #expect(try t.fs.getattr(ino).size == UInt64(want[k].count), "file \(k) \(when)")
                #expect(try t.read(ino, 0, want[k].count + 1) == want[k], "file \(k) \(when)")
            }
        }
        try expectModels("at the end")
        try t.crashAndReopen()   // everything was fsynced last
        try expectModels("after a crash")
        try expectClean(t)
        try expectModels("after a clean restart")
    }
}

/// Writes complete 3 ms after their bytes went to the file.
final class SlowWriteEngine: BlockIOEngine {
    let name = "slow-writes"
    let inner: BlockIOEngine
    init(_ inner: BlockIOEngine) { self.inner = inner }
    func perform(_ requests: [BlockIORequest]) throws {
        try inner.perform(requests)
        if requests.contains(where: { $0.kind == .write }) { usleep(3000) }
    }
    func flush() throws { try inner.flush() }
    func close() { inner.close() }
}
