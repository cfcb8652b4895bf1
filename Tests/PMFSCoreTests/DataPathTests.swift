import Glibc
import PMFSConcurrency
import PMFSData
import SystemPackage
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

@Suite struct DataPathTests {
    @Test(arguments: [IOEngineChoice.iouring, .threads, .inline])
    func writeReadAnyOffset(engine: IOEngineChoice) throws {
        let t = try CoreFixture(engine: engine)
        #expect(t.device.engine.name == engine.rawValue)
        let ino = try t.newFile("f")
        let a = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(try t.write(ino, 1234, a) == a.count)
        #expect(try t.fs.getattr(ino).size == 1234 + 10_000)
        #expect(try t.read(ino, 0, 1234) == [UInt8](repeating: 0, count: 1234))
        #expect(try t.read(ino, 1234, 10_000) == a)
        #expect(try t.read(ino, 11_000, 100_000).count == 234)   // short read at EOF
        #expect(try t.read(ino, 20_000, 10).isEmpty)
        try t.restart()
        #expect(try t.read(ino, 1234, 10_000) == a)
        #expect(try t.metadata.getattr(ino).size == 11_234)
    }

    /// Reads into scattered buffers (a guest's pages) give what one buffer gets,
    /// across blocks, a hole, cached and uncached data, and the end of the file.
    @Test func scatteredReadsMatchContiguousOnes() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("scatter")
        var rng = SystemRandomNumberGenerator()
        let a = (0..<30_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        #expect(try t.write(ino, 100, a) == a.count)
        #expect(try t.write(ino, 60_000, [7, 7, 7]) == 3)   // a hole in between; size 60_003
        for cached in [true, false] {
            if !cached { try t.restart() }   // then blocks come from the device
            for (offset, sizes) in [(0, [1, 4095, 4096, 10]), (90, [3, 5000, 9000, 4096 * 4]), (29_000, [40_000, 100]),
                                    (59_990, [4, 4, 4, 4, 100]), (70_000, [10])] as [(UInt64, [Int])] {
                let total = sizes.reduce(0, +)
                let want = try t.read(ino, offset, total)
                let buffers = sizes.map { UnsafeMutableRawBufferPointer.allocate(byteCount: $0, alignment: 1) }
                defer { buffers.forEach { $0.deallocate() } }
                buffers.forEach { $0.initializeMemory(as: UInt8.self, repeating: 0xEE) }
                let n = try t.fs.read(ino, offset: offset, into: buffers)
                #expect(n == want.count, "offset \(offset)")
                let got = Array(buffers.map { Array($0) }.joined().prefix(n))
                #expect(got == want, "offset \(offset), cached \(cached)")
                // Nothing written past what was read.
                #expect(buffers.map { Array($0) }.joined().dropFirst(n).allSatisfy { $0 == 0xEE })
            }
        }
    }

