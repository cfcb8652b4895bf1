import Glibc

/// A few threads for requests that may block (fsync, large reads and writes,
/// truncation): a transport's queue thread hands them over and goes on with
/// its queue, so one slow request does not hold up the others behind it (a
/// guest's virtqueue: Linux 6.1's virtiofs driver sends everything on the
/// first request queue; a FUSE io_uring queue: one per CPU).
public final class RequestPool: @unchecked Sendable {
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var tasks: [() -> Void] = []
    private var head = 0
    private var stopping = false
    private var running = 0
    private var threads: [pthread_t] = []
    /// The most tasks waiting at once: a guest re-offering chains faster than
    /// they are answered must not grow the queue without end.
    public let queueLimit: Int

    public init(threads count: Int, queueLimit: Int = 256) {
        self.queueLimit = max(1, queueLimit)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        for _ in 0..<max(1, count) {
            var t = pthread_t()
            let box = Unmanaged.passRetained(self)
            if pthread_create(&t, nil, { arg in
                let pool = Unmanaged<RequestPool>.fromOpaque(arg!).takeRetainedValue()
                pool.run()
                return nil
            }, box.toOpaque()) == 0 {
                threads.append(t)
            } else {
                box.release()
            }
        }
    }

    /// Queues a task, or runs it at once on the caller's thread when the queue
    /// is full (backpressure: the queue worker serves that one itself).
    public func submit(_ task: @escaping () -> Void) {
        pthread_mutex_lock(mutex)
        if tasks.count - head >= queueLimit {
            pthread_mutex_unlock(mutex)
            task()
            return
        }
        tasks.append(task)
        pthread_cond_signal(condition)
        pthread_mutex_unlock(mutex)
    }

    /// Waits until every task handed over so far has finished (a ring being
    /// stopped must not see completions after its base index was reported).
    public func waitIdle() {
        pthread_mutex_lock(mutex)
        while head != tasks.count || running > 0 { pthread_cond_wait(condition, mutex) }
        pthread_mutex_unlock(mutex)
    }

    /// Runs what is queued, then ends the threads.
    public func stop() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
        for t in threads { pthread_join(t, nil) }
        threads.removeAll()
    }

    private func run() {
        while true {
            pthread_mutex_lock(mutex)
            while head == tasks.count && !stopping { pthread_cond_wait(condition, mutex) }
            if head == tasks.count {
                pthread_mutex_unlock(mutex)
                return
            }
            let task = tasks[head]
            head += 1
            if head == tasks.count { tasks.removeAll(keepingCapacity: true); head = 0 }
            running += 1
            pthread_mutex_unlock(mutex)
            task()
            pthread_mutex_lock(mutex)
            running -= 1
            // Wakes waitIdle (and idle threads, which go back to sleep).
            if running == 0 && head == tasks.count { pthread_cond_broadcast(condition) }
            pthread_mutex_unlock(mutex)
        }
    }

    deinit {
        pthread_cond_destroy(condition); condition.deallocate()
        pthread_mutex_destroy(mutex); mutex.deallocate()
    }
}
