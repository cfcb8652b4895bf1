import CFUSE
import Glibc
import Synchronization
import Testing
@testable import FUSEProtocol
@testable import VhostUser
import VhostUserFrontEnd

/// Where guest requests run: a lone request that may block (FSYNC) runs to
/// completion on its queue's worker (no hand-over), while FSYNCs queued
/// behind one another go to the request pool and run side by side. Driven
/// through the real backend by the VhostUserFrontEnd (memfd memory, split
/// rings, eventfds).
@Suite(.serialized) struct RequestPathTests {
    final class Record: @unchecked Sendable {
        let threads = Mutex<[String: Set<UInt>]>([:])
        let inFsync = Atomic<Int>(0)
        let mostAtOnce = Atomic<Int>(0)
        func note(_ what: String) { threads.withLock { $0[what, default: []].insert(UInt(pthread_self())) } }
    }

    func served(_ record: Record, fsyncMicroseconds: UInt32) throws -> (RunningBackend, VhostUserFrontEnd) {
        let ops = StubOperations()
        ops.onGetattr = { record.note("getattr") }
        ops.onFsync = {
            record.note("fsync")
            let now = record.inFsync.add(1, ordering: .sequentiallyConsistent).newValue
            _ = record.mostAtOnce.max(now, ordering: .sequentiallyConsistent)
            usleep(fsyncMicroseconds)
            record.inFsync.subtract(1, ordering: .sequentiallyConsistent)
        }
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

    @Test func queuedFsyncsRunSideBySide() throws {
        let record = Record()
        let (running, frontEnd) = try served(record, fsyncMicroseconds: 20_000)
        let client = FUSEClient(frontEnd)
        let ring = frontEnd.ring(1)
        var f = fuse_fsync_in()
        f.fh = 1
        let slots = (0..<8).compactMap { _ in
            ring.submit(client.message(FUSE_FSYNC, nodeid: 2, FUSEClient.bytes(f)), replyCapacity: 64, kick: false)
        }
        #expect(slots.count == 8)
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
        #expect(record.mostAtOnce.load(ordering: .sequentiallyConsistent) >= 2)
        #expect(record.threads.withLock { $0["fsync"]?.count ?? 0 } >= 2)
        #expect(running.stop())
    }
}
