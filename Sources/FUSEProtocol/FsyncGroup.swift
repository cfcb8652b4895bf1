import CFUSE
import Glibc
import PMFSConcurrency
import Synchronization

/// One FSYNC of a group: who asked, what, and where its reply goes.
public struct FUSEFsync: Sendable {
    public var request: FUSERequest
    public var nodeid: UInt64
    public var handle: UInt64
    public var dataOnly: Bool
}

/// The FSYNCs a transport takes off its queue in one pass, made durable
/// together by `FUSEServer.commit(_:)` after the pass: the engine writes each
/// file's data, flushes the device once for all of them and commits, with no
/// thread hand-over (a lone fsync is a group of one). A transport passes one
/// to `handle`, which puts FSYNCs in it (outcome `.deferred`) instead of
/// serving them at once; the replies go through each request's `later` sink.
/// Used by one thread at a time.
public final class FUSEFsyncGroup: @unchecked Sendable {
    // The arrays keep their storage from one commit to the next: a group
    // that is reused (one per queue) allocates nothing once it has grown.
    var members: [FUSEFsync] = []
    var replies: [PendingReply] = []
    /// Each member's outcome (0 or an errno), filled by the commit.
    var errors: [Int32] = []
    /// The out-header handed to each sink, rewritten in place for the next
    /// (a sink that keeps the bytes keeps its own copy: arrays are values).
    var replyBytes = [UInt8](repeating: 0, count: MemoryLayout<fuse_out_header>.size)

    /// Where a member's reply goes, and when the member was taken (metrics on
    /// only: its latency runs to its reply). The sink sits in a struct: kept
    /// in an array of closures it would be wrapped in an allocated thunk.
    struct PendingReply {
        let sink: FUSEReplySink
        let start: UInt64
    }

    /// How the transport sends a burst of replies (the vhost queue holds its
    /// call notification until the last); by default one after the other.
    public typealias ReplyBurst = (() -> Void) -> Void
    let sendingReplies: ReplyBurst

    public init(sendingReplies: @escaping ReplyBurst = { $0() }) {
        self.sendingReplies = sendingReplies
    }

    public var isEmpty: Bool { members.isEmpty }
    public var count: Int { members.count }

    func add(_ member: FUSEFsync, reply: @escaping FUSEReplySink, start: UInt64) {
        members.append(member)
        replies.append(PendingReply(sink: reply, start: start))
    }

    /// Moves `other`'s members here (to hand them to another thread).
    public func take(from other: FUSEFsyncGroup) {
        members += other.members; replies += other.replies
        other.removeAll()
    }

    /// Empties the group, keeping its storage.
    func removeAll() {
        members.removeAll(keepingCapacity: true)
        replies.removeAll(keepingCapacity: true)
        errors.removeAll(keepingCapacity: true)
    }
}

extension FUSEOperations {
    /// FSYNCs that arrived together: by default one after the other.
    public func fsync(group: [FUSEFsync], errors: inout [Int32]) {
        for (i, m) in group.enumerated() { errors[i] = fsyncErrno(m) }
    }

    /// One member's FSYNC: 0 or its errno.
    func fsyncErrno(_ m: FUSEFsync) -> Int32 {
        do {
            try fsync(m.request, nodeid: m.nodeid, handle: m.handle, dataOnly: m.dataOnly)
            return 0
        } catch let e as FUSEError {
            return e.errno
        } catch {
            return EIO
        }
    }
}

/// When a transport's thread should hand its FSYNC group to the pool even
/// though nothing waits yet: after a commit made on the thread took long
/// (a disk flush) and requests had piled up behind it by its end. Then the
/// next groups go to the pool too, so the thread keeps taking the WRITEs and
/// FSYNCs that come during a flush, until a few hand-overs in a row find
/// nothing waiting (one writer again: a commit on the thread is cheaper).
struct CommitHandOver: ~Copyable {
    /// A commit on the thread this long is worth a hand-over (two wake-ups).
    static let slowCommitNanoseconds: UInt64 = 30_000
    /// Hand-overs made on that evidence before a commit on the thread is tried again.
    static let handOversPerEvidence = 16
    let remaining = Atomic<Int>(0)

    /// Whether this group goes to the pool without requests waiting.
    func shouldHandOver(busy: Bool) -> Bool {
        let left = remaining.load(ordering: .relaxed)
        guard left > 0 else { return false }
        if !busy { remaining.store(left - 1, ordering: .relaxed) }
        return true
    }

    /// A commit on the thread took `nanoseconds`; `busy`: requests waited at its end.
    func committedHere(nanoseconds: UInt64, busy: Bool) {
        if nanoseconds >= Self.slowCommitNanoseconds && busy { remaining.store(Self.handOversPerEvidence, ordering: .relaxed) }
    }
}

extension FUSEServer {
    /// Commits a transport's group here, or on the pool as one task, so the
    /// requests that come meanwhile are not held up by the device flush: when
    /// `busy()` (requests already wait behind it), or when slow commits made
    /// here have kept requests waiting (`CommitHandOver`). True if handed over.
    @discardableResult
    public func commit(_ group: FUSEFsyncGroup, handingTo pool: RequestPool?, busy: () -> Bool) -> Bool {
        guard !group.isEmpty else { return false }
        guard let pool else {
            commit(group)
            return false
        }
        let waiting = busy()
        guard waiting || handOver.shouldHandOver(busy: false) else {
            let start = monotonicNanoseconds()
            // Asked before the replies go out: a lone writer's next request,
            // sent on its reply, is not one the commit held up.
            commit(group) { handOver.committedHere(nanoseconds: nanosecondsSince(start), busy: busy()) }
            return false
        }
        let handed = FUSEFsyncGroup(sendingReplies: group.sendingReplies)
        handed.take(from: group)
        pool.submit { [self] in commit(handed) }
        return true
    }

    /// Makes a group's FSYNCs durable and sends each its reply (an out-header
    /// with its error); the group is empty afterwards.
    public func commit(_ group: FUSEFsyncGroup, beforeReplies: () -> Void = {}) {
        guard !group.isEmpty else { return }
        defer { group.removeAll() }
        // EIO for any member the operations leave unanswered.
        group.errors.append(contentsOf: repeatElement(EIO, count: group.count))
        operations.fsync(group: group.members, errors: &group.errors)
        beforeReplies()
        group.sendingReplies { for i in group.members.indices { reply(to: group, i) } }
    }

    /// Member `i`'s reply, through its sink.
    private func reply(to group: FUSEFsyncGroup, _ i: Int) {
        let member = group.members[i], error = i < group.errors.count ? group.errors[i] : EIO
        if let metrics {
            if error != 0 { metrics.failed(member.request.opcode, errno: error) }
            metrics.finished(member.request.opcode, since: group.replies[i].start)
        }
        let header = fuse_out_header(len: UInt32(MemoryLayout<fuse_out_header>.size), error: -error, unique: member.request.unique)
        group.replyBytes.withUnsafeMutableBytes { $0.storeBytes(of: header, as: fuse_out_header.self) }
        answered.add(1, ordering: .relaxed)
        group.replies[i].sink(group.replyBytes)
    }
}
