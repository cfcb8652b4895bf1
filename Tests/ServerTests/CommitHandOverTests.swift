import Testing
@testable import FUSEProtocol

/// When a transport hands its FSYNC group to the pool although nothing waits:
/// only after a slow commit on its own thread kept requests waiting, and then
/// for a bounded run of hand-overs that find nothing waiting.
@Suite struct CommitHandOverTests {
    @Test func aFastCommitOrOneNobodyWaitedForKeepsCommitsOnTheThread() {
        let h = CommitHandOver()
        var handed = h.shouldHandOver(busy: false)
        #expect(!handed)
        h.committedHere(nanoseconds: CommitHandOver.slowCommitNanoseconds - 1, busy: true)
        handed = h.shouldHandOver(busy: false)
        #expect(!handed)
        h.committedHere(nanoseconds: 10 * CommitHandOver.slowCommitNanoseconds, busy: false)
        handed = h.shouldHandOver(busy: false)
        #expect(!handed)
    }

    @Test func aSlowCommitThatHeldOthersUpSendsTheNextGroupsToThePoolForABoundedRun() {
        let h = CommitHandOver()
        h.committedHere(nanoseconds: CommitHandOver.slowCommitNanoseconds, busy: true)
        // Hand-overs with requests waiting do not use up the run.
        var whileBusy = 0, whileIdle = 0
        for _ in 0..<100 where h.shouldHandOver(busy: true) { whileBusy += 1 }
        for _ in 0..<CommitHandOver.handOversPerEvidence where h.shouldHandOver(busy: false) { whileIdle += 1 }
        let after = h.shouldHandOver(busy: false)
        #expect(whileBusy == 100)
        #expect(whileIdle == CommitHandOver.handOversPerEvidence)
        #expect(!after, "a lone writer again: back to committing on the thread")
    }
}
