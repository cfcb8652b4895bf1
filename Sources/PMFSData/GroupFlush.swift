import PMFSConcurrency

/// Group commit for device flushes: concurrent fsyncs share one flush, as a
/// journal's batch commit does. A caller whose writes have completed needs a
/// flush that *starts* after that moment. If none is running it starts one at
/// once (a lone fsync never waits for company); if one is running, it waits
/// for it to end and then the next flush, started by one of the waiters,
/// covers every caller that arrived meanwhile.
public final class GroupFlush: @unchecked Sendable {
    private let lock = ConditionLock()
    private var started: UInt64 = 0
    private var completed: UInt64 = 0
    private var running = false
    /// The newest flush that failed (0: none).
    private var failed: UInt64 = 0
    private var failure: Error?
    /// How many callers the flushes served, for the figure "fsyncs per flush".
    public private(set) var callers: UInt64 = 0

    public init() {}

    /// Flushes started so far (each served one or more callers).
    public var flushes: UInt64 {
        lock.withLock { started }
    }

    /// Returns once a flush that started after this call has completed;
    /// `flush` is the device flush, run by whichever caller leads.
    public func flush(_ flush: () throws -> Void) throws {
        lock.lock()
        callers &+= 1
        // A running flush may have started before our writes completed: the next one counts.
        let needed = started + 1
        while completed < needed {
            if running {
                lock.wait()
                continue
            }
            running = true
            started += 1
            let mine = started
            lock.unlock()
            var error: Error?
            do { try flush() } catch let e { error = e }
            lock.lock()
            if let error { failed = mine; failure = error }
            completed = mine
            running = false
            lock.broadcast()
        }
        // Conservative: a failure of any flush since ours was needed is reported.
        let error = failed >= needed ? failure : nil
        lock.unlock()
        if let error { throw error }
    }
}
