import CFUSE
@testable import FUSEProtocol
import Glibc
import Testing
@testable import PMFSServer

/// A handle not open for the operation (another file's, a read-only one for
/// WRITE, a write-only one for READ, one released or never given) is EBADF.
@Suite struct HandleCheckTests {
    let root = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)

    func write(_ ops: PMFSOperations, _ ino: UInt64, _ handle: UInt64, _ text: String = "data") throws -> Int {
        try Array(text.utf8).withUnsafeBytes { try ops.write(root, nodeid: ino, handle: handle, offset: 0, data: $0, flags: 0) }
    }

    func read(_ ops: PMFSOperations, _ ino: UInt64, _ handle: UInt64) throws -> Int {
        var buffer = [UInt8](repeating: 0, count: 64)
        return try buffer.withUnsafeMutableBytes { try ops.read(root, nodeid: ino, handle: handle, offset: 0, into: $0) }
    }

    @Test func handlesMustBeOpenForTheOperationOnThatFile() throws {
        let s = try PoolSessions()
        let ops = s.session()
        let (f, rw) = try ops.create(root, parent: 1, name: Array("f".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        let (g, gHandle) = try ops.create(root, parent: 1, name: Array("g".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        #expect(try write(ops, f.nodeid, rw.handle) == 4)
        let readOnly = try ops.open(root, nodeid: f.nodeid, flags: UInt32(O_RDONLY), killSuidGid: false).handle
        let writeOnly = try ops.open(root, nodeid: f.nodeid, flags: UInt32(O_WRONLY), killSuidGid: false).handle
        let directory = try ops.opendir(root, nodeid: 1, flags: 0).handle

        #expect(throws: FUSEError(EBADF)) { try write(ops, f.nodeid, readOnly) }
        #expect(throws: FUSEError(EBADF)) { try read(ops, f.nodeid, writeOnly) }
        #expect(throws: FUSEError(EBADF)) { try read(ops, f.nodeid, gHandle.handle) }   // g's handle
        #expect(throws: FUSEError(EBADF)) { try write(ops, g.nodeid, rw.handle) }
        #expect(throws: FUSEError(EBADF)) { try read(ops, f.nodeid, 987_654) }
        #expect(throws: FUSEError(EBADF)) { try read(ops, 1, directory) }
        #expect(throws: FUSEError(EBADF)) {
            try ops.fallocate(root, nodeid: f.nodeid, handle: readOnly, offset: 0, length: 4096, mode: 0)
        }
        #expect(throws: FUSEError(EBADF)) {
            _ = try ops.copyFileRange(root, nodeid: f.nodeid, handle: rw.handle, offset: 0, toNode: g.nodeid, toHandle: readOnly,
                                      toOffset: 0, length: 4, flags: 0)
        }
        // Another session's handle numbers mean nothing here.
        let other = s.session()
        #expect(throws: FUSEError(EBADF)) { try read(other, f.nodeid, rw.handle) }
        // Released handles are gone.
        try ops.release(root, nodeid: f.nodeid, handle: readOnly, flags: 0, releaseFlags: 0, lockOwner: 0)
        #expect(throws: FUSEError(EBADF)) { try read(ops, f.nodeid, readOnly) }

        // Valid requests still work.
        #expect(try read(ops, f.nodeid, rw.handle) == 4)
        #expect(try write(ops, f.nodeid, writeOnly, "DATA") == 4)
        #expect(try ops.copyFileRange(root, nodeid: f.nodeid, handle: rw.handle, offset: 0, toNode: g.nodeid, toHandle: gHandle.handle,
                                      toOffset: 0, length: 4, flags: 0) == 4)
    }

    /// With the writeback cache the kernel reads through a write-only handle
    /// to fill a page around a partial write: allowed then.
    @Test func writebackCacheReadsThroughWriteOnlyHandles() throws {
        let s = try PoolSessions()
        let ops = s.session()
        _ = ops.initialize(capabilities: UInt64(FUSE_WRITEBACK_CACHE))
        let (f, _) = try ops.create(root, parent: 1, name: Array("f".utf8), mode: 0o644, flags: UInt32(O_WRONLY), umask: 0)
        let writeOnly = try ops.open(root, nodeid: f.nodeid, flags: UInt32(O_WRONLY), killSuidGid: false).handle
        #expect(try write(ops, f.nodeid, writeOnly) == 4)
        #expect(try read(ops, f.nodeid, writeOnly) == 4)
    }

    /// Through the FUSE engine: the reply is EBADF and the next request is served.
    @Test func wireWriteThroughReadOnlyHandle() throws {
        let s = try PoolSessions()
        var wire = Wire(s.session())
        let created = wire.create("w", flags: O_RDONLY)
        let f = try #require(created)
        var w = fuse_write_in()
        w.fh = f.handle; w.size = 3
        #expect(wire.send(FUSE_WRITE, nodeid: f.nodeid, w, extra: [1, 2, 3]).error == EBADF)
        #expect(wire.read(f.nodeid, handle: f.handle, offset: 0, size: 16).error == 0)
    }
}

