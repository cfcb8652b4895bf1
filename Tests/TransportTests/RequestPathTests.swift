import CFUSE
import Glibc
import Synchronization
import Testing
@testable import FUSEProtocol
@testable import VhostUser
import VhostUserFrontEnd

/// Where guest requests run: a lone request that may block (FSYNC) runs to
/// completion on its queue's worker (no hand-over), and FSYNCs queued behind
/// one another are committed as one group there (one device flush). Driven
/// through the real backend by the VhostUserFrontEnd (memfd memory, split
/// rings, eventfds).
@Suite(.serialized) struct RequestPathTests {
    final class Record: @unchecked Sendable {
        let threads = Mutex<[String: Set<UInt>]>([:])
        let groups = Mutex<[Int]>([])
        func note(_ what: String) { threads.withLock { $0[what, default: []].insert(UInt(pthread_self())) } }
    }

    func served(_ record: Record, fsyncMicroseconds: UInt32) throws -> (RunningBackend, VhostUserFrontEnd) {
        let ops = StubOperations()
        ops.onGetattr = { record.note("getattr") }
        ops.onFsync = {
            record.note("fsync")
            usleep(fsyncMicroseconds)
        }
        ops.onFsyncGroup = { n in record.groups.withLock { $0.append(n) } }
        let running = try RunningBackend(operations: ops)
        var options = VhostUserFrontEnd.Options()
        options.slotBytes = 64 << 10
        let frontEnd = try VhostUserFrontEnd(socketPath: running.path, options: options)
        _ = try FUSEClient(frontEnd).initialize()
        return (running, frontEnd)
    }

    @Test func aLoneFsyncRunsOnTheQueueWorker() throws {
        let record = Record()
        let (running, frontEnd) = try served(record, fsyncMicroseconds: 100)
        let client = FUSEClient(frontEnd)
        for _ in 0..<20 {
            _ = try client.getattr(1)
            try client.fsync(2, handle: 1)
        }
        let threads = record.threads.withLock { $0 }
        #expect(threads["getattr"]?.count == 1)
        #expect(threads["fsync"] == threads["getattr"])
        #expect(running.stop())
    }

    @Test func queuedFsyncsAreCommittedAsOneGroupOnTheQueueWorker() throws {
        let record = Record()
        let (running, frontEnd) = try served(record, fsyncMicroseconds: 1_000)
        let client = FUSEClient(frontEnd)
        _ = try client.getattr(1)
        let ring = frontEnd.ring(1)
        var f = fuse_fsync_in()
        f.fh = 1
        let slots = (0..<8).compactMap { _ in
            ring.submit(client.message(FUSE_FSYNC, nodeid: 2, FUSEClient.bytes(f)), replyCapacity: 64, kick: false)
        }
        #expect(slots.count == 8)
        _ = ring.takeCalls()   // the GETATTR's
        ring.kick()
        var answered = 0
        while answered < slots.count {
            for (_, reply) in ring.reapAny() {
                #expect(reply.count == MemoryLayout<fuse_out_header>.size)
                #expect(reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: Int32.self) } == 0)
                answered += 1
            }
            if answered < slots.count { try ring.waitForCall(timeoutMilliseconds: 5_000) }
        }
        // All eight were available at the one kick: one pass, one group (two
        // if the worker, not yet asleep, took the first as it came).
        let groups = record.groups.withLock { $0 }
        #expect(groups.reduce(0, +) == 8 && groups.count <= 2, "groups: \(groups)")
        // A group's replies wake the driver once, not once each.
        let calls = ring.takeCalls()
        #expect(calls >= 1 && calls <= UInt64(groups.count), "calls: \(calls), groups: \(groups)")
        // The first group is committed on the queue's worker. A second one
        // followed a 1 ms commit that requests waited behind, so it may go to
        // the pool (CommitHandOver): never more threads than groups.
        let threads = record.threads.withLock { $0 }
        let worker = try #require(threads["getattr"])
        let fsyncThreads = threads["fsync"] ?? []
        #expect(worker.count == 1 && fsyncThreads.isSuperset(of: worker), "threads: \(threads)")
        #expect(fsyncThreads.count <= groups.count, "threads: \(threads), groups: \(groups)")
        #expect(running.stop())
    }
}
