import CFUSE
@testable import FUSEProtocol
import FUSETestSupport
import Glibc
import PMFSMetadata
import Testing
@testable import PMFSServer

/// INTERRUPT names a request by its `unique`, which is only unique within one
/// connection: a guest must not end another session's wait.
@Suite struct InterruptScopeTests {
    @Test func interruptEndsOnlyTheSameSessionsWait() throws {
        let s = try PoolSessions()
        let holder = s.session(), a = s.session(), b = s.session()
        let r = FUSERequest(unique: 7, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)
        let (e, o) = try holder.create(r, parent: 1, name: Array("l".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        let whole = FUSELock(start: 0, end: .max, type: Int32(F_WRLCK), pid: 1)
        let got = Replies()
        holder.setlk(r, nodeid: e.nodeid, handle: o.handle, owner: 1, lock: whole, flock: false, wait: false) { got.all.append([UInt8(clamping: $0)]) }
        #expect(got.all == [[0]])
        // Session a waits as request 7; session b interrupts its own request 7.
        _ = try a.lookup(r, parent: 1, name: Array("l".utf8))
        let waits = Replies()
        a.setlk(r, nodeid: e.nodeid, handle: 0, owner: 2, lock: whole, flock: false, wait: true) { waits.all.append([UInt8(clamping: $0)]) }
        #expect(waits.all.isEmpty)
        b.interrupt(unique: 7)
        #expect(waits.all.isEmpty)
        a.interrupt(unique: 7)
        #expect(waits.all == [[UInt8(EINTR)]])
    }
}