/// A node ID the session's kernel holds no reference for (never looked up,
/// forgotten, another session's) is EBADF, the root excepted.
@Suite struct NodeReferenceTests {
    let root = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)

    @Test func unreferencedNodesAreRefused() throws {
        let s = try PoolSessions()
        let host = s.session(), guest = s.session()
        let (f, h) = try host.create(root, parent: 1, name: Array("f".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        let d = try host.mkdir(root, parent: 1, name: Array("d".utf8), mode: 0o755, umask: 0)
        // The guest never looked them up.
        #expect(throws: FUSEError(EBADF)) { _ = try guest.getattr(root, nodeid: f.nodeid, handle: nil) }
        #expect(throws: FUSEError(EBADF)) { _ = try guest.open(root, nodeid: f.nodeid, flags: UInt32(O_RDWR), killSuidGid: false) }
        #expect(throws: FUSEError(EBADF)) { _ = try guest.lookup(root, parent: d.nodeid, name: Array("x".utf8)) }
        #expect(throws: FUSEError(EBADF)) { _ = try guest.mkdir(root, parent: d.nodeid, name: Array("x".utf8), mode: 0o755, umask: 0) }
        #expect(throws: FUSEError(EBADF)) { _ = try guest.setattr(root, nodeid: f.nodeid, FUSESetattr(mode: 0o600, killSuidGid: false)) }
        #expect(throws: FUSEError(EBADF)) { _ = try guest.getxattr(root, nodeid: f.nodeid, name: Array("user.x".utf8)) }
        // The host's file, unlinked while open there: the guest cannot link it back.
        try host.unlink(root, parent: 1, name: Array("f".utf8))
        #expect(throws: FUSEError(EBADF)) { _ = try guest.link(root, nodeid: f.nodeid, newParent: 1, newName: Array("back".utf8)) }
        #expect(throws: FUSEError(ENOENT)) { _ = try guest.lookup(root, parent: 1, name: Array("back".utf8)) }
        // Forgotten is as never looked up.
        let e = try guest.lookup(root, parent: 1, name: Array("d".utf8))
        #expect(try guest.getattr(root, nodeid: e.nodeid, handle: nil).0.ino == d.nodeid)
        guest.forget(nodeid: e.nodeid, count: UInt64.max)   // a huge count drops only what is held
        #expect(throws: FUSEError(EBADF)) { _ = try guest.getattr(root, nodeid: d.nodeid, handle: nil) }
        // The root needs no lookup; the host still uses what it holds.
        #expect(try guest.getattr(root, nodeid: 1, handle: nil).0.ino == 1)
        #expect(try host.getattr(root, nodeid: f.nodeid, handle: h.handle).0.nlink == 0)
    }
}
