@testable import FUSEProtocol
import Glibc
import PMFSMetadata
import Testing
@testable import PMFSServer

/// CREATE of a name that exists opens it unless O_EXCL, as open(2) with O_CREAT.
@Suite struct CreateExistingTests {
    let root = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: 0)

    func create(_ ops: PMFSOperations, _ name: String, flags: Int32, as r: FUSERequest? = nil) throws -> (FUSEEntry, FUSEOpenResult) {
        try ops.create(r ?? root, parent: 1, name: Array(name.utf8), mode: 0o644, flags: UInt32(flags), umask: 0)
    }

    @Test func createWithoutExclusiveOpensTheExistingFile() throws {
        let s = try PoolSessions()
        let ops = s.session()
        let (e, o) = try create(ops, "f", flags: O_RDWR)
        _ = try Array("abc".utf8).withUnsafeBytes { try ops.write(root, nodeid: e.nodeid, handle: o.handle, offset: 0, data: $0, flags: 0) }
        let (again, h) = try create(ops, "f", flags: O_RDWR)
        #expect(again.nodeid == e.nodeid && h.handle != o.handle)
        #expect(again.attributes.size == 3)
        var buffer = [UInt8](repeating: 0, count: 8)
        let n = try buffer.withUnsafeMutableBytes { try ops.read(root, nodeid: e.nodeid, handle: h.handle, offset: 0, into: $0) }
        #expect(n == 3)
        // Another session creates the same name: it opens it too.
        let (other, _) = try create(s.session(), "f", flags: O_WRONLY)
        #expect(other.nodeid == e.nodeid)
        // O_TRUNC empties it; O_EXCL still refuses.
        _ = try create(ops, "f", flags: O_RDWR | O_TRUNC)
        #expect(try s.fs.getattr(e.nodeid).size == 0)
        #expect(throws: FUSEError(EEXIST)) { try create(ops, "f", flags: O_RDWR | O_EXCL) }
        // The references taken are this session's: FORGET of them all frees nothing early.
        ops.forget(nodeid: e.nodeid, count: 3)
        #expect(try s.metadata.getattr(e.nodeid).nlink == 1)
    }

    @Test func createOfADirectoryOrWithoutPermissionFails() throws {
        let s = try PoolSessions()
        let ops = s.session()
        _ = try ops.mkdir(root, parent: 1, name: Array("d".utf8), mode: 0o755, umask: 0)
        #expect(throws: FUSEError(EISDIR)) { try create(ops, "d", flags: O_RDWR) }
        #expect(throws: FUSEError(EEXIST)) { try create(ops, "d", flags: O_RDWR | O_EXCL) }
        let (e, _) = try create(ops, "private", flags: O_RDWR)
        _ = try ops.setattr(root, nodeid: e.nodeid, FUSESetattr(mode: 0o600, killSuidGid: false))
        let stranger = FUSERequest(unique: 2, nodeid: 1, uid: 1000, gid: 1000, pid: 2, opcode: 0)
        #expect(throws: FUSEError(EACCES)) { try create(ops, "private", flags: O_RDONLY, as: stranger) }
        #expect(throws: FUSEError(EACCES)) { try create(ops, "private", flags: O_WRONLY | O_TRUNC, as: stranger) }
        // A valid request still works.
        #expect(try create(ops, "private", flags: O_RDWR).0.nodeid == e.nodeid)
    }
}
