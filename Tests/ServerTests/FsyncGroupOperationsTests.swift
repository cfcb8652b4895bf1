import CFUSE
@testable import FUSEProtocol
import Glibc
import Testing
@testable import PMFSServer

/// PMFSOperations.fsync(group:errors:): a lone member and a group of several
/// make their files' writes durable (size and data in the pool and on the
/// device) and report each member's error as a lone FSYNC would.
@Suite struct FsyncGroupOperationsTests {
    let root = FUSERequest(unique: 1, nodeid: 1, uid: 0, gid: 0, pid: 1, opcode: UInt32(FUSE_FSYNC.rawValue))

    func member(_ nodeid: UInt64, _ handle: UInt64) -> FUSEFsync {
        FUSEFsync(request: root, nodeid: nodeid, handle: handle, dataOnly: false)
    }

    func singleErrno(_ ops: PMFSOperations, _ nodeid: UInt64) -> Int32 {
        do { try ops.fsync(root, nodeid: nodeid, handle: 0, dataOnly: false); return 0 } catch { return (error as? FUSEError)?.errno ?? EIO }
    }

    @Test func loneAndGroupedMembersAreDurableAndReportTheirErrors() throws {
        let s = try PoolSessions()
        let ops = s.session()
        let (f, fh) = try ops.create(root, parent: 1, name: Array("f".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        let (g, gh) = try ops.create(root, parent: 1, name: Array("g".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        let data = [UInt8](repeating: 0x5A, count: 6000)
        for (node, handle) in [(f.nodeid, fh.handle), (g.nodeid, gh.handle)] {
            _ = try data.withUnsafeBytes { try ops.write(root, nodeid: node, handle: handle, offset: 0, data: $0, flags: 0) }
        }
        var errors: [Int32] = [-1]
        ops.fsync(group: [member(f.nodeid, fh.handle)], errors: &errors)
        #expect(errors == [0])
        #expect(try s.metadata.getattr(f.nodeid).size == 6000)

        let missing: UInt64 = 999_999
        let expected = singleErrno(ops, missing)
        #expect(expected != 0)
        errors = [-1, -1, -1]
        ops.fsync(group: [member(g.nodeid, gh.handle), member(missing, 7), member(f.nodeid, fh.handle)], errors: &errors)
        #expect(errors == [0, expected, 0])
        #expect(try s.metadata.getattr(g.nodeid).size == 6000)
        errors = [-1]
        ops.fsync(group: [member(missing, 7)], errors: &errors)
        #expect(errors == [expected])
    }

    /// A node another session looked up, but this one never did (or forgot),
    /// is not this session's to fsync: EBADF, alone or in a group, and the
    /// group's other members are still made durable.
    @Test func aNodeTheSessionHoldsNoReferenceToGetsEBADF() throws {
        let s = try PoolSessions()
        let owner = s.session(), stranger = s.session()
        let (f, fh) = try owner.create(root, parent: 1, name: Array("f".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        let (g, gh) = try stranger.create(root, parent: 1, name: Array("g".utf8), mode: 0o644, flags: UInt32(O_RDWR), umask: 0)
        _ = try [UInt8](repeating: 1, count: 100).withUnsafeBytes { try stranger.write(root, nodeid: g.nodeid, handle: gh.handle, offset: 0, data: $0, flags: 0) }
        #expect(singleErrno(stranger, f.nodeid) == EBADF)
        var errors: [Int32] = [-1, -1]
        stranger.fsync(group: [member(f.nodeid, fh.handle), member(g.nodeid, gh.handle)], errors: &errors)
        #expect(errors == [EBADF, 0])
        #expect(try s.metadata.getattr(g.nodeid).size == 100)
        #expect(singleErrno(owner, f.nodeid) == 0)
    }
}
