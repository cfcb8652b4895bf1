import Glibc

/// CLOCK_MONOTONIC in nanoseconds (a vDSO call: no system call, no allocation).
@inlinable public func monotonicNanoseconds() -> UInt64 {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return UInt64(t.tv_sec) &* 1_000_000_000 &+ UInt64(t.tv_nsec)
}

/// Nanoseconds since `start`, an earlier `monotonicNanoseconds()` (0 if it is later).
@inlinable public func nanosecondsSince(_ start: UInt64) -> UInt64 {
    let now = monotonicNanoseconds()
    return now >= start ? now - start : 0
}

/// A point on the monotonic clock by which something should be done.
public struct Deadline: Sendable, Comparable {
    /// Nanoseconds on the clock `monotonicNanoseconds()` reads.
    public let nanoseconds: UInt64

    public init(nanoseconds: UInt64) { self.nanoseconds = nanoseconds }

    /// `nanoseconds` from now (the far future, if that overflows).
    public static func after(nanoseconds: UInt64) -> Deadline {
        let (sum, overflow) = monotonicNanoseconds().addingReportingOverflow(nanoseconds)
        return Deadline(nanoseconds: overflow ? .max : sum)
    }

    /// `duration` from now; a negative duration is now.
    public static func after(_ duration: Duration) -> Deadline {
        let (seconds, attoseconds) = duration.components
        guard seconds >= 0, attoseconds >= 0 else { return after(nanoseconds: 0) }
        let (whole, overflow) = UInt64(seconds).multipliedReportingOverflow(by: 1_000_000_000)
        return after(nanoseconds: overflow ? .max : whole.addingReportingOverflow(UInt64(attoseconds / 1_000_000_000)).partialValue)
    }

    public var hasPassed: Bool { monotonicNanoseconds() >= nanoseconds }

    /// Nanoseconds left, 0 once passed.
    public var remainingNanoseconds: UInt64 {
        let now = monotonicNanoseconds()
        return now >= nanoseconds ? 0 : nanoseconds - now
    }

    public static func < (a: Deadline, b: Deadline) -> Bool { a.nanoseconds < b.nanoseconds }
}
