import Dispatch
import FUSEProtocol
import Glibc
import Synchronization

/// POSIX record locks (per owner, byte ranges, split and merged as fcntl does)
/// and flock locks (per open file, whole file), per inode. SETLKW waiters are
/// parked with their reply and woken when a lock goes away, or ended with EINTR
/// by an INTERRUPT. Locks are advisory and live in DRAM: a restart drops them,
/// as a reboot drops a local file system's.
///
/// A non-blocking flock that finds the file locked waits `releaseGrace` for
/// the lock to go before it answers EAGAIN: the kernel sends the RELEASE that
/// drops a closed file's flock in the background after close(2) returned,
/// and over several queues (FUSE over io_uring's per-CPU queues, a guest's
/// request queues) a flock asked for next may be served first.
final class LockManager: Sendable {
    /// Long enough for another queue's thread to be scheduled on a loaded host.
    static let releaseGrace: DispatchTimeInterval = .milliseconds(30)

    struct Held: Equatable {
        var owner: UInt64
        var session: UInt64
        var pid: UInt32
        var type: Int32
        var start: UInt64
        var end: UInt64        // inclusive
        var flock: Bool
        /// The open file (FUSE handle) the lock was set through; RELEASE of it
        /// drops what is left (open-file-description locks).
        var handle: UInt64 = 0
    }

    struct Waiter {
        var unique: UInt64
        var ino: UInt64
        var wanted: Held
        var reply: @Sendable (Int32) -> Void
        /// A non-blocking flock waiting out `releaseGrace`: EAGAIN when it ends.
        var trial = false
    }

    private struct State {
        var locks: [UInt64: [Held]] = [:]
        var waiters: [Waiter] = []
        /// Lock records held, per session (for the per-session limit).
        var records: [UInt64: Int] = [:]
    }

    private let state = Mutex(State())

    private static func conflicts(_ a: Held, _ b: Held) -> Bool {
        guard a.flock == b.flock, a.owner != b.owner || a.session != b.session else { return false }
        guard a.type == F_WRLCK || b.type == F_WRLCK else { return false }
        return a.start <= b.end && b.start <= a.end
    }

    func test(ino: UInt64, _ wanted: Held) -> Held? {
        state.withLock { s in s.locks[ino]?.first { Self.conflicts($0, wanted) } }
    }

    /// Applies a lock or unlock; false if a conflicting lock is held.
    private static func apply(_ s: inout State, ino: UInt64, _ wanted: Held) -> Bool {
        var list = s.locks[ino] ?? []
        if wanted.type != F_UNLCK, list.contains(where: { conflicts($0, wanted) }) { return false }
        let before = list.count
        // Remove this owner's overlap with the range, keeping the parts outside it.
        var kept: [Held] = []
        for h in list {
            guard h.owner == wanted.owner, h.session == wanted.session, h.flock == wanted.flock, h.start <= wanted.end, wanted.start <= h.end else {
                kept.append(h)
                continue
            }
            if h.start < wanted.start { var left = h; left.end = wanted.start - 1; kept.append(left) }
            if h.end > wanted.end { var right = h; right.start = wanted.end + 1; kept.append(right) }
        }
        list = kept
        if wanted.type != F_UNLCK {
            var merged = wanted
            // Merge with adjacent or overlapping ranges of the same owner and type.
            list.removeAll { h in
                guard h.owner == merged.owner, h.session == merged.session, h.flock == merged.flock, h.type == merged.type else { return false }
                let touching = h.start <= merged.end &+ 1 && merged.start <= h.end &+ 1
                if touching { merged.start = min(merged.start, h.start); merged.end = max(merged.end, h.end) }
                return touching
            }
            list.append(merged)
        }
        s.locks[ino] = list.isEmpty ? nil : list
        count(&s, session: wanted.session, by: list.count - before)   // only this owner's records changed
        return true
    }

    private static func count(_ s: inout State, session: UInt64, by delta: Int) {
        guard delta != 0 else { return }
        let n = (s.records[session] ?? 0) + delta
        s.records[session] = n > 0 ? n : nil
    }

    /// Lock records `session` holds now.
    func records(of session: UInt64) -> Int { state.withLock { $0.records[session] ?? 0 } }

    /// What one session may hold in the table (PMFSOperations.Limits).
    struct Limits {
        var records: Int
        var waiters: Int
    }

