import Glibc
import PMFSConcurrency
import PMFSData
import Synchronization
import Testing

/// Group commit of device flushes: concurrent callers share flushes, a lone
/// caller starts its own at once, and every caller is covered by a flush
/// that started after it arrived.
@Suite struct GroupFlushTests {
    struct Failed: Error {}

    @Test func aLoneCallerFlushesAtOnce() throws {
        let group = GroupFlush()
        var runs = 0
        for _ in 0..<3 { try group.flush { runs += 1 } }
        #expect(runs == 3)
        #expect(group.flushes == 3)
    }

    @Test func concurrentCallersShareFlushesAndEachIsCovered() throws {
        let group = GroupFlush()
        // Each flush records the arrival count at its start; every caller must
        // return only after a flush that started after its arrival.
        let arrivals = Atomic<Int>(0)
        let startedAtArrivals = Mutex<[Int]>([])
        let uncovered = Atomic<Int>(0)
        let callers = 8, rounds = 50
        var threads: [JoinableThread] = []
        for _ in 0..<callers {
            let thread = JoinableThread.spawn {
                for _ in 0..<rounds {
                    let me = arrivals.add(1, ordering: .sequentiallyConsistent).newValue
                    try? group.flush {
                        startedAtArrivals.withLock { $0.append(arrivals.load(ordering: .sequentiallyConsistent)) }
                        usleep(300)   // a device flush takes a while
                    }
                    let coveredBy = startedAtArrivals.withLock { $0.contains { $0 >= me } }
                    if !coveredBy { uncovered.add(1, ordering: .relaxed) }
                }
            }
            #expect(thread != nil)
            if let thread { threads.append(thread) }
        }
        for t in threads { t.join() }
        #expect(uncovered.load(ordering: .relaxed) == 0)
        #expect(group.callers == UInt64(callers * rounds))
        // Shared: clearly fewer flushes than callers (one per caller would be 400).
        #expect(group.flushes < UInt64(callers * rounds) * 3 / 4)
    }

    @Test func aFailedFlushIsReportedToItsCallers() throws {
        let group = GroupFlush()
        #expect(throws: Failed.self) { try group.flush { throw Failed() } }
        // A later caller needs a later flush, which succeeds.
        try group.flush {}
    }
}
