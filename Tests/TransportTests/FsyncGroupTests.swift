import CFUSE
import FUSETestSupport
import Glibc
import Testing
@testable import FUSEProtocol

/// FSYNCs of one fsync group answer only when the group commits, each with
/// its own unique and error; the group, reused as a queue reuses its own,
/// is empty after each commit and serves the next pass the same way.
@Suite struct FsyncGroupTests {
    /// Fails the FSYNC of handle 13 with EROFS; records every FSYNC's handle.
    final class Operations: FUSEOperations, @unchecked Sendable {
        var handles: [UInt64] = []
        func fsync(_ r: FUSERequest, nodeid: UInt64, handle: UInt64, dataOnly: Bool) throws {
            handles.append(handle)
            if handle == 13 { throw FUSEError(EROFS) }
        }
    }

    /// The (unique, error) of each reply that came through a sink, in order.
    final class Sent: @unchecked Sendable {
        var replies: [[UInt8]] = []
        var headers: [(unique: UInt64, error: Int32)] {
            replies.map { r in r.withUnsafeBytes { ($0.loadUnaligned(as: fuse_out_header.self).unique, $0.loadUnaligned(as: fuse_out_header.self).error) } }
        }
    }

    /// Puts an FSYNC of `handle` in `group`; its reply goes to `sent`.
    func join(_ server: FUSEServer, _ group: FUSEFsyncGroup, unique: UInt64, handle: UInt64, sent: Sent) -> FUSEOutcome {
        var f = fuse_fsync_in()
        f.fh = handle
        let m = fuseMessage(FUSE_FSYNC.rawValue, unique: unique, body: withUnsafeBytes(of: &f) { Array($0) })
        let reply = ReplyWriter(owning: 64)
        defer { reply.release() }
        var writer = reply
        return m.withUnsafeBytes { bytes in
            var request = RequestCursor(bytes)
            return server.handle(&request, &writer, later: { sent.replies.append($0) }, group: group)
        }
    }

    @Test func eachMemberGetsItsOwnReplyAtTheCommitAndTheGroupIsReused() {
        let operations = Operations()
        let server = initializedServer(operations)
        let group = FUSEFsyncGroup()
        let sent = Sent()
        for (unique, handle) in [(10, 11), (20, 13), (30, 12)] as [(UInt64, UInt64)] {
            #expect(join(server, group, unique: unique, handle: handle, sent: sent) == .deferred)
        }
        #expect(group.count == 3 && sent.replies.isEmpty)
        server.commit(group)
        #expect(group.isEmpty)
        #expect(operations.handles == [11, 13, 12])
        #expect(sent.headers.map(\.unique) == [10, 20, 30])
        #expect(sent.headers.map(\.error) == [0, -EROFS, 0])
        #expect(sent.replies.allSatisfy { $0.count == MemoryLayout<fuse_out_header>.size })
        // The next pass, in the same group: the replies kept above are unchanged.
        #expect(join(server, group, unique: 40, handle: 13, sent: sent) == .deferred)
        server.commit(group)
        #expect(sent.headers.map(\.unique) == [10, 20, 30, 40])
        #expect(sent.headers.map(\.error) == [0, -EROFS, 0, -EROFS])
        server.commit(group)   // an empty group sends nothing
        #expect(sent.replies.count == 4)
    }

    /// The transport's burst wraps every reply of a commit, once per commit,
    /// and a group handed to the pool keeps it.
    @Test func aCommitSendsItsRepliesInOneBurst() {
        final class Bursts: @unchecked Sendable { var count = 0; var repliesInside = 0 }
        let server = initializedServer(Operations())
        let bursts = Bursts(), sent = Sent()
        let group = FUSEFsyncGroup { replies in
            let before = sent.replies.count
            replies()
            bursts.count += 1
            bursts.repliesInside += sent.replies.count - before
        }
        for unique in [70, 80, 90] as [UInt64] { _ = join(server, group, unique: unique, handle: 11, sent: sent) }
        server.commit(group)
        #expect(bursts.count == 1 && bursts.repliesInside == 3)
        // Handed over: the pool's commit sends through the same burst.
        let pool = RequestPool(threads: 1)
        defer { pool.stop() }
        _ = join(server, group, unique: 100, handle: 12, sent: sent)
        #expect(server.commit(group, handingTo: pool, busy: { true }))
        pool.waitIdle()
        #expect(bursts.count == 2 && bursts.repliesInside == 4)
        #expect(sent.headers.map(\.unique) == [70, 80, 90, 100])
    }

    @Test func aGroupHandedOverKeepsItsMembers() {
        let operations = Operations()
        let server = initializedServer(operations)
        let group = FUSEFsyncGroup(), handed = FUSEFsyncGroup()
        let sent = Sent()
        _ = join(server, group, unique: 50, handle: 11, sent: sent)
        _ = join(server, group, unique: 60, handle: 12, sent: sent)
        handed.take(from: group)
        #expect(group.isEmpty && handed.count == 2)
        server.commit(handed)
        #expect(sent.headers.map(\.unique) == [50, 60])
        #expect(sent.headers.map(\.error) == [0, 0])
    }
}