    /// SETLK / SETLKW. The reply is sent now, or when the lock is granted.
    /// ENOLCK when the lock would take the session past its records (an
    /// unlock inside a range splits it: one more), or its wait past its waiters.
    func set(ino: UInt64, unique: UInt64, _ wanted: Held, wait: Bool, limits: Limits, reply: @escaping @Sendable (Int32) -> Void) {
        var granted: [Waiter] = []
        var trial = false
        let answer: Int32? = state.withLock { s in
            let saved = (list: s.locks[ino], records: s.records[wanted.session] ?? 0)
            if Self.apply(&s, ino: ino, wanted) {
                let records = s.records[wanted.session] ?? 0
                if records > limits.records && records > saved.records {
                    s.locks[ino] = saved.list
                    s.records[wanted.session] = saved.records > 0 ? saved.records : nil
                    return ENOLCK
                }
                granted = Self.wake(&s, ino: ino)
                return 0
            }
            let room = s.waiters.lazy.filter({ $0.wanted.session == wanted.session }).count < limits.waiters
            if !wait {
                guard wanted.flock, room else { return EAGAIN }
                trial = true
            } else if !room {
                return ENOLCK
            }
            s.waiters.append(Waiter(unique: unique, ino: ino, wanted: wanted, reply: reply, trial: trial))
            return nil
        }
        if let answer { reply(answer) }
        for w in granted { w.reply(0) }
        if trial && answer == nil {
            DispatchQueue.global().asyncAfter(deadline: .now() + Self.releaseGrace) { [self] in
                endTrial(unique: unique, session: wanted.session)
            }
        }
    }

    /// A trial's grace is over: EAGAIN, unless a release granted it meanwhile.
    private func endTrial(unique: UInt64, session: UInt64) {
        let ended: Waiter? = state.withLock { s in
            guard let i = s.waiters.firstIndex(where: { $0.trial && $0.unique == unique && $0.wanted.session == session }) else { return nil }
            return s.waiters.remove(at: i)
        }
        ended?.reply(EAGAIN)
    }

    /// Grants every waiter (on `ino`, or on any inode) that can now have its
    /// lock (lock held). Whole passes, repeated while one grants something (a
    /// grant replaces the owner's own ranges, which may free others'): it used
    /// to start over after each grant, quadratic in the waiters.
    private static func wake(_ s: inout State, ino: UInt64? = nil) -> [Waiter] {
        var granted: [Waiter] = []
        var progress = true
        while progress {
            progress = false
            var kept: [Waiter] = []
            kept.reserveCapacity(s.waiters.count)
            for w in s.waiters {
                if ino == nil || w.ino == ino, apply(&s, ino: w.ino, w.wanted) {
                    granted.append(w)
                    progress = true
                } else {
                    kept.append(w)
                }
            }
            s.waiters = kept
        }
        return granted
    }

    /// Drops every POSIX lock of `owner` on `ino` (close of any descriptor, FLUSH).
    func releasePosix(ino: UInt64, owner: UInt64, session: UInt64) {
        releaseWhere(ino: ino) { $0.owner == owner && $0.session == session && !$0.flock }
    }

    /// Drops the POSIX-type locks set through `handle` (last close of that open
    /// file). For OFD locks (F_OFD_SETLK) this is their only release: the kernel
    /// sends FUSE no unlock for them. Process-owned POSIX locks set through the
    /// handle are already gone by then (every close sends FLUSH for its owner).
    func releaseHandle(ino: UInt64, handle: UInt64, session: UInt64) {
        releaseWhere(ino: ino) { $0.handle == handle && $0.session == session && !$0.flock }
    }

    /// Drops the flock of `owner` on `ino` (last close of the open file).
    func releaseFlock(ino: UInt64, owner: UInt64, session: UInt64) {
        releaseWhere(ino: ino) { $0.owner == owner && $0.session == session && $0.flock }
    }

    /// Drops every lock and wait of a session that ended.
    func releaseSession(_ session: UInt64) {
        let (granted, cancelled): ([Waiter], [Waiter]) = state.withLock { s in
            for (ino, list) in s.locks {
                let rest = list.filter { $0.session != session }
                s.locks[ino] = rest.isEmpty ? nil : rest
            }
            s.records[session] = nil
            let mine = s.waiters.filter { $0.wanted.session == session }
            s.waiters.removeAll { $0.wanted.session == session }
            return (Self.wake(&s), mine)
        }
        for w in cancelled { w.reply(EINTR) }
        for w in granted { w.reply(0) }
    }

    private func releaseWhere(ino: UInt64, _ match: (Held) -> Bool) {
        // (a closure over the lock state: called with the lock held)
        let granted: [Waiter] = state.withLock { s in
            guard let list = s.locks[ino], list.contains(where: match) else { return [] }
            let rest = list.filter { !match($0) }
            for h in list where match(h) { Self.count(&s, session: h.session, by: -1) }
            s.locks[ino] = rest.isEmpty ? nil : rest
            return Self.wake(&s, ino: ino)
        }
        for w in granted { w.reply(0) }
    }

    /// INTERRUPT: a waiting SETLKW of `session` gives up with EINTR.
    func interrupt(unique: UInt64, session: UInt64) {
        let victim: Waiter? = state.withLock { s in
            guard let i = s.waiters.firstIndex(where: { $0.unique == unique && $0.wanted.session == session }) else { return nil }
            return s.waiters.remove(at: i)
        }
        victim?.reply(EINTR)
    }
}
