import CPMFSConcurrency
import Glibc
@testable import PMFSConcurrency
import Synchronization
import Testing

/// A counter the tests guard with the kit's locks (deliberately not atomic).
private final class Counter: @unchecked Sendable {
    var value = 0
}

/// Runs `count` threads of `body(index)` and joins them all.
private func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let threads = (0..<count).map { i in JoinableThread.spawn { body(i) } }
    for t in threads { #expect(t != nil); t?.join() }
}

/// Spins (yielding) until `condition` holds or `seconds` pass; whether it held.
private func eventually(seconds: UInt64 = 10, _ condition: () -> Bool) -> Bool {
    let deadline = Deadline.after(nanoseconds: seconds * 1_000_000_000)
    while !condition() {
        if deadline.hasPassed { return false }
        sched_yield()
    }
    return true
}

@Suite struct LockTests {
    @Test func excludesUnderContention() {
        let lock = Lock(), counter = Counter()
        let inside = Atomic<Int>(0), mostInside = Atomic<Int>(0)
        runThreads(4) { _ in
            for _ in 0..<20_000 {
                lock.withLock {
                    let n = inside.wrappingAdd(1, ordering: .relaxed).newValue
                    mostInside.max(n, ordering: .relaxed)
                    counter.value += 1
                    inside.wrappingSubtract(1, ordering: .relaxed)
                }
            }
        }
        #expect(counter.value == 80_000)
        let most = mostInside.load(ordering: .relaxed)
        #expect(most == 1)
    }

    @Test func tryLockFailsWhileHeldElsewhere() {
        let lock = Lock()
        let held = Atomic<Bool>(false), release = Atomic<Bool>(false)
        let holder = JoinableThread.spawn {
            lock.lock()
            held.store(true, ordering: .releasing)
            while !release.load(ordering: .acquiring) { sched_yield() }
            lock.unlock()
        }
        let holding = eventually { held.load(ordering: .acquiring) }
        #expect(holding)
        #expect(!lock.tryLock())
        release.store(true, ordering: .releasing)
        holder?.join()
        #expect(lock.tryLock())
        lock.unlock()
    }
}

@Suite struct ReadWriteLockTests {
    @Test func readersShareTheLock() {
        let rw = ReadWriteLock()
        let readers = Atomic<Int>(0)
        // Each reader stays inside until both are: only possible if they share it.
        runThreads(2) { _ in
            rw.withReadLock {
                readers.wrappingAdd(1, ordering: .relaxed)
                let bothInside = eventually { readers.load(ordering: .relaxed) == 2 }
                #expect(bothInside)
            }
        }
    }

    @Test func writersExcludeReadersAndWriters() {
        let rw = ReadWriteLock(), counter = Counter()
        let readers = Atomic<Int>(0), writers = Atomic<Int>(0), violations = Atomic<Int>(0)
        runThreads(4) { i in
            for _ in 0..<5_000 {
                if i % 2 == 0 {
                    rw.withWriteLock {
                        let w = writers.wrappingAdd(1, ordering: .relaxed).newValue
                        if w != 1 || readers.load(ordering: .relaxed) != 0 { violations.wrappingAdd(1, ordering: .relaxed) }
                        counter.value += 1
                        writers.wrappingSubtract(1, ordering: .relaxed)
                    }
                } else {
                    rw.withReadLock {
                        readers.wrappingAdd(1, ordering: .relaxed)
                        if writers.load(ordering: .relaxed) != 0 { violations.wrappingAdd(1, ordering: .relaxed) }
                        _ = counter.value
                        readers.wrappingSubtract(1, ordering: .relaxed)
                    }
                }
            }
        }
        let broken = violations.load(ordering: .relaxed)
        #expect(broken == 0)
        #expect(counter.value == 10_000)
    }

    @Test func explicitReadLockKeepsWritersOut() {
        let rw = ReadWriteLock()
        rw.lockForReading()
        #expect(!canTakeWriteLock(rw))
        rw.unlock()
        #expect(canTakeWriteLock(rw))
        rw.lockForWriting()
        #expect(!canTakeWriteLock(rw))
        rw.unlock()
    }
}

