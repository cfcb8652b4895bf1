/// How long a queue's thread polls for the next request before it sleeps (a
/// vhost-user queue worker, a FUSE io_uring queue), adapted as KVM adapts its
/// halt polling: a wake-up soon after going to sleep (the next request came
/// just too late) widens the window to cover that gap; a poll that finds
/// nothing halves it. So a client issuing requests back to back is served
/// without wake-ups, and an idle or slow one costs no spinning. Never wider
/// than `limit` (0: no polling).
public struct PollWindow: Sendable {
    public let limit: UInt64
    public private(set) var window: UInt64 = 0
    private var lastAnswered: UInt64 = 0
    public static let smallest: UInt64 = 2_000

    public init(limit: UInt64) { self.limit = limit }

    /// After a burst was answered (and before polling).
    public mutating func answered(at now: UInt64) { lastAnswered = now }

    /// Woken by a kick: had the window covered the gap, no wake-up was needed.
    public mutating func wokeUp(at now: UInt64) {
        guard limit > 0, lastAnswered > 0 else { return }
        let gap = now &- lastAnswered
        if gap <= limit { window = min(limit, max(window * 2, gap + gap / 4, Self.smallest)) }
    }

    public mutating func polled(success: Bool) {
        if !success { window = window / 2 < Self.smallest ? 0 : window / 2 }
    }
}
