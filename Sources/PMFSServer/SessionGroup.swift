import FUSEProtocol
import Glibc
import PMFSConcurrency
import Synchronization

/// The sessions serving one file system: the host mount and each guest. They
/// share the lock table (their locks conflict as they should), and each one
/// with a reachable kernel cache hears of the changes the others make.
public final class SessionGroup: Sendable {
    let locks = LockManager()
    let coherence = CacheCoherence()
    private let nextSession = Mutex<UInt64>(1)
    public init() {}
    func newSession() -> UInt64 { nextSession.withLock { v in defer { v += 1 }; return v } }

    /// A change made by none of the sessions (the control socket's snapshot):
    /// every listening kernel hears of it. Session numbers start at 1.
    public func announce(_ items: [CacheInvalidation]) { coherence.changed(by: 0, items) }
}

/// Something a kernel may have cached and must drop after another session's change.
public enum CacheInvalidation: Hashable, Sendable {
    /// The dentry `name` in `parent`.
    case entry(parent: UInt64, name: [UInt8])
    /// An inode's attributes.
    case attributes(UInt64)
    /// An inode's attributes and cached data.
    case contents(UInt64)
}

/// Delivers invalidations to one session's kernel (for the host mount: FUSE
/// notifications on /dev/fuse). Guests have none: Linux's virtiofs driver has
/// no notification queue, so a guest relies on its short cache timeouts.
public protocol InvalidationSink: AnyObject, Sendable {
    func deliver(_ invalidation: CacheInvalidation)
}

/// Fans each session's changes out to the other sessions' sinks. Delivery is
/// asynchronous, on one thread per sink: a notification can block in the
/// kernel on a directory lock held by a request of that very session, so it is
/// never sent from a request's thread. Invalidations about inodes a session's
/// kernel does not hold are dropped at once.
final class CacheCoherence: @unchecked Sendable {
    private let listeners = Mutex<[InvalidationQueue]>([])
    private let listenerCount = Atomic<Int>(0)

    /// True when someone listens: operations skip building change lists otherwise.
    var active: Bool { listenerCount.load(ordering: .relaxed) > 0 }

    func add(_ queue: InvalidationQueue) {
        listeners.withLock { $0.append(queue) }
        listenerCount.add(1, ordering: .relaxed)
    }

    func remove(session: UInt64) {
        let gone: [InvalidationQueue] = listeners.withLock { list in
            let g = list.filter { $0.session == session }
            list.removeAll { $0.session == session }
            return g
        }
        listenerCount.subtract(gone.count, ordering: .relaxed)
        for q in gone { q.stop() }
    }

    func changed(by session: UInt64, _ items: [CacheInvalidation]) {
        let targets = listeners.withLock { $0.filter { $0.session != session } }
        for q in targets { q.enqueue(items) }
    }
}

/// One sink's pending invalidations (deduplicated, in order) and its thread.
final class InvalidationQueue: @unchecked Sendable {
    let session: UInt64
    private let sink: InvalidationSink
    /// Whether that session's kernel holds the inode (a lookup count > 0).
    private let holds: @Sendable (UInt64) -> Bool
    /// Guards the pending list; its condition wakes the thread.
    private let lock = ConditionLock()
    private var pending: [CacheInvalidation] = []
    private var queued: Set<CacheInvalidation> = []
    private var stopping = false
    private var thread: JoinableThread?

    init(session: UInt64, sink: InvalidationSink, holds: @escaping @Sendable (UInt64) -> Bool) {
        self.session = session
        self.sink = sink
        self.holds = holds
        // The thread keeps the queue alive until `stop` ends it.
        thread = JoinableThread.spawn { [self] in run() }
    }

    func enqueue(_ items: [CacheInvalidation]) {
        let wanted = items.filter {
            switch $0 {
            case .entry(let parent, _): return parent == 1 || holds(parent)
            case .attributes(let ino), .contents(let ino): return ino == 1 || holds(ino)
            }
        }
        guard !wanted.isEmpty else { return }
        lock.withLock {
            for item in wanted where queued.insert(item).inserted { pending.append(item) }
            lock.signal()
        }
    }

    /// Stops the thread once the queue is drained.
    func stop() {
        lock.withLock {
            stopping = true
            lock.signal()
        }
        thread?.join()
        thread = nil
    }

    private func run() {
        while true {
            let (batch, done) = lock.withLock {
                while pending.isEmpty && !stopping { lock.wait() }
                let batch = pending
                pending.removeAll(keepingCapacity: true)
                queued.removeAll(keepingCapacity: true)
                return (batch, stopping && batch.isEmpty)
            }
            if done { return }
            for item in batch { sink.deliver(item) }
        }
    }
}

/// Invalidations as FUSE notifications, written by `send` (e.g. to /dev/fuse).
public final class FUSENotificationSink: InvalidationSink {
    private let send: @Sendable ([UInt8]) -> Int32
    /// `send` returns 0 or an errno; ENOENT (nothing cached) is expected and ignored.
    public init(send: @escaping @Sendable ([UInt8]) -> Int32) { self.send = send }

    public func deliver(_ invalidation: CacheInvalidation) {
        switch invalidation {
        case .entry(let parent, let name): _ = send(FUSENotification.invalidateEntry(parent: parent, name: name))
        case .attributes(let ino): _ = send(FUSENotification.invalidateInode(ino, data: false))
        case .contents(let ino): _ = send(FUSENotification.invalidateInode(ino, data: true))
        }
    }
}
