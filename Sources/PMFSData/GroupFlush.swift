import Glibc

/// Group commit for device flushes: concurrent fsyncs share one flush, as a
/// journal's batch commit does. A caller whose writes have completed needs a
/// flush that *starts* after that moment. If none is running it starts one at
/// once (a lone fsync never waits for company); if one is running, it waits
/// for it to end and then the next flush, started by one of the waiters,
/// covers every caller that arrived meanwhile.
public final class GroupFlush: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var started: UInt64 = 0
    private var completed: UInt64 = 0
    private var running = false
    /// The newest flush that failed (0: none).
    private var failed: UInt64 = 0
    private var failure: Error?
    /// How many callers the flushes served, for the figure "fsyncs per flush".
    public private(set) var callers: UInt64 = 0

    public init() {
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    deinit {
        pthread_cond_destroy(condition); condition.deallocate()
        pthread_mutex_destroy(mutex); mutex.deallocate()
    }

    /// Flushes started so far (each served one or more callers).
    public var flushes: UInt64 {
        pthread_mutex_lock(mutex); defer { pthread_mutex_unlock(mutex) }
        return started
    }

    /// Returns once a flush that started after this call has completed;
    /// `flush` is the device flush, run by whichever caller leads.
    public func flush(_ flush: () throws -> Void) throws {
        pthread_mutex_lock(mutex)
        callers &+= 1
        // A running flush may have started before our writes completed: the next one counts.
        let needed = started + 1
        while completed < needed {
            if running {
                pthread_cond_wait(condition, mutex)
                continue
            }
            running = true
            started += 1
            let mine = started
            pthread_mutex_unlock(mutex)
            var error: Error?
            do { try flush() } catch let e { error = e }
            pthread_mutex_lock(mutex)
            if let error { failed = mine; failure = error }
            completed = mine
            running = false
            pthread_cond_broadcast(condition)
        }
        // Conservative: a failure of any flush since ours was needed is reported.
        let error = failed >= needed ? failure : nil
        pthread_mutex_unlock(mutex)
        if let error { throw error }
    }
}
