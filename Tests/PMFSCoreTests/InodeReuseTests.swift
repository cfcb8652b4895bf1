import Glibc
import PMFSCheck
import PMFSConcurrency
import Synchronization
import Testing
@testable import PMFSCore
@testable import PMFSMetadata

/// A freed inode's number is given to the next new file at once. State kept for
/// the old file (its cached pages, a write-back in progress) must never reach
/// the new one: the mount stress test once read a new 50-byte file whose size
/// was the 70,040 bytes of the file freed before it.
@Suite struct InodeReuseTests {
    /// One thread makes a file with dirty data, unlinks it and drops the last
    /// reference (as the kernel's FORGET does), then makes a small file that
    /// takes the same number; another thread writes back all the while. Each
    /// small file must keep exactly its own size and bytes, in DRAM and in the pool.
    @Test func writeBackRacingTheLastReferenceNeverReachesTheNextFile() throws {
        let t = try CoreFixture()
        let stop = Atomic<Bool>(false)
        let writeBacks = Atomic<Int>(0)
        let fs = t.fs!
        // A thread of its own: a global queue's worker may not start while the
        // other suites keep the pool busy, and then nothing races.
        let writer = JoinableThread {
            while !stop.load(ordering: .relaxed) {
                try? fs.syncAll()
                writeBacks.add(1, ordering: .relaxed)
            }
        }
        writer.start()
        defer { if !stop.exchange(true, ordering: .relaxed) { writer.join() } }
        while writeBacks.load(ordering: .relaxed) == 0 { usleep(1000) }

        var rng = SplitMix64(seed: 7)
        var small: [(ino: UInt64, generation: UInt64, bytes: [UInt8])] = []
        var reused = 0
        let deadline = Deadline.after(.seconds(2))
        var round = 0
        // At most `maxRounds`: each round keeps a one-block file, and a fast
        // machine filled the fixture's 16,384 blocks within the two seconds.
        let maxRounds = 4000
        while (!deadline.hasPassed || round < 50) && round < maxRounds {
            round += 1
            let big = try t.metadata.create(1, try FileName("big-\(round)"), NewInode(mode: UInt32(S_IFREG) | 0o644), pin: true)
            let bigBytes = [UInt8](repeating: UInt8(truncatingIfNeeded: round), count: 4096 * Int.random(in: 2...20, using: &rng) + 40)
            _ = try t.write(big.ino, 0, bigBytes)
            try t.metadata.unlink(1, try FileName("big-\(round)"))
            try t.metadata.unpin(big.ino)                     // freed here, or at the end of a write-back
            let next = try t.metadata.create(1, try FileName("small-\(round)"), NewInode(mode: UInt32(S_IFREG) | 0o644))
            if next.ino == big.ino { reused += 1 }
            let bytes = (0..<50).map { UInt8(truncatingIfNeeded: $0 &+ round) }
            _ = try t.write(next.ino, 0, bytes)
            #expect(try t.fs.getattr(next.ino).size == 50, "round \(round)")
            small.append((next.ino, next.generation, bytes))
        }
        stop.store(true, ordering: .relaxed)
        writer.join()
        #expect(reused > small.count / 2, "numbers were not reused: the test did not test")
        #expect(writeBacks.load(ordering: .relaxed) > 10)
        try t.fs.syncAll()
        for s in small {
            #expect(try t.metadata.getattr(s.ino).size == 50, "inode \(s.ino) in the pool")
            #expect(try t.read(s.ino, 0, 8192) == s.bytes, "inode \(s.ino)")
        }
        try t.fs.shutdown()
        t.device.close()
        try t.metadata.close()
        let report = try FileSystemChecker(poolPath: t.poolPath).run(CheckOptions())
        #expect(report.problems.isEmpty, "\(report.problems.map { "\($0.code): \($0.message)" })")
        try t.restartFromClosed()
        for s in small { #expect(try t.read(s.ino, 0, 8192) == s.bytes, "inode \(s.ino) after a restart") }
    }
}
