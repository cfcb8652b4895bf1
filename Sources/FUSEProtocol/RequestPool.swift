import PMFSConcurrency

/// A few threads for requests that may block (fsync, large reads and writes,
/// truncation): a transport's queue thread hands them over and goes on with
/// its queue, so one slow request does not hold up the others behind it (a
/// guest's virtqueue: Linux 6.1's virtiofs driver sends everything on the
/// first request queue; a FUSE io_uring queue: one per CPU).
public final class RequestPool: @unchecked Sendable {
    /// Guards the queue and the counts; its condition wakes idle threads and `waitIdle`.
    private let lock = ConditionLock()
    private var tasks: [() -> Void] = []
    private var head = 0
    private var stopping = false
    private var running = 0
    private var threads: [JoinableThread] = []
    /// The most tasks waiting at once: a guest re-offering chains faster than
    /// they are answered must not grow the queue without end.
    public let queueLimit: Int

    public init(threads count: Int, queueLimit: Int = 256) {
        self.queueLimit = max(1, queueLimit)
        // Each thread keeps the pool alive until `stop` ends it.
        threads = (0..<max(1, count)).compactMap { _ in JoinableThread.spawn { [self] in run() } }
    }

    /// Queues a task, or runs it at once on the caller's thread when the queue
    /// is full (backpressure: the queue worker serves that one itself).
    public func submit(_ task: @escaping () -> Void) {
        lock.lock()
        if tasks.count - head >= queueLimit {
            lock.unlock()
            task()
            return
        }
        tasks.append(task)
        lock.signal()
        lock.unlock()
    }

    /// Waits until every task handed over so far has finished (a ring being
    /// stopped must not see completions after its base index was reported).
    public func waitIdle() {
        lock.withLock {
            while head != tasks.count || running > 0 { lock.wait() }
        }
    }

    /// Runs what is queued, then ends the threads.
    public func stop() {
        lock.withLock {
            stopping = true
            lock.broadcast()
        }
        for t in threads { t.join() }
        threads.removeAll()
    }

    private func run() {
        while true {
            lock.lock()
            while head == tasks.count && !stopping { lock.wait() }
            if head == tasks.count {
                lock.unlock()
                return
            }
            let task = tasks[head]
            head += 1
            if head == tasks.count { tasks.removeAll(keepingCapacity: true); head = 0 }
            running += 1
            lock.unlock()
            task()
            lock.lock()
            running -= 1
            // Wakes waitIdle (and idle threads, which go back to sleep).
            if running == 0 && head == tasks.count { lock.broadcast() }
            lock.unlock()
        }
    }
}
