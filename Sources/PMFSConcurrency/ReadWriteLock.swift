import Glibc

/// A reader-writer lock over pthread_rwlock_t (heap-allocated, so it never
/// moves). glibc's default kind prefers readers: a reader gets in while
/// another reader holds the lock, even with a writer waiting.
public final class ReadWriteLock: @unchecked Sendable {
    @usableFromInline let rwlock: UnsafeMutablePointer<pthread_rwlock_t>

    public init() {
        rwlock = .allocate(capacity: 1)
        pthread_rwlock_init(rwlock, nil)
    }

    deinit {
        pthread_rwlock_destroy(rwlock)
        rwlock.deallocate()
    }

    @inlinable public func withReadLock<T>(_ body: () throws -> T) rethrows -> T {
        lockForReading(); defer { unlock() }
        return try body()
    }

    @inlinable public func withWriteLock<T>(_ body: () throws -> T) rethrows -> T {
        lockForWriting(); defer { unlock() }
        return try body()
    }

    // Explicit locking, for a caller that holds the lock past one closure:
    // several stripes taken in order and released together, or a lock
    // dropped and taken again around a wait. Prefer the scoped forms.
    @inlinable public func lockForReading() { pthread_rwlock_rdlock(rwlock) }
    @inlinable public func lockForWriting() { pthread_rwlock_wrlock(rwlock) }
    @inlinable public func unlock() { pthread_rwlock_unlock(rwlock) }
}
