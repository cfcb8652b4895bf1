import Testing
import PMFSConcurrency

/// How long a queue worker polls before it sleeps, from the guest's pace.
@Suite struct PollWindowTests {
    @Test func growsToCoverAQuickGuestAndShrinksForASlowOne() {
        var p = PollWindow(limit: 50_000)
        var now: UInt64 = 1_000_000
        #expect(p.window == 0)
        // Requests 20 µs after each answer: after one wake-up the window covers them.
        p.answered(at: now); now += 20_000
        p.wokeUp(at: now)
        #expect(p.window >= 20_000 && p.window <= 50_000)
        p.polled(success: true)
        #expect(p.window >= 20_000)
        // A guest that pauses for long: misses halve the window down to nothing.
        for _ in 0..<10 { p.polled(success: false) }
        #expect(p.window == 0)
        // Gaps beyond the limit never open it.
        p.answered(at: now); now += 400_000
        p.wokeUp(at: now)
        #expect(p.window == 0)
        // Never wider than the limit; no polling at all with limit 0.
        p.answered(at: now); now += 49_000
        p.wokeUp(at: now)
        #expect(p.window == 50_000)
        var off = PollWindow(limit: 0)
        off.answered(at: 1); off.wokeUp(at: 2)
        #expect(off.window == 0)
    }
}
