import Testing
@testable import VhostUser
import VhostUserFrontEnd

/// Notification suppression, as the guest driver evaluates it.
@Suite struct KickSuppressionTests {
    /// The driver's vring_need_event: kick if the new index passed the event index.
    func guestWouldKick(_ g: FakeGuest, old: UInt16, new: UInt16) -> Bool {
        if g.queue.eventIndex {
            let event = g.availableEvent
            return (new &- event &- 1) < (new &- old)
        }
        return g.usedFlags & SplitRingLayout.usedNoNotify == 0
    }

    @Test(arguments: [true, false]) func pollingTurnsKicksOffAndBackOn(eventIndex: Bool) throws {
        let g = FakeGuest()
        g.queue.eventIndex = eventIndex
        g.descriptor(0, address: g.data, length: 40, flags: 0, next: 0)
        for round in 0..<3 {
            g.queue.setKicks(enabled: true)
            let before = UInt16(round * 2)
            g.offer(0)
            #expect(guestWouldKick(g, old: before, new: before &+ 1), "kicks wanted while the worker sleeps")
            _ = try #require(try g.queue.pop())
            g.queue.push(0, length: 0)
            // The worker polls: the guest's next requests need no kick.
            g.queue.setKicks(enabled: false)
            g.offer(0)
            #expect(!guestWouldKick(g, old: before &+ 1, new: before &+ 2))
            #expect(g.queue.hasMore)
            _ = try #require(try g.queue.pop())
            g.queue.push(0, length: 0)
        }
    }
}
