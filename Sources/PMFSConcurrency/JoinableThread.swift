import CPMFSConcurrency
import Glibc

/// A thread running a closure, joined by its owner. pmfs spawns every thread
/// through this type.
///
/// `start` and `join` are for the owner's thread. The closure runs on another
/// thread: the caller vouches for what it captures, as it did with the
/// pthread_create this replaces.
public final class JoinableThread: @unchecked Sendable {
    private let body: () -> Void
    /// Shown by ps and top (Linux keeps 15 bytes); nil leaves the inherited name.
    public let name: String?
    private var thread = pthread_t()
    private var started = false

    public init(name: String? = nil, _ body: @escaping () -> Void) {
        self.name = name
        self.body = body
    }

    /// A thread made and started; nil if the system would not make one.
    public static func spawn(name: String? = nil, _ body: @escaping () -> Void) -> JoinableThread? {
        let t = JoinableThread(name: name, body)
        return t.start() ? t : nil
    }

    /// Starts the thread (once); false if it could not be made. The thread
    /// keeps this object alive until its closure returns.
    @discardableResult
    public func start() -> Bool {
        guard !started else { return true }
        let box = Unmanaged.passRetained(self)
        started = pthread_create(&thread, nil, { arg in
            let me = Unmanaged<JoinableThread>.fromOpaque(arg!).takeRetainedValue()
            if let name = me.name { me.setName(name) }
            me.body()
            return nil
        }, box.toOpaque()) == 0
        if !started { box.release() }
        return started
    }

    /// Starts a thread no one joins: one that ends on its own, or waits until
    /// the process ends. False if it could not be made.
    @discardableResult
    public static func detached(name: String? = nil, _ body: @escaping () -> Void) -> Bool {
        guard let t = spawn(name: name, body) else { return false }
        t.detach()
        return true
    }

    /// Waits for the closure to return; at once if the thread never started
    /// or was joined already.
    public func join() {
        guard started else { return }
        pthread_join(thread, nil)
        started = false
    }

    /// Lets the thread go: no one will join it, and the system frees it when
    /// its closure returns (a thread left unjoined keeps its stack until then).
    public func detach() {
        guard started else { return }
        pthread_detach(thread)
        started = false
    }

    /// Thread names are for people (ps, top, gdb): a name refused is no error.
    private func setName(_ name: String) { _ = cpmfs_set_thread_name(name) }
}
