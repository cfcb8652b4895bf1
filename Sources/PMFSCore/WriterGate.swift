import Glibc
import PMFSConcurrency

/// Keeps changes out while a snapshot copies a tree. Every request that
/// changes the file system passes through the gate (`pass`); `closed` waits
/// for those in flight to finish, holds new ones at the gate and runs its
/// body, so the body sees one point: every change before it, none after.
/// Requests that only read never wait.
public final class WriterGate: @unchecked Sendable {
    private let lock = ConditionLock()
    private var inFlight = 0
    private var isClosed = false

    public init() {}

    /// Runs one change (not nested: a change never passes twice).
    public func pass<T>(_ body: () throws -> T) rethrows -> T {
        lock.withLock {
            while isClosed { lock.wait(milliseconds: 100) }
            inFlight += 1
        }
        defer {
            lock.withLock {
                inFlight -= 1
                if inFlight == 0 { lock.broadcast() }
            }
        }
        return try body()
    }

    /// Runs `body` with no change in flight and none let in. One closer at a time.
    public func closed<T>(_ body: () throws -> T) rethrows -> T {
        lock.withLock {
            while isClosed { lock.wait(milliseconds: 100) }
            isClosed = true
            while inFlight > 0 { lock.wait(milliseconds: 100) }
        }
        defer {
            lock.withLock {
                isClosed = false
                lock.broadcast()
            }
        }
        return try body()
    }
}
