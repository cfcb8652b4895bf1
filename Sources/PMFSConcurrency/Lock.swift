import Glibc

/// A plain mutex for state that cannot live inside a `Synchronization.Mutex`:
/// a lock held across calls, tried (`tryLock`), or waited on with a condition
/// (`ConditionLock`). The pthread mutex is heap-allocated, so it never moves.
///
/// Not `open`: `ConditionLock` is its only subclass. The methods are `final`
/// and inlinable, so a lock costs what a bare `pthread_mutex_lock` costs.
public class Lock: @unchecked Sendable {
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>

    public init() {
        mutex = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deallocate()
    }

    @inlinable public final func lock() { pthread_mutex_lock(mutex) }
    @inlinable public final func unlock() { pthread_mutex_unlock(mutex) }
    /// Takes the lock if no one holds it; true if taken.
    @inlinable public final func tryLock() -> Bool { pthread_mutex_trylock(mutex) == 0 }

    @inlinable public final func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock(); defer { unlock() }
        return try body()
    }
}

/// A `Lock` with a condition variable. Waits are made with the lock held; the
/// condition's clock is CLOCK_MONOTONIC, so a timed wait is not stretched or
/// cut short when the wall clock is set.
public final class ConditionLock: Lock, @unchecked Sendable {
    @usableFromInline let condition: UnsafeMutablePointer<pthread_cond_t>

    public override init() {
        condition = .allocate(capacity: 1)
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(condition, &attributes)
        pthread_condattr_destroy(&attributes)
        super.init()
    }

    deinit {
        pthread_cond_destroy(condition)
        condition.deallocate()
    }

    /// Waits (lock held) until signalled. Wake-ups may be spurious: wait in a
    /// loop that checks what it waits for.
    @inlinable public func wait() { pthread_cond_wait(condition, mutex) }

    /// Waits (lock held) until signalled or `deadline` passes; false if it passed.
    @discardableResult
    public func wait(until deadline: Deadline) -> Bool {
        var at = timespec(
            tv_sec: Int(clamping: deadline.nanoseconds / 1_000_000_000),
            tv_nsec: Int(deadline.nanoseconds % 1_000_000_000))
        return pthread_cond_timedwait(condition, mutex, &at) != ETIMEDOUT
    }

    /// Waits (lock held) until signalled or `milliseconds` pass; false if they passed.
    @discardableResult
    public func wait(milliseconds: Int) -> Bool {
        wait(until: .after(nanoseconds: UInt64(clamping: milliseconds).multipliedReportingOverflow(by: 1_000_000).partialValue))
    }

    /// Wakes one waiter.
    @inlinable public func signal() { pthread_cond_signal(condition) }
    /// Wakes every waiter.
    @inlinable public func broadcast() { pthread_cond_broadcast(condition) }
}