/// Whether another thread could take `rw` for writing now (it tries, and
/// releases at once if it got it).
private func canTakeWriteLock(_ rw: ReadWriteLock) -> Bool {
    let got = Atomic<Bool>(false)
    let probe = JoinableThread.spawn {
        if pthread_rwlock_trywrlock(rw.rwlock) == 0 { got.store(true, ordering: .relaxed); rw.unlock() }
    }
    probe?.join()
    return got.load(ordering: .relaxed)
}

@Suite struct ConditionLockTests {
    @Test func timedWaitReturnsAfterItsTimeout() {
        let c = ConditionLock()
        let start = monotonicNanoseconds()
        let signalled = c.withLock { c.wait(milliseconds: 50) }
        let waited = monotonicNanoseconds() - start
        #expect(!signalled)
        #expect(waited >= 50_000_000)
    }

    @Test func timedWaitReturnsEarlierOnSignal() {
        let c = ConditionLock(), ready = Counter()
        let signaller = JoinableThread.spawn {
            c.withLock { ready.value = 1; c.signal() }
        }
        let deadline = Deadline.after(nanoseconds: 60 * 1_000_000_000)
        let woken = c.withLock {
            while ready.value == 0 { if !c.wait(until: deadline) { return false } }
            return true
        }
        signaller?.join()
        #expect(woken)
        #expect(!deadline.hasPassed)
    }

    @Test func broadcastWakesEveryWaiter() {
        let c = ConditionLock(), go = Counter(), waiting = Counter()
        let woke = Atomic<Int>(0)
        let waiters = (0..<3).map { _ in
            JoinableThread.spawn {
                c.withLock {
                    waiting.value += 1
                    // Not signal: that could wake another waiter instead of the test.
                    c.broadcast()
                    while go.value == 0 { c.wait() }
                }
                woke.wrappingAdd(1, ordering: .relaxed)
            }
        }
        c.withLock {
            while waiting.value < 3 { c.wait() }
            go.value = 1
            c.broadcast()
        }
        for w in waiters { w?.join() }
        let woken = woke.load(ordering: .relaxed)
        #expect(woken == 3)
    }
}

@Suite struct JoinableThreadTests {
    @Test func runsItsClosureAndJoins() {
        let ran = Counter()
        let t = JoinableThread.spawn { ran.value = 42 }
        #expect(t != nil)
        t?.join()
        #expect(ran.value == 42)
        t?.join()   // a second join returns at once
    }

    @Test func notStartedUntilStart() {
        let ran = Atomic<Bool>(false)
        let t = JoinableThread { ran.store(true, ordering: .relaxed) }
        t.join()   // never started: returns at once
        let ranEarly = ran.load(ordering: .relaxed)
        #expect(!ranEarly)
        #expect(t.start())
        t.join()
        let ranAfterStart = ran.load(ordering: .relaxed)
        #expect(ranAfterStart)
    }

    @Test func setsItsName() {
        let seen = Counter()
        let name = Mutex<String>("")
        let t = JoinableThread.spawn(name: "pmfs-kit-test-long-name") {
            var buffer = [CChar](repeating: 0, count: 32)
            seen.value = Int(cpmfs_thread_name(&buffer, buffer.count))
            let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
            name.withLock { $0 = String(decoding: bytes, as: UTF8.self) }
        }
        t?.join()
        #expect(seen.value == 0)
        #expect(name.withLock { $0 } == "pmfs-kit-test-l")
    }
}

@Suite struct DeadlineTests {
    @Test func clockMovesForward() {
        let a = monotonicNanoseconds()
        let b = monotonicNanoseconds()
        #expect(b >= a)
        #expect(a > 0)
    }

    @Test func deadlines() {
        #expect(Deadline.after(nanoseconds: 0).hasPassed)
        #expect(Deadline.after(.seconds(-1)).hasPassed)
        let far = Deadline.after(nanoseconds: .max)
        #expect(far.nanoseconds == .max)
        #expect(!far.hasPassed)
        let soon = Deadline.after(.seconds(3600))
        #expect(soon.remainingNanoseconds > 3_599_000_000_000 && soon.remainingNanoseconds <= 3_600_000_000_000)
        #expect(Deadline.after(nanoseconds: 0).remainingNanoseconds == 0)
        #expect(Deadline(nanoseconds: 1) < Deadline(nanoseconds: 2))
    }
}
