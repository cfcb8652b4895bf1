import CFUSE
import Glibc
import PMFSConcurrency

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

    public init() {}

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

extension FUSEServer {
    /// Commits a transport's group here, or, when `busy` (requests already
    /// wait behind it) and there is a pool, on the pool as one task, so those
    /// requests are not held up by the device flush. True if it was handed over.
    @discardableResult
    public func commit(_ group: FUSEFsyncGroup, handingTo pool: RequestPool?, busy: Bool) -> Bool {
        guard !group.isEmpty else { return false }
        guard let pool, busy else {
            commit(group)
            return false
        }
        let handed = FUSEFsyncGroup()
        handed.take(from: group)
        pool.submit { [self] in commit(handed) }
        return true
    }

    /// Makes a group's FSYNCs durable and sends each its reply (an out-header
    /// with its error); the group is empty afterwards.
    public func commit(_ group: FUSEFsyncGroup) {
        guard !group.isEmpty else { return }
        defer { group.removeAll() }
        // EIO for any member the operations leave unanswered.
        group.errors.append(contentsOf: repeatElement(EIO, count: group.count))
        operations.fsync(group: group.members, errors: &group.errors)
        for i in group.members.indices { reply(to: group, i) }
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
