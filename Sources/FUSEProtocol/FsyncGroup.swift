import CFUSE
import Glibc

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
    var members: [FUSEFsync] = []
    var sinks: [FUSEReplySink] = []
    /// When each member was taken (metrics on only): its latency runs to its reply.
    var starts: [Int64] = []

    public init() {}

    public var isEmpty: Bool { members.isEmpty }
    public var count: Int { members.count }

    func add(_ member: FUSEFsync, reply: @escaping FUSEReplySink, start: Int64) {
        members.append(member)
        sinks.append(reply)
        starts.append(start)
    }

    /// Moves `other`'s members here (to hand them to another thread).
    public func take(from other: FUSEFsyncGroup) {
        let (m, r, t) = other.take()
        members += m; sinks += r; starts += t
    }

    /// Hands the members over (the group is empty and reusable after).
    func take() -> (members: [FUSEFsync], sinks: [FUSEReplySink], starts: [Int64]) {
        defer { members.removeAll(keepingCapacity: true); sinks.removeAll(keepingCapacity: true); starts.removeAll(keepingCapacity: true) }
        return (members, sinks, starts)
    }
}

extension FUSEOperations {
    /// FSYNCs that arrived together: by default one after the other. The
    /// result for each is 0 or its errno.
    public func fsync(group: [FUSEFsync]) -> [Int32] {
        group.map { m in
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
}

extension FUSEServer {
    /// Makes a group's FSYNCs durable and sends each its reply (an out-header
    /// with its error); the group is empty afterwards.
    public func commit(_ group: FUSEFsyncGroup) {
        let (members, sinks, starts) = group.take()
        guard !members.isEmpty else { return }
        let errors = operations.fsync(group: members)
        for i in members.indices {
            let error = i < errors.count ? errors[i] : EIO
            let header = fuse_out_header(len: UInt32(MemoryLayout<fuse_out_header>.size), error: -error, unique: members[i].request.unique)
            if let metrics {
                if error != 0 { metrics.failed(members[i].request.opcode) }
                metrics.finished(members[i].request.opcode, nanoseconds: monotonicNanoseconds() &- starts[i])
            }
            sinks[i](withUnsafeBytes(of: header) { Array($0) })
        }
    }
}
