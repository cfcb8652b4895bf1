import CFUSE
@testable import FUSEProtocol
import Glibc
import Synchronization
import Testing
@testable import PMFSServer

/// Per-session limits, set small: open handles (EMFILE), lock records and
/// SETLKW waiters (ENOLCK); other sessions are not held to one session's use.
@Suite struct SessionLimitTests {
    let root = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)

    final class Answers: Sendable {
        private let list = Mutex<[Int32]>([])
        func add(_ e: Int32) { list.withLock { $0.append(e) } }
        var all: [Int32] { list.withLock { $0 } }
    }

    func lock(_ ops: PMFSOperations, _ ino: UInt64, owner: UInt64, _ start: UInt64, _ end: UInt64, type: Int32 = F_WRLCK,
              wait: Bool = false, unique: UInt64 = 1, into answers: Answers) {
        let r = FUSERequest(unique: unique, nodeid: ino, uid: 0, gid: 0, pid: 1, opcode: 0)
        ops.setlk(r, nodeid: ino, handle: 0, owner: owner, lock: FUSELock(start: start, end: end, type: type, pid: 1), flock: false,
                  wait: wait) { answers.add($0) }
    }

    @Test func openHandlesBeyondTheLimitAreEMFILE() throws {
        let s = try PoolSessions()
        var limits = PMFSOperations.Limits()
        limits.openHandles = 2
        let ops = PMFSOperations(metadata: s.metadata, fs: s.fs, group: s.group, limits: limits)
        let (f, first) = try ops.create(root, parent: 1, name: Array("f".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        _ = try ops.opendir(root, nodeid: 1, flags: 0)
        #expect(throws: FUSEError(EMFILE)) { _ = try ops.open(root, nodeid: f.nodeid, flags: UInt32(O_RDONLY), killSuidGid: false) }
        #expect(throws: FUSEError(EMFILE)) { _ = try ops.create(root, parent: 1, name: Array("g".utf8), mode: 0o644, flags: 0, umask: 0) }
        #expect(throws: FUSEError(ENOENT)) { _ = try ops.lookup(root, parent: 1, name: Array("g".utf8)) }   // nothing made
        // Another session has its own count; a release frees a slot.
        _ = try s.session().opendir(root, nodeid: 1, flags: 0)
        try ops.release(root, nodeid: f.nodeid, handle: first.handle, flags: 0, releaseFlags: 0, lockOwner: 0)
        _ = try ops.open(root, nodeid: f.nodeid, flags: UInt32(O_RDONLY), killSuidGid: false)
    }

    @Test func lockRecordsBeyondTheLimitAreENOLCK() throws {
        let s = try PoolSessions()
        let ops = s.session()
        ops.limits.lockRecords = 2
        let (f, _) = try ops.create(root, parent: 1, name: Array("l".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        let a = Answers()
        lock(ops, f.nodeid, owner: 1, 0, 100, into: a)              // one record
        lock(ops, f.nodeid, owner: 1, 10, 10, type: F_UNLCK, into: a) // split: two
        lock(ops, f.nodeid, owner: 1, 20, 20, type: F_UNLCK, into: a) // would be three
        lock(ops, f.nodeid, owner: 2, 200, 300, into: a)            // would be three
        #expect(a.all == [0, 0, ENOLCK, ENOLCK])
        // The refused split left the lock as it was: another session sees 20 locked.
        let other = s.session()
        _ = try other.lookup(root, parent: 1, name: Array("l".utf8))
        let seen = try other.getlk(root, nodeid: f.nodeid, handle: 0, owner: 9, lock: FUSELock(start: 20, end: 20, type: Int32(F_RDLCK), pid: 2), flock: false)
        #expect(seen.type == F_WRLCK)
        // Unlocking frees records; the next lock is served.
        lock(ops, f.nodeid, owner: 1, 0, 100, type: F_UNLCK, into: a)
        lock(ops, f.nodeid, owner: 2, 200, 300, into: a)
        #expect(a.all.suffix(2) == [0, 0])
    }

    @Test func waitersBeyondTheLimitAreENOLCKAndManyWaitersAreAllWoken() throws {
        let s = try PoolSessions()
        let holder = s.session(), guest = s.session(), other = s.session()
        guest.limits.lockWaiters = 1
        let (f, _) = try holder.create(root, parent: 1, name: Array("w".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        for ops in [guest, other] { _ = try ops.lookup(root, parent: 1, name: Array("w".utf8)) }
        let held = Answers(), waits = Answers(), others = Answers()
        lock(holder, f.nodeid, owner: 1, 0, .max, into: held)
        lock(guest, f.nodeid, owner: 2, 0, 0, type: F_RDLCK, wait: true, unique: 10, into: waits)
        lock(guest, f.nodeid, owner: 3, 1, 1, type: F_RDLCK, wait: true, unique: 11, into: waits)
        #expect(waits.all == [ENOLCK])
        // Another session may still wait, many times over; one release wakes them all.
        for i in 0..<2_000 as Range<UInt64> {
            lock(other, f.nodeid, owner: 100 + i, i, i, type: F_RDLCK, wait: true, unique: 100 + i, into: others)
        }
        #expect(others.all.isEmpty)
        lock(holder, f.nodeid, owner: 1, 0, .max, type: F_UNLCK, into: held)
        #expect(held.all == [0, 0])
        #expect(waits.all == [ENOLCK, 0])
        #expect(others.all.count == 2_000 && others.all.allSatisfy { $0 == 0 })
    }
}
