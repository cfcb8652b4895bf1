import CFUSE
import Foundation
import Glibc
import Testing
import VhostUserFrontEnd

/// pmfsd serving a guest socket: FSYNCs sent together in one kick share a
/// commit, and each reply goes back on its own chain, pass after pass (the
/// queue reuses the reply targets of answered FSYNCs).
@Suite(.serialized) struct FsyncRepliesEndToEndTests {
    @Test func fsyncsSentTogetherAreEachAnsweredOnTheirOwnChainPassAfterPass() throws {
        let dir = "/dev/shm/pmfs-fsync-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let socket = dir + "/guest.sock"
        let daemon = try ExportEndToEndTests.Daemon(try ExportEndToEndTests.makeFileSystem(in: dir) + ["--socket", socket],
                                                     log: URL(fileURLWithPath: dir + "/pmfsd.log"))
        defer { _ = daemon.stop() }
        try ExportEndToEndTests.waitFor(socket)
        let frontEnd = try VhostUserFrontEnd(socketPath: socket)
        let client = FUSEClient(frontEnd)
        _ = try client.initialize()
        var files: [(node: UInt64, handle: UInt64)] = []
        for i in 0..<6 {
            let (entry, handle) = try client.create(parent: 1, "f\(i)")
            files.append((entry.nodeid, handle))
        }
        let ring = frontEnd.ring(client.queue)
        let block = [UInt8](repeating: 0x42, count: 4096)
        for round in 0..<20 {
            for f in files { _ = try client.write(f.node, handle: f.handle, offset: UInt64(round % 4) * 4096, block) }
            // Six FSYNCs and one of a node the session was never given, in one kick.
            var sent: [Int: (unique: UInt64, error: Int32)] = [:]
            for (i, f) in files.enumerated() {
                var fsync = fuse_fsync_in()
                fsync.fh = f.handle
                fsync.fsync_flags = UInt32(i % 2)   // fsync and fdatasync
                let message = client.message(FUSE_FSYNC, nodeid: f.node, FUSEClient.bytes(fsync))
                let slot = try #require(ring.submit(message, replyCapacity: 64, kick: false))
                sent[slot] = (Self.unique(of: message), 0)
            }
            var stale = fuse_fsync_in()
            stale.fh = files[0].handle
            let bad = client.message(FUSE_FSYNC, nodeid: 0xdead_beef, FUSEClient.bytes(stale))
            sent[try #require(ring.submit(bad, replyCapacity: 64, kick: false))] = (Self.unique(of: bad), -EBADF)
            ring.kick()
            var answered = 0
            while answered < sent.count {
                for (slot, reply) in ring.reapAny() {
                    let expected = try #require(sent[slot])
                    try #require(reply.count == MemoryLayout<fuse_out_header>.size)
                    let header = reply.withUnsafeBytes { $0.loadUnaligned(as: fuse_out_header.self) }
                    #expect(header.unique == expected.unique, "round \(round), slot \(slot)")
                    #expect(header.error == expected.error, "round \(round), slot \(slot)")
                    answered += 1
                }
                if answered < sent.count { try ring.waitForCall(timeoutMilliseconds: 10_000) }
            }
        }
        for f in files { try client.release(f.node, handle: f.handle) }
    }

    static func unique(of message: [UInt8]) -> UInt64 {
        message.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: MemoryLayout<fuse_in_header>.offset(of: \.unique)!, as: UInt64.self) }
    }
}