    @Test func holesReadAsZerosAndSparseFilesStaySparse() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("sparse")
        let far: UInt64 = 16 << 40   // 16 TiB
        #expect(try t.write(ino, far, [1, 2, 3]) == 3)
        #expect(try t.fs.getattr(ino).size == far + 3)
        #expect(try t.read(ino, far - 2, 5) == [0, 0, 1, 2, 3])
        #expect(try t.read(ino, 1 << 30, 8) == [UInt8](repeating: 0, count: 8))
        try t.fs.fsync(ino)
        #expect(try t.metadata.getattr(ino).blocks == 8)   // one block allocated
    }

    @Test func overwriteInPlaceKeepsBlocks() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [UInt8](repeating: 1, count: 8192))
        try t.fs.fsync(ino)
        let before = try t.metadata.mapBlocks(ino, start: 0, count: 2)
        _ = try t.write(ino, 100, [UInt8](repeating: 2, count: 5000))
        try t.fs.fsync(ino)
        #expect(try t.metadata.mapBlocks(ino, start: 0, count: 2) == before)
        var expected = [UInt8](repeating: 1, count: 8192)
        for i in 100..<5100 { expected[i] = 2 }
        try t.restart()
        #expect(try t.read(ino, 0, 8192) == expected)
    }

    @Test func sequentialWritesGetContiguousBlocks() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("seq")
        let chunk = [UInt8](repeating: 9, count: 64 << 10)
        for i in 0..<32 { _ = try t.write(ino, UInt64(i * chunk.count), chunk) ; if i % 5 == 0 { try t.fs.fsync(ino) } }
        try t.fs.fsync(ino)
        let map = try t.metadata.mapBlocks(ino, start: 0, count: 512)
        #expect(map.count <= 2, "\(map.count) extents for a sequentially written file")
    }

    @Test func truncateDownZeroesTailAndUpReadsZeros() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [UInt8](repeating: 0xAA, count: 3 * 4096))
        try t.fs.fsync(ino)
        _ = try t.fs.setattr(ino, AttributeChanges(size: 5000))
        #expect(try t.fs.getattr(ino).size == 5000)
        #expect(try t.metadata.getattr(ino).blocks == 16)
        _ = try t.fs.setattr(ino, AttributeChanges(size: 3 * 4096))
        var expected = [UInt8](repeating: 0xAA, count: 5000) + [UInt8](repeating: 0, count: 3 * 4096 - 5000)
        #expect(try t.read(ino, 0, 3 * 4096) == expected)
        // The zeroed tail survives a crash too: the device holds zeros past 5000.
        try t.crashAndReopen()
        #expect(try t.read(ino, 0, 3 * 4096) == expected)
        _ = try t.fs.setattr(ino, AttributeChanges(size: 0))
        #expect(try t.read(ino, 0, 10).isEmpty)
        #expect(try t.metadata.getattr(ino).blocks == 0)
        expected = []
        _ = expected
    }

    @Test func fallocateModes() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        let free0 = t.metadata.statistics().freeBlocks
        try t.fs.fallocate(ino, mode: [], offset: 0, length: 10 * 4096)
        #expect(try t.fs.getattr(ino).size == 10 * 4096)
        #expect(t.metadata.statistics().freeBlocks == free0 - 10)
        #expect(try t.read(ino, 0, 10 * 4096) == [UInt8](repeating: 0, count: 10 * 4096))
        // KEEP_SIZE allocates past EOF without growing the file.
        try t.fs.fallocate(ino, mode: .keepSize, offset: 10 * 4096, length: 4 * 4096)
        #expect(try t.fs.getattr(ino).size == 10 * 4096)
        #expect(t.metadata.statistics().freeBlocks == free0 - 14)
        // Writing into preallocated space uses it, without new allocation.
        _ = try t.write(ino, 4096, [UInt8](repeating: 5, count: 4096))
        try t.fs.fsync(ino)
        #expect(t.metadata.statistics().freeBlocks == free0 - 14)
        #expect(try t.read(ino, 4096, 4096) == [UInt8](repeating: 5, count: 4096))
        // PUNCH_HOLE: partial edges zeroed, whole blocks freed, size kept.
        _ = try t.write(ino, 0, [UInt8](repeating: 7, count: 10 * 4096))
        try t.fs.fsync(ino)
        try t.fs.fallocate(ino, mode: [.punchHole, .keepSize], offset: 2048, length: 3 * 4096)
        let data = try t.read(ino, 0, 5 * 4096)
        #expect(data[0..<2048].allSatisfy { $0 == 7 })
        #expect(data[2048..<(2048 + 3 * 4096)].allSatisfy { $0 == 0 })
        #expect(data[(2048 + 3 * 4096)...].allSatisfy { $0 == 7 })
        #expect(try t.fs.getattr(ino).size == 10 * 4096)
        #expect(t.metadata.statistics().freeBlocks == free0 - 14 + 2)
        // ZERO_RANGE: reads zeros, space stays allocated.
        try t.fs.fallocate(ino, mode: .zeroRange, offset: 6 * 4096, length: 2 * 4096)
        #expect(try t.read(ino, 6 * 4096, 2 * 4096) == [UInt8](repeating: 0, count: 2 * 4096))
        #expect(t.metadata.statistics().freeBlocks == free0 - 12)
        #expect(throws: Errno.notSupported) { try t.fs.fallocate(ino, mode: .punchHole, offset: 0, length: 1) }
        #expect(throws: Errno.invalidArgument) { try t.fs.fallocate(ino, mode: [], offset: 0, length: 0) }
        try t.restart()
        let again = try t.read(ino, 0, 10 * 4096)
        #expect(again[0..<2048].allSatisfy { $0 == 7 } && again[(6 * 4096)..<(8 * 4096)].allSatisfy { $0 == 0 })
    }

    @Test func seekDataAndHole() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [1])
        _ = try t.write(ino, 10 * 4096, [UInt8](repeating: 2, count: 4096))
        #expect(try t.fs.seek(ino, from: 0, to: .data) == 0)
        #expect(try t.fs.seek(ino, from: 0, to: .hole) == 4096)
        #expect(try t.fs.seek(ino, from: 4096, to: .data) == 10 * 4096)
        try t.fs.fsync(ino)   // same answers from the extent map
        #expect(try t.fs.seek(ino, from: 5, to: .hole) == 4096)
        #expect(try t.fs.seek(ino, from: 4096, to: .data) == 10 * 4096)
        #expect(try t.fs.seek(ino, from: 10 * 4096, to: .hole) == 11 * 4096)
        #expect(throws: Errno.noSuchAddressOrDevice) { try t.fs.seek(ino, from: 11 * 4096, to: .data) }
    }

    /// A sparse file of 2^50 bytes: SEEK_DATA / SEEK_HOLE walk the extent map,
    /// not the blocks (found by tools/fuzz: one LSEEK hung the server).
    @Test func seekInAHugeSparseFile() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.fs.setattr(ino, AttributeChanges(size: 1 << 50))
        _ = try t.write(ino, 1 << 40, [1])
        #expect(try t.fs.seek(ino, from: 0, to: .data) == 1 << 40)
        #expect(try t.fs.seek(ino, from: 7, to: .hole) == 7)
        #expect(try t.fs.seek(ino, from: 1 << 40, to: .hole) == (1 << 40) + 4096)
        #expect(throws: Errno.noSuchAddressOrDevice) { try t.fs.seek(ino, from: (1 << 40) + 4096, to: .data) }
        try t.fs.fsync(ino)   // the same from the extent map
        #expect(try t.fs.seek(ino, from: 5, to: .data) == 1 << 40)
        #expect(try t.fs.seek(ino, from: (1 << 40) + 1, to: .hole) == (1 << 40) + 4096)
        #expect(throws: Errno.noSuchAddressOrDevice) { try t.fs.seek(ino, from: (1 << 50) - 1, to: .data) }
    }

    /// Offsets near 2^64 within one file: no overlap, no overflow trap (found by tools/fuzz).
    @Test func copyFileRangeAtHugeOffsets() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [1, 2, 3])
        #expect(try t.fs.copyFileRange(from: ino, offset: UInt64.max - 10, to: ino, offset: 0, length: 1 << 30) == 0)
        #expect(throws: Errno.invalidArgument) { try t.fs.copyFileRange(from: ino, offset: UInt64.max - 10, to: ino, offset: UInt64.max - 20, length: 100) }
        #expect(throws: Errno.invalidArgument) { try t.fs.copyFileRange(from: ino, offset: 0, to: ino, offset: 2, length: 3) }
        #expect(try t.fs.copyFileRange(from: ino, offset: 0, to: ino, offset: 3, length: 3) == 3)
        #expect(try t.read(ino, 0, 10) == [1, 2, 3, 1, 2, 3])
    }

    @Test func copyFileRangeCopiesBytes() throws {
        let t = try CoreFixture()
        let a = try t.newFile("a"), b = try t.newFile("b")
        let bytes = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 * 31) }
        _ = try t.write(a, 0, bytes)
        #expect(try t.fs.copyFileRange(from: a, offset: 1000, to: b, offset: 7, length: 40_000) == 40_000)
        #expect(try t.read(b, 7, 40_000) == Array(bytes[1000..<41_000]))
        #expect(try t.fs.copyFileRange(from: a, offset: 49_000, to: b, offset: 0, length: 10_000) == 1000)
        #expect(throws: Errno.invalidArgument) { try t.fs.copyFileRange(from: a, offset: 0, to: a, offset: 10, length: 100) }
    }

    @Test func deviceFullIsENOSPCAtWriteTime() throws {
        let t = try CoreFixture(dataBlocks: 64)
        let ino = try t.newFile("f")
        let free = t.metadata.statistics().freeBlocks
        let big = [UInt8](repeating: 1, count: Int(free + 10) * 4096)
        // The write is cut short where space ends (as ext4 does), nothing is lost.
        let n = try t.write(ino, 0, big)
        #expect(n == Int(free) * 4096)
        #expect(throws: Errno.noSpace) { try t.write(ino, UInt64(n), [1]) }
        try t.fs.fsync(ino)
        #expect(t.metadata.statistics().freeBlocks == 0)
        #expect(try t.read(ino, 0, n) == Array(big[0..<n]))
        // Space comes back on delete.

        try t.metadata.unlink(1, try FileName("f"))
        #expect(t.metadata.statistics().freeBlocks == free)
        let g = try t.newFile("g")
        #expect(try t.write(g, 0, [UInt8](repeating: 3, count: 4096 * 10)) == 40960)
    }

    @Test func tinyCacheEvictsAndThrottles() throws {
        var o = FileDataTier.Options()
        o.cacheBytes = 16 * 4096
        let t = try CoreFixture(options: o)
        let files = try (0..<4).map { try t.newFile("f\($0)") }
        var model: [UInt64: [UInt8]] = [:]
        for (i, ino) in files.enumerated() {
            let bytes = (0..<(200 * 1024)).map { UInt8(truncatingIfNeeded: $0 &+ i * 13) }
            _ = try t.write(ino, 0, bytes)
            model[ino] = bytes
        }
        #expect(t.fs.cache.frameCount == 16)
        for ino in files { #expect(try t.read(ino, 0, 200 * 1024) == model[ino]) }
        try t.restart()
        for ino in files { #expect(try t.read(ino, 0, 200 * 1024) == model[ino]) }
    }

    /// A freed inode's cached state goes with it: a new file that reuses the
    /// number must not see the old file's unwritten pages or size.
    @Test func reusedInodeNumberStartsClean() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("old")
        _ = try t.write(ino, 0, [UInt8](repeating: 0x55, count: 10_000))   // cached, dirty
        try t.metadata.unlink(1, try FileName("old"))
        let again = try t.newFile("new")
        #expect(again == ino)
        #expect(try t.fs.getattr(again).size == 0)
        #expect(try t.read(again, 0, 100).isEmpty)
        _ = try t.write(again, 0, [1, 2, 3])
        try t.fs.fsync(again)
        try t.restart()
        #expect(try t.read(again, 0, 100) == [1, 2, 3])
        #expect(t.metadata.statistics().freeBlocks == t.metadata.statistics().totalBlocks - 1)
    }

    @Test func writeThroughWritesAtOnce() throws {
        var o = FileDataTier.Options()
        o.writeBack = false
        let t = try CoreFixture(options: o)
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [UInt8](repeating: 4, count: 9000))
        #expect(try t.metadata.getattr(ino).size == 9000)   // committed already
        try t.crashAndReopen()
        #expect(try t.read(ino, 0, 9000) == [UInt8](repeating: 4, count: 9000))
    }

    @Test func fsyncedDataSurvivesACrashAndUnsyncedDataIsOldOrNew() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [UInt8](repeating: 1, count: 4096 * 4))
        try t.fs.fsync(ino)
        _ = try t.write(ino, 4096 * 4, [UInt8](repeating: 2, count: 4096))   // never synced
        try t.crashAndReopen()
        #expect(try t.metadata.getattr(ino).size == 4096 * 4)
        #expect(try t.read(ino, 0, 4096 * 5) == [UInt8](repeating: 1, count: 4096 * 4))
        #expect(try t.metadata.statistics().freeBlocks == t.metadata.statistics().totalBlocks - 4)
    }

    /// An fdatasync (alone, in a group, or an O_DSYNC write) of blocks
    /// overwritten in place with the size unchanged is the writes and one
    /// flush, no transaction: the new mtime waits in DRAM (stat shows it), and
    /// a later fsync or the background writer commits it. The data is durable
    /// either way. An append still commits (the size), mtime included.
    @Test func fdatasyncOfAnOverwriteCommitsNoTransaction() throws {
        var options = FileDataTier.Options()
        options.backgroundWriterLater = true   // no timer tick commits the mtime behind the counts
        let t = try CoreFixture(options: options)
        let a = try t.newFile("a"), b = try t.newFile("b")
        for ino in [a, b] {
            _ = try t.write(ino, 0, [UInt8](repeating: 1, count: 8192))
            try t.fs.fsync(ino)
        }
        let committed = try t.metadata.getattr(a).mtime
        waitForTheClock(toPass: committed)
        func expectNoTransaction(_ what: String, _ body: () throws -> Void) throws {
            let transactions = t.metadata.transactionCounts.committed, flushes = t.device.groupFlush.flushes
            try body()
            #expect(t.metadata.transactionCounts.committed == transactions, "\(what)")
            #expect(t.device.groupFlush.flushes == flushes + 1, "\(what)")
        }
        _ = try t.write(a, 4096, [UInt8](repeating: 2, count: 4096))
        try expectNoTransaction("fdatasync") { try t.fs.fsync(a, dataOnly: true) }
        #expect(try t.metadata.getattr(a).mtime == committed)
        #expect(try t.fs.getattr(a).mtime > committed)
        for ino in [a, b] { _ = try t.write(ino, 0, [UInt8](repeating: 3, count: 4096)) }
        try expectNoTransaction("a group of fdatasyncs") {
            #expect(t.fs.fsync(group: [(a, true), (b, true)]).allSatisfy { $0 == nil })
        }
        try expectNoTransaction("an O_DSYNC write") { _ = try t.write(b, 4096, [UInt8](repeating: 4, count: 4096), sync: .data) }
        try t.crashAndReopen()
        #expect(try t.read(a, 0, 8192) == [UInt8](repeating: 3, count: 4096) + [UInt8](repeating: 2, count: 4096))
        #expect(try t.read(b, 0, 8192) == [UInt8](repeating: 3, count: 4096) + [UInt8](repeating: 4, count: 4096))
        #expect(try t.metadata.getattr(a).mtime == committed)

        // fsync commits the mtime; so does an fdatasync that changes the size.
        _ = try t.write(a, 0, [5])
        let transactions = t.metadata.transactionCounts.committed
        try t.fs.fsync(a)
        #expect(t.metadata.transactionCounts.committed == transactions + 1)
        let synced = try t.metadata.getattr(a).mtime
        #expect(synced > committed)
        waitForTheClock(toPass: synced)
        _ = try t.write(a, 8192, [6])
        try t.fs.fsync(a, dataOnly: true)
        #expect(try t.metadata.getattr(a).size == 8193)
        #expect(try t.metadata.getattr(a).mtime > synced)

        // The background writer commits a pending mtime, with no flush.
        waitForTheClock(toPass: try t.metadata.getattr(a).mtime)
        _ = try t.write(a, 0, [7])
        try t.fs.fsync(a, dataOnly: true)
        let pending = try t.fs.getattr(a).mtime
        #expect(try t.metadata.getattr(a).mtime < pending)
        let flushes = t.device.groupFlush.flushes
        t.fs.startBackgroundWriter()
        let deadline = Deadline.after(.seconds(10))
        while try t.metadata.getattr(a).mtime != pending && !deadline.hasPassed { usleep(10_000) }
        #expect(try t.metadata.getattr(a).mtime == pending)
        #expect(t.device.groupFlush.flushes == flushes)
    }

    @Test func syncWritesAreDurableOnReturn() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [UInt8](repeating: 6, count: 5000), sync: .data)
        try t.crashAndReopen()
        #expect(try t.read(ino, 0, 5000) == [UInt8](repeating: 6, count: 5000))
    }

    @Test func readAheadGrowsOnSequentialReads() throws {
        let t = try CoreFixture()
        let ino = try t.newFile("f")
        _ = try t.write(ino, 0, [UInt8](repeating: 8, count: 1 << 20))
        try t.restart()
        var offset: UInt64 = 0
        while offset < 1 << 20 {
            #expect(try t.read(ino, offset, 4096) == [UInt8](repeating: 8, count: 4096))
            offset += 4096
        }
        let f = try t.fs.fileData(ino)
        #expect(f.readAheadBlocks > 8)
    }

    /// Writes are stamped as Linux stamps them: with the clock tick, so an
    /// fsync after overwrites within one tick has no mtime to commit (no
    /// transaction, as ext4 commits no journal); a write after a getattr
    /// changes the mtime to the nanosecond (multigrain), so a change a stat
    /// could tell apart is never hidden; and a file written after another was
    /// created is never stamped earlier than that creation.
    @Test func writesAreStampedWithTheClockTickUnlessTheMtimeWasSeen() throws {
        var options = FileDataTier.Options()
        options.backgroundWriterLater = true
        let t = try CoreFixture(options: options)
        let f = try t.newFile("f")
        var seen = try t.fs.getattr(f).mtime
        for i in 0..<50 {
            _ = try t.write(f, 0, [UInt8(i)])
            let now = try t.fs.getattr(f).mtime
            #expect(now > seen, "write \(i) after a getattr")
            seen = now
        }

        // Two overwrites in one tick: the second fsync commits nothing. A tick
        // may end between them, so this tries again until one does not.
        var checked = false
        for _ in 0..<20 where !checked {
            waitForTheNextClockTick()
            let tick = coarseClock()
            _ = try t.write(f, 0, [1])
            try t.fs.fsync(f)
            let transactions = t.metadata.transactionCounts.committed
            _ = try t.write(f, 0, [2])
            try t.fs.fsync(f)
            guard coarseClock() == tick else { continue }
            #expect(t.metadata.transactionCounts.committed == transactions)
            checked = true
        }
        #expect(checked, "no two overwrites fell in one clock tick in 20 tries")

        let other = try t.newFile("created later")
        _ = try t.write(f, 0, [3])
        try t.fs.fsync(f)
        #expect(try t.metadata.getattr(f).mtime >= t.metadata.getattr(other).mtime)
    }
}

/// The coarse clock file writes are stamped with (Linux's tick: 4 ms at
/// HZ=250, 10 ms at HZ=100), in ns.
private func coarseClock() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME_COARSE, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// Sleeps until the coarse clock has moved on at least once.
private func waitForTheNextClockTick() {
    let start = coarseClock()
    while coarseClock() == start { usleep(500) }
}

/// Sleeps until the coarse clock is past `t`, so that a write is stamped
/// later than `t` (that clock may lag the fine one by more than a tick).
private func waitForTheClock(toPass t: Timestamp) {
    let target = t.seconds * 1_000_000_000 + Int64(t.nanoseconds)
    while coarseClock() <= target { usleep(500) }
}
